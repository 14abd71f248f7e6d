"""Process settings for this project's machines, applied by the project itself (docs/local_machine.md).

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
    """Env vars for an actor's runtime_env: loopback, in-process vLLM, bounded threads, and where logs go."""
    env = {k: os.environ.get(k, v) for k, v in local_env().items()}
    env.update({k: os.environ[k] for k in LOG_ENV if k in os.environ})
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


# ---- the console: progress, results and errors; the full logs in files ------------------------------------------

LOG_ENV = ("ZS_RAY_LOG_DIR", "VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_CONFIG_PATH")


def verbose_console() -> bool:
    """ZS_RAY_VERBOSE=1 (`--verbose`): every log line of every process on the console, as Ray and vLLM print them."""
    return os.environ.get("ZS_RAY_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def quiet_logs(log_dir: str) -> str | None:
    """Keep the console to progress, results and errors; put the full logs under `log_dir` (returned; None when
    verbose_console()). Call before Ray and vLLM start: the settings travel in the env to child processes, actors
    and Serve replicas. vLLM's log lines (a dozen WARNINGs per engine start) go to `log_dir`/vllm.log in every
    process; a local Ray (init_ray) keeps its workers' output off the driver's console, in its per-worker files,
    which `log_dir`/ray links to. An actor's failure still reaches the driver as its exception."""
    if verbose_console():
        return None
    import json

    log_dir = os.path.abspath(log_dir)
    os.makedirs(log_dir, exist_ok=True)
    conf = os.path.join(log_dir, "vllm_logging.json")
    with open(conf, "w") as f:
        json.dump({"version": 1, "disable_existing_loggers": False,
                   "formatters": {"plain": {"format": "%(levelname)s %(asctime)s pid %(process)d "
                                                      "[%(filename)s:%(lineno)d] %(message)s"}},
                   "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain", "mode": "a",
                                         "filename": os.path.join(log_dir, "vllm.log")}},
                   "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}}}, f, indent=1)
    os.environ["ZS_RAY_LOG_DIR"] = log_dir
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", conf)
    return log_dir


def _link_ray_logs(log_dir: str) -> None:
    """`log_dir`/ray -> this Ray session's log folder (worker-*.out/.err per actor, serve/ per replica). Ray keeps
    them under its temp dir: a Unix socket path there must stay under 108 bytes, too short for a run folder."""
    try:
        from ray._private import worker

        target = worker._global_node.get_logs_dir_path()
        link = os.path.join(log_dir, "ray")
        if os.path.islink(link):
            os.unlink(link)
        if not os.path.exists(link):
            os.symlink(target, link)
    except Exception:  # noqa: BLE001 - a missing link must not stop the run; the logs are still in Ray's folder
        pass


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
    log_dir = None if verbose_console() else os.environ.get("ZS_RAY_LOG_DIR")
    if log_dir:  # quiet_logs: actors' output stays in Ray's per-worker files
        import logging

        kwargs = {"log_to_driver": False, "logging_level": logging.WARNING, **kwargs}
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ctx = ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace=namespace,
        _node_ip_address=LOOPBACK,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": actor_env()},
        **kwargs,
    )
    if log_dir:
        _link_ray_logs(log_dir)
    return ctx


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on `host` now (loopback by default; "" for every interface of this node)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
