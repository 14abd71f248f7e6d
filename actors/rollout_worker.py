"""Rollout worker: a Ray async actor hosting one policy engine and one search backend.

Every trajectory is a coroutine (zs_ray.core.rollout.run_trajectory); the engine batches their
generate calls, and search calls overlap with generation. New weights are reloaded in place between
engine steps and tag the engine with the policy version: as a full state dict through the object store
(`update_weights`), or, with rollout.weight_sync=nccl, broadcast by policy rank 0 over an NCCL group
this worker joins as rank 1 + its index (`init_weight_sync`, then `receive_weights`; zs_ray/weight_sync/nccl.py).

GPU: the same class, given num_gpus through `.options()` and device="cuda".
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

import ray

from zs_ray.core.rollout import RolloutRequest, as_rollout_config, run_rollouts
from zs_ray.core.search import NoSearch, SearchBackend
from zs_ray.engines.engine import engine_kwargs, make_engine


def build_search_backend(search_cfg: dict, seed: int = 0) -> SearchBackend:
    """`none` for the no-search baseline; every other backend comes from zs_ray.search.clients."""
    if search_cfg.get("backend") == "none":
        return NoSearch()
    from zs_ray.search.clients import make_search_backend

    # The driver puts the curriculum (with total_steps) into the search section it hands out.
    return make_search_backend(search_cfg, search_cfg.get("curriculum"), seed)


@ray.remote
class RolloutWorker:
    def __init__(self, model_path: str, rollout_cfg: dict, search_cfg: dict, worker_index: int = 0, seed: int = 0,
                 device: str = "cpu", threads: Optional[int] = None, eval_search_cfg: Optional[dict] = None,
                 model_cfg: Optional[dict] = None):
        """`model_cfg`: the config's model section (dtype, trust_remote_code, quantization of the engine)."""
        import torch

        # Threads: vLLM's CPU backend binds OMP itself; this bounds torch's intra-op pool (HF engine, tokenizer ops).
        torch.set_num_threads(max(1, int(threads or os.environ.get("OMP_NUM_THREADS", 1))))
        self.cfg = as_rollout_config(rollout_cfg)
        self.search_cfg, self.worker_index, self.seed = dict(search_cfg), worker_index, seed
        t = time.perf_counter()
        kw = engine_kwargs({"model": model_cfg, "rollout": rollout_cfg}, seed=seed + worker_index, device=device)
        self.engine = make_engine(self.cfg.engine, model_path, **kw)
        self.search = build_search_backend(self.search_cfg, seed)
        # Held-out evaluation during training uses real search (BM25), never the simulator.
        self.eval_search = build_search_backend(eval_search_cfg, seed) if eval_search_cfg else None
        self.startup_s = time.perf_counter() - t
        self._sync_group = None  # NCCL weight-sync membership (rollout.weight_sync=nccl)
        # model.trainable_layers: the policy sends only the tensors that learn (actors/policy_worker.py)
        self._subset = (model_cfg or {}).get("trainable_layers") is not None

    async def ready(self) -> dict:
        """Engine up (and warmed: the first batched step is slow); returns its info."""
        t = time.perf_counter()
        await self.engine.generate([self.engine.tokenizer.eos_token_id or 0], max_tokens=2, temperature=0.0)
        return {"version": self.engine.version, "pid": os.getpid(), "worker_index": self.worker_index,
                "engine": type(self.engine).__name__, "startup_s": self.startup_s,
                "warmup_s": time.perf_counter() - t, "search": getattr(self.search, "name", "?")}

    async def rollout(self, rows: list[dict], request: RolloutRequest) -> list[dict]:
        r = request
        search = self.eval_search if r.evaluation and self.eval_search is not None else self.search
        trajs = await run_rollouts(self.engine, search, rows, r.n_samples, rollout_cfg=self.cfg, step=r.step,
                                   greedy=r.greedy, reward_kind=r.reward_kind, seed=self.seed,
                                   max_query_chars=int(self.search_cfg.get("max_query_chars", 512)))
        return [t.to_dict() for t in trajs]

    async def update_weights(self, state_dict: Any, version: int) -> float:
        """Reload the full state dict in place (between engine steps); returns seconds."""
        if isinstance(state_dict, ray.ObjectRef):  # passed nested, so Ray did not resolve it
            state_dict = await state_dict
        # A thread keeps this actor's event loop (in-flight trajectories, searches) running meanwhile.
        return await asyncio.to_thread(self.engine.load_weights, state_dict, version, self._subset)

    async def init_weight_sync(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        """Join the NCCL weight-sync group (replacing an earlier one); returns once every member has joined."""
        from zs_ray.weight_sync.nccl import NcclGroup

        if self._sync_group is not None:
            self._sync_group.close()
        self._sync_group = await asyncio.to_thread(NcclGroup, host, port, rank, world_size, timeout_s)

    async def receive_weights(self, meta: list, version: int) -> float:
        """update_weights' NCCL sibling: `meta` is the (name, dtype, shape) list; the tensors come from policy
        rank 0's broadcasts, one per read, into the same engine.load_weights (tied lm_head handling included)."""
        from zs_ray.weight_sync.nccl import drain, receive_state

        if self._sync_group is None:
            raise RuntimeError("receive_weights before init_weight_sync: this worker is in no weight-sync group")
        pairs = receive_state(self._sync_group, meta)
        try:
            return await asyncio.to_thread(self.engine.load_weights, pairs, version, self._subset)
        finally:  # after a failed load, still take the remaining broadcasts, or policy rank 0 waits forever
            await asyncio.to_thread(drain, pairs)

    def version(self) -> int:
        return self.engine.version

    def weights_checksum(self) -> dict:
        """Per-parameter sums of the engine's weights (see the engine's docstring), to check a sync landed."""
        return self.engine.weights_checksum()

    async def close(self) -> None:
        await self.search.close()
