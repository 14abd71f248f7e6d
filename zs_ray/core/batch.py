"""Trajectories -> padded training tensors, and the split of a batch across FSDP ranks.

Pure tensor code (no Ray). Conventions (shared with zs_ray.core.algorithms):
- every tensor of a batch has the row dimension first; [B, T] tensors are right-padded;
- `input_ids[b] = prompt + response`; position t of `rollout_logprobs`, `loss_mask` and of the
  log-probs the trainer computes all refer to token t: `logp[b, t] = log p(x_t | x_<t)`, and
  position 0 (always a prompt token) holds 0;
- `loss_mask` is 0 on prompt, padding and environment tokens, the trajectory's own mask on the
  response; the token-mean of a loss is over the unmasked tokens of the *whole* batch.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

ROW_INDEX = "row_index"  # added by split_for_ranks: the row's index in the full batch, -1 for a dummy row


def collate(trajectories: list[dict], pad_id: int, advantages=None) -> dict[str, torch.Tensor]:
    """Right-padded tensors from trajectory dicts.

    Each trajectory has `prompt_ids`, `response_ids`, `loss_mask` and `rollout_logprobs` (both as
    long as the response) and `reward`. `advantages`: optional, one value per trajectory ([B]) or a
    [B, T] tensor already aligned with the batch. Returns input_ids, attention_mask, loss_mask,
    rollout_logprobs ([B, T]), scores, prompt_lens, response_lens ([B]) and advantages if given.
    """
    if not trajectories:
        raise ValueError("collate: no trajectories")
    B = len(trajectories)
    lens = []
    for i, tr in enumerate(trajectories):
        p, r = len(tr["prompt_ids"]), len(tr["response_ids"])
        if p < 1:
            raise ValueError(f"trajectory {i}: empty prompt (the first token has no log-prob)")
        for key in ("loss_mask", "rollout_logprobs"):
            if key in tr and tr[key] is not None and len(tr[key]) != r:
                raise ValueError(f"trajectory {i}: len({key})={len(tr[key])} != len(response_ids)={r}")
        lens.append((p, r))
    T = max(p + r for p, r in lens)
    out = {
        "input_ids": torch.full((B, T), int(pad_id), dtype=torch.long),
        "attention_mask": torch.zeros(B, T, dtype=torch.long),
        "loss_mask": torch.zeros(B, T, dtype=torch.float32),
        "rollout_logprobs": torch.zeros(B, T, dtype=torch.float32),
        "scores": torch.tensor([float(tr.get("reward", 0.0)) for tr in trajectories], dtype=torch.float32),
        "prompt_lens": torch.tensor([p for p, _ in lens], dtype=torch.long),
        "response_lens": torch.tensor([r for _, r in lens], dtype=torch.long),
    }
    for b, (tr, (p, r)) in enumerate(zip(trajectories, lens)):
        out["input_ids"][b, :p] = torch.as_tensor(list(tr["prompt_ids"]), dtype=torch.long)
        out["input_ids"][b, p:p + r] = torch.as_tensor(list(tr["response_ids"]), dtype=torch.long)
        out["attention_mask"][b, :p + r] = 1
        mask = tr.get("loss_mask")
        out["loss_mask"][b, p:p + r] = torch.as_tensor(list(mask) if mask is not None else [1] * r,
                                                       dtype=torch.float32)
        lp = tr.get("rollout_logprobs")
        if lp is not None and r:
            out["rollout_logprobs"][b, p:p + r] = torch.as_tensor(list(lp), dtype=torch.float32)
    if advantages is not None:
        adv = torch.as_tensor(advantages, dtype=torch.float32)
        if adv.shape not in ((B,), (B, T)):
            raise ValueError(f"collate: advantages must be [B]={B} or [B, T]={(B, T)}, got {tuple(adv.shape)}")
        out["advantages"] = adv.clone()
    return out


def batch_size(batch: dict) -> int:
    return int(batch["input_ids"].shape[0])


def select_rows(batch: dict, idx) -> dict:
    """The rows `idx` (a slice, list or index tensor) of every tensor in the batch."""
    return {k: v[idx] for k, v in batch.items()}


def micro_batches(batch: dict, size: int) -> list[dict]:
    """Consecutive row slices of at most `size` rows."""
    if size < 1:
        raise ValueError("micro_batches: size must be >= 1")
    B = batch_size(batch)
    return [select_rows(batch, slice(i, i + size)) for i in range(0, B, size)]


def _dummy_rows(batch: dict, n: int) -> dict:
    """Copies of row 0 with every loss-bearing field zeroed.

    A real row (not all-padding) keeps attention well defined (a fully masked row gives NaN in
    attention, and NaN * 0 is still NaN); with loss_mask 0 it adds exactly zero to loss and grads.
    """
    rows = select_rows(batch, [0] * n)
    for k, v in rows.items():
        if k in ("input_ids", "attention_mask", "prompt_lens", "response_lens"):
            continue
        rows[k] = torch.full_like(v, -1) if k == ROW_INDEX else torch.zeros_like(v)
    return rows


def split_for_ranks(batch: dict, world_size: int) -> tuple[list[dict], int]:
    """Split rows into `world_size` contiguous shards of EQUAL row count, plus the global token count.

    Equal rows per rank => equal micro-batch counts for any micro-batch size, so every rank runs the
    same number of forward/backward passes (FSDP all-gathers / reduce-scatters would deadlock
    otherwise). Missing rows are dummy rows (loss_mask 0, `row_index` -1). Returns (shards,
    global_tokens) where global_tokens = unmasked tokens of the whole batch (the token-mean's
    denominator on every rank and micro-batch).
    """
    if world_size < 1:
        raise ValueError("split_for_ranks: world_size must be >= 1")
    B = batch_size(batch)
    batch = dict(batch)
    batch[ROW_INDEX] = torch.arange(B, dtype=torch.long)
    per_rank = max(1, math.ceil(B / world_size))
    pad = per_rank * world_size - B
    if pad:
        dummy = _dummy_rows(batch, pad)
        batch = {k: torch.cat([v, dummy[k]]) for k, v in batch.items()}
    shards = [select_rows(batch, slice(r * per_rank, (r + 1) * per_rank)) for r in range(world_size)]
    return shards, int(batch["loss_mask"].sum().item())


def merge_rank_outputs(outputs: Sequence[torch.Tensor], shards: Sequence[dict], n_rows: int) -> torch.Tensor:
    """Inverse of split_for_ranks for per-row outputs: drop dummy rows, restore the original order."""
    rows = torch.cat([s[ROW_INDEX] for s in shards])
    vals = torch.cat(list(outputs))
    keep = rows >= 0
    out = torch.empty((n_rows,) + tuple(vals.shape[1:]), dtype=vals.dtype)
    out[rows[keep]] = vals[keep]
    return out


def trim_padding(batch: dict) -> tuple[dict, int]:
    """Drop trailing columns that are padding in every row (right padding); returns (batch, T_full)."""
    T = int(batch["input_ids"].shape[1])
    L = max(1, int(batch["attention_mask"].sum(1).max().item()))
    if L == T:
        return batch, T
    return {k: (v[:, :L] if v.dim() >= 2 and v.shape[1] == T else v) for k, v in batch.items()}, T


def response_window(batch: dict) -> int:
    """The first column whose logits any row's loss can read: one before the shortest prompt's end. Earlier
    columns only predict prompt tokens (loss mask 0), so the output layer may skip them: over a 49k
    vocabulary and ~250-token chat prompts that is a large share of the logits of a batch."""
    return max(0, int(batch["prompt_lens"].min()) - 1) if "prompt_lens" in batch else 0


def from_column(batch: dict, start: int) -> dict:
    """The batch's [B, T] tensors from column `start` on (other tensors as they are)."""
    T = int(batch["input_ids"].shape[1])
    return {k: (v[:, start:] if v.dim() >= 2 and v.shape[1] == T else v) for k, v in batch.items()}


def pad_columns(x: torch.Tensor, T: int, value: float = 0.0) -> torch.Tensor:
    """Right-pad a [B, L] tensor back to [B, T]."""
    if x.shape[1] == T:
        return x
    return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)
