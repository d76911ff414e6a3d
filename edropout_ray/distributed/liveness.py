"""Waiting on Ray without hanging: every wait checks that the cluster is still there.

When the local Ray is killed from outside, or a cluster's head node is gone, the results a driver
waits for can never arrive, and a plain `ray.get` (or a call on a new actor, which Ray queues until
it can be placed) waits forever. So waits here run in short slices, and between slices the
cluster's control store (the GCS) must answer within `liveness_timeout` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from ..errors import DeviceError, RunLostError

POLL_S = 1.0


class ClusterLostError(RunLostError):
    """The Ray cluster (its GCS) stopped answering."""


class ActorLostError(RunLostError):
    """An actor is gone for good: it died more often than it may restart, or never came back."""


@dataclass
class Liveness:
    """How long a run may wait for the cluster, and for a lost actor to come back."""

    timeout_s: float = 30.0  # the GCS unreachable this long: the cluster is gone
    restart_timeout_s: float = 300.0  # a restarting actor not ready after this long: it is gone

    def get(self, refs, what: str, *, deadline_s: float | None = None):
        """`ray.get(refs)`, checking the cluster every second; `deadline_s` bounds the whole wait. Of a
        list, a result that is an error is raised as soon as it is there, without waiting for the others
        (the other workers of a group may wait in a collective for the one that failed)."""
        waiting = refs if isinstance(refs, list) else [refs]
        started = time.monotonic()
        while True:
            ready, pending = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_S, fetch_local=False)
            if not pending:
                return ray.get(refs)
            if ready and len(waiting) > 1:
                ray.get(ready)  # raises the first error among them
            self.check_cluster(what)
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                raise ActorLostError(f"{what} did not come back within {deadline_s:.0f} s (no node could take it: "
                                     "raise restart_timeout if new nodes take longer to start)")

    def started(self, refs, what: str):
        """Wait for actors to start (`refs`: a call on each); one whose construction found a GPU torch
        cannot use raises that DeviceError itself (Ray wraps it in an ActorDiedError ending with it)."""
        try:
            return self.get(refs, what)
        except ray.exceptions.ActorDiedError as error:
            prefix = f"{DeviceError.__module__}.{DeviceError.__name__}: "
            line = next((line for line in str(error).splitlines() if line.startswith(prefix)), None)
            if line is None:
                raise
            raise DeviceError(line[len(prefix):]) from None

    def check_cluster(self, what: str) -> None:
        """Raise ClusterLostError unless the GCS answers within `timeout_s`."""
        client = getattr(ray._private.worker.global_worker, "gcs_client", None)
        if client is None:  # Ray Client (ray://) has no GCS client here; its own connection watch applies
            return
        try:
            client.internal_kv_get(b"edropout_ray_liveness", b"edropout_ray", timeout=self.timeout_s)
        except Exception as error:  # RpcError and friends: nothing answered
            raise ClusterLostError(f"lost the Ray cluster: it stopped answering ({type(error).__name__}) while "
                                   f"waiting for {what}") from None
