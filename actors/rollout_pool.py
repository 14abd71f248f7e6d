"""`RolloutPool`: the driver-side handle of the rollout workers (actors/rollout_worker.py).

It spreads rollout calls over the workers, replaces a worker that dies and re-runs exactly its lost part,
and gives every worker new weights after each update (`rollout.weight_sync`: through the object store,
or broadcast by policy rank 0 over NCCL, zs_ray/weight_sync/nccl.py). A timeout is an error, never a hang.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import ray

from zs_ray.core.rollout import RolloutRequest

log = logging.getLogger("zs_ray.train.trainer")
MAX_ROLLOUT_RESTARTS = 3  # per rollout call: a worker that keeps dying is an error, not a loop


class SyncError(RuntimeError):
    pass


class RolloutPool:
    """`make(i)` starts rollout worker i (the same arguments every time, so a replacement is identical);
    `policy` is the actor WorkerGroup whose weights the workers serve; `before_restart()` waits until a
    replacement can be placed (after a node loss its bundle is rescheduled first)."""

    def __init__(self, make: Callable[[int], "ray.actor.ActorHandle"], n: int, policy, weight_sync: str,
                 rollout_timeout_s: float, sync_timeout_s: float, progress=print,
                 before_restart: Callable[[], None] = lambda: None):
        self.make, self.policy, self.weight_sync, self.progress = make, policy, weight_sync, progress
        self.rollout_timeout_s, self.sync_timeout_s, self.before_restart = rollout_timeout_s, sync_timeout_s, before_restart
        self.workers = [make(i) for i in range(n)]
        ray.get([w.ready.remote() for w in self.workers], timeout=rollout_timeout_s)
        self.version, self.restarts = 0, 0
        # NCCL: the group forms now, so a setup problem shows before training; None = (re)build at the next sync.
        self._meta = self._init_nccl_group() if weight_sync == "nccl" else None

    def __len__(self) -> int:
        return len(self.workers)

    def __getitem__(self, i: int):
        return self.workers[i]

    def owns(self, actor_id) -> bool:
        return actor_id in {w._actor_id.hex() for w in self.workers}

    # ---------------------------------------------------------------- calls
    def submit(self, parts: list, request: RolloutRequest) -> list:
        """One rollout call per worker with a non-empty part: (worker index, handle, part, request, ref)."""
        return [(i, self.workers[i], p, request, self.workers[i].rollout.remote(p, request))
                for i, p in enumerate(parts) if p]

    def collect(self, jobs: list) -> list[dict]:
        """The trajectories of `submit`'s calls, in order. A worker that died is replaced by a fresh one
        holding the current weights, which re-runs exactly the lost part (same rows, step and seeds)."""
        out = []
        for i, handle, part, request, ref in jobs:
            for attempt in range(MAX_ROLLOUT_RESTARTS + 1):
                try:
                    out.extend(ray.get(ref, timeout=self.rollout_timeout_s))
                    break
                except ray.exceptions.RayActorError as e:
                    if attempt == MAX_ROLLOUT_RESTARTS:
                        raise RuntimeError(f"rollout worker {i} died {attempt + 1} times in one call") from e
                    if self.workers[i] is handle:  # not replaced yet (by an earlier call's failure)
                        self.restart(i, e)
                    handle = self.workers[i]
                    ref = handle.rollout.remote(part, request)
        return out

    def restart(self, i: int, err: BaseException) -> None:
        """Replace worker i and give it the current weights before it serves."""
        self.restarts += 1
        self.progress(f"[fault] rollout worker {i} died ({type(err).__name__}); restarting it at policy "
                      f"version {self.version}")
        log.warning("rollout worker %d died: %s", i, str(err).splitlines()[0] if str(err) else type(err).__name__)
        try:
            ray.kill(self.workers[i])
        except Exception:
            pass
        self.before_restart()
        try:
            w = self.make(i)
            ray.get(w.ready.remote(), timeout=self.rollout_timeout_s)
            ray.get(w.update_weights.remote(self.policy.state_dict_ref(), self.version), timeout=self.sync_timeout_s)
        except ray.exceptions.RayActorError as e:
            if not died_itself(e, w):  # the policy worker holding the weights: the trainer says so
                raise
            raise RuntimeError(f"the replacement for rollout worker {i} died while starting: {e}") from None
        self.workers[i] = w
        self._meta = None  # (NCCL) the group lost a member: rebuilt with the replacement at the next sync

    # ---------------------------------------------------------------- weights
    def sync(self, version: int) -> float:
        """Full weights to every worker, tagged with the policy version; returns seconds taken.
        Object store: a worker found dead here is restarted (and gets the weights as it starts)."""
        t, self.version = time.perf_counter(), version
        if self.weight_sync == "nccl":
            return self._sync_nccl(t)
        ref = self.policy.state_dict_ref()
        calls = [(i, w, w.update_weights.remote(ref, version)) for i, w in enumerate(self.workers)]
        try:
            for i, w, r in calls:
                try:
                    ray.get(r, timeout=max(1.0, self.sync_timeout_s - (time.perf_counter() - t)))
                except ray.exceptions.RayActorError as e:
                    if not died_itself(e, w):  # the weights' producer, a policy worker: not ours to restart
                        raise
                    if self.workers[i] is w:
                        self.restart(i, e)
        except ray.exceptions.GetTimeoutError:
            raise SyncError(f"weight sync to {len(self)} rollout worker(s) did not finish in "
                            f"{self.sync_timeout_s:g} s (trainer.sync_timeout_s)") from None
        return time.perf_counter() - t

    def _init_nccl_group(self) -> list:
        """Policy rank 0 (group rank 0) and rollout worker i (rank 1 + i) form the NCCL weight-sync group at a
        free port on rank 0's node; returns the (name, dtype, shape) list the receivers allocate from."""
        timeout = self.sync_timeout_s
        rank0, world = self.policy.workers[0], 1 + len(self)
        node = ray.get(rank0.node_info.remote(), timeout=timeout)
        host, port = node["ip"], node["port"]  # 127.0.0.1 on a local Ray; the node's IP in a cluster
        meta = rank0.init_weight_sync.remote(host, port, world, timeout)
        joins = [w.init_weight_sync.remote(host, port, 1 + i, world, timeout) for i, w in enumerate(self.workers)]
        try:
            return get_all([meta, *joins], timeout)[0]
        except ray.exceptions.GetTimeoutError:
            raise SyncError(f"the NCCL weight-sync group (policy rank 0 + {len(self)} rollout worker(s) at "
                            f"{host}:{port}) did not form in {timeout:g} s (trainer.sync_timeout_s); "
                            "rollout.weight_sync=object_store avoids NCCL") from None

    def _sync_nccl(self, t: float) -> float:
        """Receivers first (each blocks in its engine until rank 0 sends), then every policy rank: all of them
        join the FSDP all-gather of each parameter, and rank 0 broadcasts it."""
        if self._meta is None:
            self._meta = self._init_nccl_group()
        calls = [w.receive_weights.remote(self._meta, self.version) for w in self.workers]
        calls += [w.broadcast_weights.remote() for w in self.policy.workers]
        try:
            get_all(calls, self.sync_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise SyncError(f"NCCL weight sync to {len(self)} rollout worker(s) did not finish in "
                            f"{self.sync_timeout_s:g} s (trainer.sync_timeout_s)") from None
        except ray.exceptions.RayActorError as e:
            if not self.owns(getattr(e, "actor_id", None)):
                raise  # a policy worker: the trainer reports it as PolicyWorkerError
            # Unlike the object store path, a dead receiver cannot simply be replaced here: rank 0 may be stuck in
            # a broadcast that member never joins.
            raise SyncError("a rollout worker died during an NCCL weight sync; the group lost a member mid-"
                            "broadcast, so the run stops. Resume with trainer.resume=auto (with "
                            "rollout.weight_sync=object_store a worker dying here is restarted instead)") from e
        return time.perf_counter() - t

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)


def get_all(refs: list, timeout: float) -> list:
    """ray.get of every ref, except that an error raises as soon as it is known: in an NCCL group the other
    members would wait for the failed one until the timeout, and hide the real error behind it."""
    deadline, pending = time.perf_counter() + timeout, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
        if not ready:
            raise ray.exceptions.GetTimeoutError(f"{len(pending)} call(s) not done after {timeout:g} s")
        ray.get(ready)
    return ray.get(refs)


def died_itself(err: ray.exceptions.RayActorError, handle) -> bool:
    """Whether the actor an error names is `handle`'s. A call whose argument came from an actor that died (the
    policy worker whose state dict a weight sync passes) raises the same error type on the caller's side, but
    names the producer: restarting the rollout worker would not help, and the trainer reports the real one."""
    dead = getattr(err, "actor_id", None)
    return dead is None or dead == handle._actor_id.hex()
