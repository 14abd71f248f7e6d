"""Process settings for this project's machines, applied by the project itself (MACHINE_NOTES.md).

- Ray and vLLM listen and connect on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, VLLM_HOST_IP).
- Ray token auth is disabled for a loopback-only local head, so `ray job submit` works without a token.
- vLLM runs its engine in-process (3.5 s start-up instead of 25-30 s) with a bounded CPU KV cache.
- Caches and temp folders stay inside the work tree.
Users never need to export these by hand; `setdefault` keeps any value they did set.
"""
from __future__ import annotations

import os

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": LOOPBACK, "MASTER_ADDR": LOOPBACK}


def local_env(work_dir: str | None = None) -> dict[str, str]:
    work_dir = os.path.abspath(work_dir or os.environ.get("ZS_RAY_HOME", "runs"))
    return {
        **LOOPBACK_ENV,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CACHE_ROOT": os.path.join(work_dir, ".cache", "vllm"),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(work_dir, ".cache", "inductor"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }


def apply_loopback_env() -> None:
    """The listen/connect settings alone. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when `ray` is first
    imported, so `import zs_ray` (and `import actors`) apply them before any code of ours imports ray."""
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)


def apply_local_env(work_dir: str | None = None) -> dict[str, str]:
    """Set the project's settings in this process (and so in every child it starts)."""
    env = local_env(work_dir)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in env}


def actor_env(threads: int = 1) -> dict[str, str]:
    """Env vars for an actor's runtime_env: loopback, in-process vLLM, bounded threads."""
    env = {k: os.environ.get(k, v) for k, v in local_env().items()}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def init_ray(num_cpus: float | None = None, address: str | None = None, temp_dir: str | None = None,
             namespace: str = "zs-ray", **kwargs):
    """Join the cluster at `address` (or RAY_ADDRESS), or start a loopback-only local Ray."""
    apply_local_env()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, namespace=namespace, log_to_driver=True, **kwargs)
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        # `ray` was imported before these settings: this head would listen on the machine's address.
        raise RuntimeError("ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so a local Ray "
                           "would listen on the machine's network address, not 127.0.0.1: import zs_ray before "
                           "ray, or export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    temp_dir = os.path.abspath(temp_dir or os.environ.get("ZS_RAY_TMP", "/tmp/zs_ray"))
    os.makedirs(temp_dir, exist_ok=True)
    return ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace=namespace,
        _node_ip_address=LOOPBACK,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": actor_env()},
        **kwargs,
    )


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))
