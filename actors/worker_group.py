"""`WorkerGroup`: the driver-side handle of N PolicyWorker ranks of one role (actors/policy_worker.py).

It splits a batch across ranks (equal micro-batch counts on every rank, because every forward/backward
is a collective) and gathers the results.
"""
from __future__ import annotations

import os
from typing import Optional

import ray
import torch

from actors.policy_worker import ALGO_DEFAULTS, PolicyWorker
from zs_ray.core.batch import merge_rank_outputs, split_for_ranks
from zs_ray.runtime import LOOPBACK, actor_env, free_port


class WorkerGroup:
    """N PolicyWorker ranks of one role, used from the driver like a single model."""

    def __init__(self, n_workers: int, model_path: str, algo_cfg: dict, model_cfg: dict, role: str = "actor",
                 resources: Optional[dict] = None, device: str = "cpu", seed: int = 0, placement_group=None,
                 threads: int = 1, setup_timeout_s: float = 180.0, call_timeout_s: Optional[float] = None,
                 ref_path: Optional[str] = None):
        resources = resources or {}
        self.n, self.role, self.model_path = int(n_workers), role, model_path
        self.call_timeout_s = call_timeout_s
        opts: dict = {"num_cpus": float(resources.get("cpus", resources.get("num_cpus", 0.5))),
                      "num_gpus": float(resources.get("gpus", resources.get("num_gpus", 0.0))),
                      "runtime_env": {"env_vars": actor_env(threads)}}
        self.workers, self.port = [], None
        for rank in range(self.n):
            o = dict(opts)
            if placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
                o["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=rank)
            self.workers.append(PolicyWorker.options(**o).remote(
                rank, self.n, LOOPBACK, 0, model_path, dict(algo_cfg or {}), dict(model_cfg or {}), role,
                device, threads, seed, ref_path))
        try:
            # Rendezvous at rank 0's node: loopback when all ranks share one node, else its IP.
            nodes = ray.get([w.node_info.remote() for w in self.workers], timeout=setup_timeout_s)
            one_node = len({n["node_id"] for n in nodes}) == 1
            self.master_addr = LOOPBACK if one_node else nodes[0]["ip"]
            self.port = free_port() if one_node else nodes[0]["port"]
            self.setup_info = ray.get([w.setup.remote(self.master_addr, self.port) for w in self.workers],
                                      timeout=setup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise RuntimeError(
                f"WorkerGroup({role}, n={self.n}): setup did not finish in {setup_timeout_s:.0f}s. Usual causes: "
                f"the cluster lacks {opts['num_cpus']} CPUs / {opts['num_gpus']} GPUs per worker, so some "
                f"ranks never start (the others then wait in init_process_group on port {self.port}), or "
                f"the model at {model_path} is slow to load") from None
        self.micro_batch_size = int((algo_cfg or {}).get("micro_batch_size") or ALGO_DEFAULTS["micro_batch_size"])

    def _all(self, method: str, *args):
        return ray.get([getattr(w, method).remote(*args) for w in self.workers], timeout=self.call_timeout_s)

    def _per_rank(self, method: str, batch: dict, *args):
        shards, tokens = split_for_ranks(batch, self.n)
        outs = ray.get([getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shards)],
                       timeout=self.call_timeout_s)
        return shards, tokens, outs

    def compute_logprobs(self, batch: dict, with_entropy: bool = False, reference: bool = False):
        """[B, T] log-probs in the batch's row order (a dict with `entropy` too if with_entropy);
        reference=True: of the frozen reference colocated in these workers (WorkerGroup(ref_path=...))."""
        B = batch["input_ids"].shape[0]
        shards, _, outs = self._per_rank("compute_logprobs", batch, with_entropy, reference)
        lp = merge_rank_outputs([o["logprobs"] for o in outs], shards, B)
        if not with_entropy:
            return lp
        return {"logprobs": lp, "entropy": merge_rank_outputs([o["entropy"] for o in outs], shards, B)}

    def compute_values(self, batch: dict) -> torch.Tensor:
        shards, _, outs = self._per_rank("compute_values", batch)
        return merge_rank_outputs([o["values"] for o in outs], shards, batch["input_ids"].shape[0])

    def update(self, batch: dict) -> dict:
        shards, tokens = split_for_ranks(batch, self.n)
        stats = ray.get([w.update.remote(s, tokens) for w, s in zip(self.workers, shards)], timeout=self.call_timeout_s)
        return stats[0]

    def update_critic(self, batch: dict) -> dict:
        shards, tokens = split_for_ranks(batch, self.n)
        stats = ray.get([w.update_critic.remote(s, tokens) for w, s in zip(self.workers, shards)],
                        timeout=self.call_timeout_s)
        return stats[0]

    def state_dict_ref(self) -> "ray.ObjectRef":
        """ObjectRef of what the rollout engines need on rank 0 (every tensor, or the trainable ones when
        model.trainable_layers froze the rest), to pass to rollout workers via the object store."""
        refs = [w.sync_state_dict.remote() for w in self.workers]  # all ranks join the gather
        return refs[0]

    def full_state_dict(self) -> dict:
        """Every tensor, unsharded (rank 0's)."""
        refs = [w.full_state_dict.remote() for w in self.workers]
        return ray.get(refs[0], timeout=self.call_timeout_s)

    def save_checkpoint(self, path: str) -> str:
        self._all("save_checkpoint", os.path.abspath(path))
        return path

    def load_checkpoint(self, path: str) -> dict:
        return self._all("load_checkpoint", os.path.abspath(path))[0]

    def export_hf(self, path: str, tokenizer_src: Optional[str] = None) -> str:
        self._all("export_hf", os.path.abspath(path), tokenizer_src or self.model_path)
        return path

    def shutdown(self) -> None:
        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
        except Exception:
            pass
        for w in self.workers:
            ray.kill(w)
        self.workers = []
