"""The worker's side of a data-parallel learner: joining the group, and averaging gradients in a step.

Each of the learner's N workers trains the same selected state on its own part of the global batch.
Between backward and the optimizer's update, every worker's gradients are weighted by its part's
share of the batch and summed over the group (one all-reduce of one flat tensor), so each worker
takes exactly the update one learner would take on the whole batch, and the weights stay identical
everywhere without ever being sent. Normalization statistics are rank 0's, given to all after each
step, as DistributedDataParallel does with `broadcast_buffers`.

Why not DistributedDataParallel itself: it wraps one fixed module, while the learner trains either the
dense model under a mask or a compact copy of the state's tensors that changes whenever the state
does (at_size_training.py). The hook below serves both, with the same arithmetic as DDP.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch


class PeerLost(RuntimeError):
    """A collective failed: another worker of the group is gone, and the group must be started again."""


def free_address(local: bool) -> str:
    """'host:port' where rank 0 can listen: loopback when every worker runs on this node."""
    import ray

    host = "127.0.0.1" if local else ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return f"{host}:{probe.getsockname()[1]}"


def join_group(rank: int, size: int, address: str, backend: str, timeout_s: float) -> None:
    """Join the torch.distributed group of the learner's workers (rank 0 hosts its store at `address`)."""
    import torch.distributed as dist

    host, port = address.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))


def _collective(operation, *args, **kwargs) -> None:
    try:
        operation(*args, **kwargs)
    except RuntimeError as error:  # gloo and NCCL raise RuntimeError (DistBackendError) on a lost peer
        raise PeerLost(f"a learner worker's collective failed ({error}); the group is started again") from error


class GradientAverage:
    """The learner's `before_update` hook on a worker of the group; `share` is this worker's fraction of the
    step's global batch (set before each step)."""

    def __init__(self):
        self.share = 1.0

    @torch.no_grad()
    def __call__(self, parameters: list[torch.Tensor], buffers: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        trained = [p for p in parameters if p.requires_grad]
        if trained:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in trained])
            flat.mul_(self.share)
            _collective(dist.all_reduce, flat)
            offset = 0
            for p in trained:
                part = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                # a parameter no worker used keeps no gradient (the optimizer skips it, as on one worker)
                if p.grad is not None or bool(part.any()):
                    p.grad = part.clone()
        statistics = [b for b in buffers if b.is_floating_point()]
        if statistics:
            flat = torch.cat([b.reshape(-1) for b in statistics])
            _collective(dist.broadcast, flat, src=0)
            offset = 0
            for b in statistics:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()
