"""vLLM 0.32 specifics that zs_ray.engines.engine relies on: work-arounds (each says why) and CPU engine settings."""
from __future__ import annotations

import os


def patch_vllm_kernel_scan() -> None:
    """vLLM 0.32 (CPU) scans every loaded module for Triton kernels with `vars(x).get("kernel")`. An object
    whose `__getattr__` answers any name (llvmlite's `ffi.lib`, loaded with numba by bm25s) makes `vars()`
    return a non-mapping and engine start-up crashes. Give that module a tolerant `vars`."""
    import builtins
    import types

    try:
        from vllm.triton_utils import dispatcher
    except ImportError:
        return

    def _vars(x):
        d = builtins.vars(x)
        return d if isinstance(d, (dict, types.MappingProxyType)) else {}
    dispatcher.vars = _vars


def _rotary_reload_warning(record) -> bool:
    """False for vLLM's "RotaryEmbedding: Failed to load weights" on every in-place reload: the rotary cos/sin
    cache is computed at start-up, never in a checkpoint, and vLLM keeps it (it places the old tensors back).
    Printed once per weight sync per rollout worker, it buried the training log; other layers still warn."""
    return record.getMessage() != "RotaryEmbedding: Failed to load weights"


def _subset_reload_warning(record) -> bool:
    """False for the per-layer "Failed to load weights" and the list of "weights not loaded" that a reload of a
    *subset* prints for every layer it leaves alone (model.trainable_layers syncs the layers that learn only):
    expected there, they would fill the log at every step. Full reloads keep them."""
    msg = record.getMessage()
    return not (msg.endswith(": Failed to load weights") or msg.startswith("Following weights were not loaded"))


class quiet_subset_reload:
    """`with quiet_subset_reload():` around a reload of a subset of the weights."""
    NAMES = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")

    def __enter__(self):
        import logging

        for name in self.NAMES:
            logging.getLogger(name).addFilter(_subset_reload_warning)

    def __exit__(self, *exc):
        import logging

        for name in self.NAMES:
            logging.getLogger(name).removeFilter(_subset_reload_warning)


def quiet_rotary_reload_warning() -> None:
    import logging

    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if _rotary_reload_warning not in log.filters:
        log.addFilter(_rotary_reload_warning)


def cpu_kv_cache_kwargs(kv_cache_gb: float) -> dict:
    """vLLM engine kwargs for a CPU KV cache of `kv_cache_gb` GiB (fractions allowed). Clears the legacy
    VLLM_CPU_KVCACHE_SPACE env var (whole GiB, set by runtime.local_env), which would override it."""
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return {"kv_cache_memory_bytes": int(float(kv_cache_gb) * (1 << 30))}


def check_cpu_head_dim(model_path: str, trust_remote_code: bool) -> None:
    """vLLM's CPU attention kernels support only some head sizes; say so before vLLM fails deep inside."""
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    ok = CPUAttentionBackend.get_supported_head_sizes()
    if hd not in ok:
        raise ValueError(f"{model_path}: head_dim={hd} is not supported by vLLM's CPU attention (supported: {ok}); "
                         "use a model with a supported head size or rollout.engine=hf")
