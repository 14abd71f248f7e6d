"""Which weight-sync path a config gets (`rollout.weight_sync`): object_store or nccl. Config validation
imports this module, so torch is imported only inside resolve_weight_sync."""
from __future__ import annotations

import os
from typing import Optional

MODES = ("auto", "object_store", "nccl")
KEY = "rollout.weight_sync"


class WeightSyncError(RuntimeError):
    """rollout.weight_sync=nccl cannot run here; the message names the key and what is missing."""


# ---------------------------------------------------------------- which path
def nccl_config_problem(device: str, tensor_parallel_size: int, gpus_per_policy_worker: float,
                        gpus_per_rollout_worker: float) -> Optional[str]:
    """Why the config rules NCCL out (None: it does not). Probes no hardware, so GPU recipes validate anywhere."""
    if device != "cuda":
        return (f"the engines run on resources.device={device}, and NCCL moves tensors between CUDA GPUs "
                "(set resources.device=cuda on a GPU machine)")
    if min(float(gpus_per_policy_worker), float(gpus_per_rollout_worker)) < 1:
        return ("NCCL cannot put two ranks of one group on the same GPU, and fractional GPUs allow that: set "
                "resources.gpus_per_policy_worker and resources.gpus_per_rollout_worker to at least 1")
    if int(tensor_parallel_size) != 1:
        return (f"rollout.tensor_parallel_size={tensor_parallel_size}: the weights arrive in the rollout worker's "
                "process, but vLLM's tensor-parallel workers are other processes (it needs 1)")
    return None


def nccl_hardware_problem(cuda_available: bool, nccl_available: bool) -> Optional[str]:
    if not cuda_available:
        return "torch.cuda.is_available() is False on this machine (no CUDA GPU, or a CPU-only torch build)"
    if not nccl_available:
        return "torch.distributed.is_nccl_available() is False (this torch build has no NCCL)"
    return None


def choose_weight_sync(cfg, *, cuda_available: bool, nccl_available: bool, in_cluster: bool = False) -> str:
    """'nccl' or 'object_store' for cfg's rollout.weight_sync. Raises WeightSyncError when nccl was asked for
    and cannot run. In a cluster job the driver may sit on a CPU head node while the workers get GPU nodes,
    so there the GPUs are judged from the config alone (as zs_ray.preflight does)."""
    mode = cfg.rollout.weight_sync
    if mode not in MODES:
        raise WeightSyncError(f"config key '{KEY}': must be one of {MODES}, got {mode!r}")
    if mode == "object_store":
        return mode
    r = cfg.resources
    why = nccl_config_problem(r.device, cfg.rollout.tensor_parallel_size, r.gpus_per_policy_worker,
                              r.gpus_per_rollout_worker)
    if why is None and not in_cluster:
        why = nccl_hardware_problem(cuda_available, nccl_available)
    if why is None:
        return "nccl"
    if mode == "auto":
        return "object_store"
    raise WeightSyncError(f"config key '{KEY}': nccl was asked for but cannot run: {why}. "
                          f"Use {KEY}=auto (object store here) or {KEY}=object_store")


def resolve_weight_sync(cfg) -> str:
    """choose_weight_sync with this machine's probes; the trainer calls it before Ray or any actor starts."""
    import torch
    import torch.distributed as dist

    nccl = dist.is_available() and dist.is_nccl_available()
    return choose_weight_sync(cfg, cuda_available=torch.cuda.is_available(), nccl_available=nccl,
                              in_cluster=bool(os.environ.get("RAY_ADDRESS")))
