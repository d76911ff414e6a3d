"""The learner's worker actors, as the coordinator's proxy (RemoteLearner) sees them: one, or a
data-parallel group of `learner_workers`.

One worker is restarted by Ray when lost (`max_restarts`). A group of N > 1 shares a torch.distributed
process group, which cannot take a new member mid-run, so a group that loses a worker is ended and
started again as a whole (the proxy then loads the latest checkpoint's state and replays, as for one
worker); each such restart uses up one of `learner_restarts`. `resize` ends the group and starts one of
another size with rank 0's state: the learner gives its devices to the shards while the population
searches and takes them back at the freeze.

The global batch is split here into one contiguous part per worker (each worker fetches only its own
part from the object store); a part's `share` is its fraction of the batch, which weights its gradients
(data_parallel.py) and its loss and accuracy in the step's result.
"""

from __future__ import annotations

import time
from typing import Callable

import ray
import torch

from ..pruning.evaluation import EvaluationSums
from ..training.contract import StepResult
from .liveness import ActorLostError, Liveness
from .usage import ProcessUsage

BatchPart = tuple  # (x's object ref, y's object ref, share of the global batch)
EVALUATIONS_IN_FLIGHT = 4  # validation batches sent to a worker ahead of its results


def split_batch(x: torch.Tensor, y: torch.Tensor, parts: int) -> list[BatchPart]:
    """The batch in `parts` contiguous parts (sizes differ by at most one), each put in the object store."""
    if len(x) < parts:
        raise ValueError(f"a batch of {len(x)} samples cannot be split over {parts} learner workers: "
                         "raise batch_size or lower learner_workers")
    return [(ray.put(xs), ray.put(ys), len(xs) / len(x))
            for xs, ys in zip(torch.tensor_split(x, parts), torch.tensor_split(y, parts))]


def combine(results: list[StepResult], shares: list[float]) -> StepResult:
    """The global batch's loss and accuracy from its parts'."""
    return StepResult(loss=sum(r.loss * s for r, s in zip(results, shares)),
                      accuracy=sum(r.accuracy * s for r, s in zip(results, shares)))


class LearnerGroup:
    """`size` learner worker actors started by `start_worker()`; all calls return lists of object refs."""

    def __init__(self, start_worker: Callable[[], "ray.actor.ActorHandle"], size: int, liveness: Liveness,
                 restarts: int, backend: str, resources: tuple[float, float], scorers: int = 0):
        self.start_worker, self.size, self.liveness = start_worker, size, liveness
        self.scorers = scorers  # ranks below it also score the population (score_on_learners): their role says so
        self.restarts, self.backend, self.resources = restarts, backend, resources
        self.restarts_used = 0
        self.workers: list = []
        self.started_at = time.monotonic()
        self.ended: list[ProcessUsage] = []  # workers ended by a resize or a restart, their time recorded
        self._start()

    def _start(self) -> None:
        self.started_at = time.monotonic()
        self.workers = [self.start_worker() for _ in range(self.size)]
        try:
            self.liveness.started([w.ping.remote() for w in self.workers], "the learner to start")
            if self.size > 1:
                self._form_group()
        except BaseException:
            self.kill()
            raise

    def _form_group(self) -> None:
        nodes = self.liveness.get([w.where.remote() for w in self.workers], "the learner workers' nodes")
        local = len({where["node_id"] for where in nodes}) == 1
        address = self.liveness.get(self.workers[0].rendezvous.remote(local), "the learner group's address")
        timeout_s = self.liveness.restart_timeout_s
        self.liveness.get([w.join.remote(rank, self.size, address, self.backend, timeout_s)
                           for rank, w in enumerate(self.workers)], "the learner workers to form their group")

    # ---- calls -----------------------------------------------------------------------------------
    def step(self, state: torch.Tensor, parts: list[BatchPart]) -> list:
        if len(parts) != self.size:  # a step replayed after a resize: the batch split again for this size
            x = torch.cat(ray.get([x_ref for x_ref, _, _ in parts]))
            y = torch.cat(ray.get([y_ref for _, y_ref, _ in parts]))
            parts = split_batch(x, y, self.size)
        if self.size == 1:
            x_ref, y_ref, _ = parts[0]
            return [self.workers[0].step.remote(state, x_ref, y_ref)]
        return [w.step_part.remote(state, x_ref, y_ref, share) for w, (x_ref, y_ref, share) in zip(self.workers, parts)]

    def evaluate(self, state: torch.Tensor, batches) -> EvaluationSums:
        """`batches` evaluated by the workers in turn, at most EVALUATIONS_IN_FLIGHT a worker (a large
        validation set never sits whole in the object store, and no worker waits for the driver's next batch)."""
        sums, pending = EvaluationSums(), []
        for index, (x, y) in enumerate(batches):
            pending.append(self.workers[index % self.size].evaluate.remote(state, x, y))
            if len(pending) >= EVALUATIONS_IN_FLIGHT * self.size:
                sums += self.liveness.get(pending.pop(0), "the learner's validation")
        for ref in pending:
            sums += self.liveness.get(ref, "the learner's validation")
        return sums

    def each(self, method: str, *args) -> list:
        """`method` on every worker (what changes a worker's state: all must stay alike)."""
        return [getattr(w, method).remote(*args) for w in self.workers]

    def first(self, method: str, *args) -> list:
        """`method` on rank 0 only (what reads the state: the workers' are identical)."""
        return [getattr(self.workers[0], method).remote(*args)]

    # ---- faults ----------------------------------------------------------------------------------
    def restart(self) -> None:
        """After a lost worker: wait for Ray's restart of one worker, or start the whole group again."""
        if self.size == 1:
            self._wait_for_ray_restart()
            return
        self.restarts_used += 1
        if self.restarts_used > self.restarts:
            raise ActorLostError(f"lost a learner worker more often than learner_restarts ({self.restarts}) allows")
        self._end(ask_busy=False)  # the survivors may be waiting in a collective: their time is lost
        self._start()

    def resize(self, size: int, state_ref: "ray.ObjectRef") -> None:
        """End the workers and start `size` new ones holding `state_ref` (rank 0's state_dict)."""
        self._end()
        self.size = size
        self._start()
        self.liveness.get(self.each("load_state_dict", state_ref), "the resized learner's state")

    def _end(self, ask_busy: bool = True) -> None:
        """Record the workers' time, then end them."""
        self.ended += self._usage(ask_busy)
        self.kill()

    def _wait_for_ray_restart(self) -> None:
        deadline = time.monotonic() + self.liveness.restart_timeout_s
        while True:
            try:
                self.liveness.get(self.workers[0].ping.remote(), "the restarted learner actor",
                                  deadline_s=max(1.0, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorDiedError:
                raise ActorLostError("lost the learner actor for good: it died more often than learner_restarts "
                                     "allows, or its node is gone and nothing can take it") from None
            except ray.exceptions.RayActorError:  # unavailable for a moment: still restarting
                if time.monotonic() > deadline:
                    raise ActorLostError(f"the learner actor did not come back within "
                                         f"{self.liveness.restart_timeout_s:.0f} s (raise restart_timeout if new "
                                         "nodes take longer to start)") from None
                time.sleep(0.5)

    def usage(self) -> list[ProcessUsage]:
        """Every worker's time held and busy, those ended by a resize or a restart included (a worker
        restarted by Ray counts its busy time since that restart only)."""
        return self.ended + self._usage()

    def _usage(self, ask_busy: bool = True) -> list[ProcessUsage]:
        held = time.monotonic() - self.started_at
        cpus, gpus = self.resources
        usages = []
        for rank, worker in enumerate(self.workers):
            busy = 0.0
            try:
                if ask_busy:
                    busy = self.liveness.get(worker.busy_seconds.remote(), "the learner's busy time", deadline_s=10.0)
            except Exception:  # lost, or the cluster is gone: its time is lost with it
                pass
            role = "learner+shard" if rank < self.scorers else "learner"
            usages.append(ProcessUsage(role, len(self.ended) + rank, cpus, gpus, held_s=held, busy_s=busy))
        return usages

    def kill(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # the cluster is already gone
                pass
