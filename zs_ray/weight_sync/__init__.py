"""How new policy weights reach the rollout engines (`rollout.weight_sync`).

- `object_store`: policy rank 0's full state dict (CPU tensors) goes through Ray's object store to every
  rollout worker (`RolloutWorker.update_weights`). Works everywhere; the only path on CPU.
- `nccl`: policy rank 0 and every rollout worker form one extra NCCL group (group rank 0 = policy rank 0,
  rank 1 + i = rollout worker i). Each full parameter, gathered from the FSDP2 shards one at a time, is
  broadcast GPU to GPU and loaded into the engine as it arrives (`RolloutWorker.receive_weights`); only
  the (name, dtype, shape) list travels through Ray. This is OpenRLHF's and verl's scheme.
- `auto`: nccl when it can run (whole GPUs, CUDA and NCCL here), object_store otherwise.

The group is vLLM's `StatelessProcessGroup` + `PyNcclCommunicator` when vLLM is importable: a group of its
own, so it does not clash with the policy ranks' default (FSDP) process group. Without vLLM it is a bare
torch `ProcessGroupNCCL` over its own `TCPStore`. No Ray here.

choose.py picks the path (config validation imports it, so it imports no torch); nccl.py is the group and
the transfer.
"""
