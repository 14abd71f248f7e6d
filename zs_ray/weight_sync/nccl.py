"""The NCCL weight-sync path: policy rank 0 and every rollout worker in one extra NCCL group; each full parameter
is broadcast GPU to GPU as it is gathered (package docstring: zs_ray/weight_sync/__init__.py). torch and vLLM are
imported inside the functions: GPU only."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

from zs_ray.weight_sync.choose import KEY, WeightSyncError


# ---------------------------------------------------------------- metadata (the only part that goes through Ray)
def pack_meta(named_tensors: Iterable) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype name, shape) per tensor, in order: what the receivers allocate. Plain Python types, so the
    list is small and readable anywhere. A DTensor (FSDP2 shard) reports its full, global shape."""
    return [(name, str(t.dtype).removeprefix("torch."), tuple(int(d) for d in t.shape)) for name, t in named_tensors]


def unpack_meta(meta: Iterable) -> list:
    """pack_meta's list back as (name, torch.dtype, shape); a malformed entry is a ValueError naming it."""
    import torch

    out = []
    for i, entry in enumerate(meta):
        try:
            name, dtype_name, shape = entry
            shape = tuple(shape)
        except (TypeError, ValueError):
            raise ValueError(f"weight metadata entry {i}: expected (name, dtype, shape), got {entry!r}") from None
        dtype = getattr(torch, str(dtype_name), None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"weight metadata entry {i}: the name must be a non-empty string, got {name!r}")
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"weight metadata for {name!r}: unknown dtype {dtype_name!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"weight metadata for {name!r}: the shape must be non-negative ints, got {shape!r}")
        out.append((name, dtype, shape))
    return out


# ---------------------------------------------------------------- the group and the transfer (GPU only)
class NcclGroup:
    """This process's membership in the weight-sync group; rank 0 also hosts the group's TCP store."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 300.0):
        import torch

        self.rank, self.device = rank, torch.device("cuda", torch.cuda.current_device())
        self._pynccl = self._pg = None
        try:
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup
        except ImportError:
            self._init_torch(host, port, rank, world_size, timeout_s)
            return
        group = StatelessProcessGroup.create(host, port, rank, world_size, store_timeout=int(timeout_s))
        self._pynccl = PyNcclCommunicator(group, device=self.device)
        if self._pynccl.disabled:  # vLLM switches the communicator off silently when it cannot load libnccl
            raise WeightSyncError(f"{KEY}=nccl: vLLM could not load the NCCL library in this process "
                                  "(libnccl missing, or VLLM_DISABLE_PYNCCL is set)")

    def _init_torch(self, host, port, rank, world_size, timeout_s):
        from datetime import timedelta

        import torch.distributed as dist
        from torch.distributed.distributed_c10d import ProcessGroupNCCL

        timeout = timedelta(seconds=timeout_s)
        self._store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        opts = ProcessGroupNCCL.Options()
        opts._timeout = timeout
        self._pg = ProcessGroupNCCL(dist.PrefixStore("zs_ray_weight_sync", self._store), rank, world_size, opts)

    def broadcast(self, tensor, src: int = 0) -> None:
        """In place on every member. Runs on the caller's current CUDA stream, so the kernels that produce
        (FSDP all-gather) or consume (the engine's weight copy) the tensor are ordered with it."""
        import torch

        if self._pynccl is not None:
            self._pynccl.broadcast(tensor, src=src, stream=torch.cuda.current_stream())
        else:
            import torch.distributed as dist

            opts = dist.BroadcastOptions()
            opts.rootRank = src
            self._pg.broadcast([tensor], opts).wait()

    def close(self) -> None:
        if self._pynccl is not None:
            self._pynccl.destroy()
        self._pynccl = self._pg = None


def broadcast_state(named_tensors: Iterable, group: Optional[NcclGroup]) -> int:
    """Sender side, called on every FSDP rank with the same state dict: each DTensor's full_tensor() is an
    all-gather over the FSDP group, so all ranks must walk it; rank 0 (the one given `group`) broadcasts
    each full tensor right away, so at most one full parameter exists beyond the shards. Returns bytes sent."""
    import torch

    sent = 0
    for _, t in named_tensors:
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        if group is not None:
            full = full.to(group.device).contiguous()
            group.broadcast(full, src=0)
            sent += full.numel() * full.element_size()
    if group is not None:
        torch.cuda.synchronize()  # done when the last broadcast has run, not when it was queued
    return sent


def receive_state(group: NcclGroup, meta: Iterable) -> Iterator:
    """Receiver side: (name, tensor) pairs in the order rank 0 broadcasts them, each received when the engine
    asks for the next one. The metadata is checked before any broadcast is joined."""
    import torch

    entries = unpack_meta(meta)

    def pairs():
        for name, dtype, shape in entries:
            t = torch.empty(shape, dtype=dtype, device=group.device)
            group.broadcast(t, src=0)
            yield name, t
    return pairs()


def drain(pairs: Iterator) -> int:
    """Receive whatever a failed load left unread, so every member finishes the broadcast sequence and policy
    rank 0 is not left waiting for a receiver that gave up."""
    return sum(1 for _ in pairs)
