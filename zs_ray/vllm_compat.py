"""Work-arounds for vLLM 0.32 behaviour that zs_ray.engine relies on not happening (each says why)."""
from __future__ import annotations


def _patch_vllm_kernel_scan() -> None:
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


def _quiet_rotary_reload_warning() -> None:
    import logging

    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if _rotary_reload_warning not in log.filters:
        log.addFilter(_rotary_reload_warning)
