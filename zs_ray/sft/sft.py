"""Supervised fine-tuning in one process: the policy's prior (copy pre-training, format warm start),
the equal-compute SFT baseline, and the simulator's fine-tuning all use this loop.

Examples are token sequences with a per-token loss mask, so environment text inside a demonstration
(`<information>` blocks, feedback lines) is never learned, exactly as in RL.
"""
from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

_ENV_RE = re.compile(r"(\n*<information>.*?</information>\n*)", re.DOTALL)


@dataclass
class Example:
    ids: list[int]
    mask: list[float]  # 0 = context, 1 = learn this token, w > 1 = learn it w times as hard


def encode_chat_example(tokenizer, prompt: str, response: str, add_eos: bool = True) -> Example:
    """Chat-templated prompt (mask 0) + response (mask 1) with `<information>` blocks masked out."""
    if getattr(tokenizer, "chat_template", None):
        p_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                              add_generation_prompt=True)
        if isinstance(p_ids, dict) or hasattr(p_ids, "input_ids"):
            p_ids = p_ids["input_ids"]
        p_ids = list(p_ids)
    else:
        p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    resp = encode_segments(tokenizer, policy_segments(response))
    ids, mask = list(p_ids) + resp.ids, [0] * len(p_ids) + resp.mask
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
    return Example(ids, mask)


def policy_segments(text: str) -> list[tuple[str, bool]]:
    """`text` cut into (piece, learn) segments: `<information>` blocks (what the environment wrote) are not learned."""
    return [(piece, i % 2 == 0) for i, piece in enumerate(_ENV_RE.split(text)) if piece]  # odd: captured blocks


def encode_segments(tokenizer, segments) -> Example:
    """(text, learn) pieces, tokenized one by one (zs_ray.world.prior_texts.Segments)."""
    ids, mask = [], []
    for text, learn in segments:
        t = tokenizer.encode(text, add_special_tokens=False)
        ids += t
        mask += [int(learn)] * len(t)
    return Example(ids, mask)


def encode_text_example(tokenizer, text: str, mask_information: bool = False) -> Example:
    """Plain language-model text (pre-training): every token is learned, or, with `mask_information`, every
    token outside `<information>` blocks (the copy drills: the documents are context, the turns are learned)."""
    if mask_information:
        return encode_segments(tokenizer, policy_segments(text))
    ids = tokenizer.encode(text, add_special_tokens=False)
    return Example(ids, [1] * len(ids))


def upweight(tokenizer, ex: Example, texts: Sequence[str], weight: float) -> Example:
    """The learned tokens that spell one of `texts` (with or without a leading space: BPE tokens differ) get
    loss weight `weight`: e.g. the few tokens that copy an answer out of the context, which a plain mean over
    a long target lets a small model neglect."""
    mask = list(ex.mask)
    if weight == 1.0:
        return Example(ex.ids, mask)
    forms = {tuple(tokenizer(f, add_special_tokens=False)["input_ids"]) for t in texts if str(t).strip()
             for f in (f" {t}", str(t))}
    for form in forms - {()}:
        n = len(form)
        for i in range(len(ex.ids) - n + 1):
            if tuple(ex.ids[i:i + n]) == form and all(m > 0 for m in mask[i:i + n]):
                mask[i:i + n] = [weight] * n
    return Example(ex.ids, mask)


def _batches(examples: Sequence[Example], batch_size: int, pad_id: int, rng: random.Random, max_len: int):
    order = list(range(len(examples)))
    rng.shuffle(order)
    for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        T = min(max(len(e.ids) for e in chunk), max_len)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), T), -100, dtype=torch.long)
        attn = torch.zeros((len(chunk), T), dtype=torch.long)
        weights = torch.zeros((len(chunk), T))
        for r, e in enumerate(chunk):
            n = min(len(e.ids), T)
            ids[r, :n] = torch.tensor(e.ids[:n])
            attn[r, :n] = 1
            weights[r, :n] = torch.tensor(e.mask[:n], dtype=torch.float)
            lab = torch.tensor(e.ids[:n])
            lab[weights[r, :n] == 0] = -100
            labels[r, :n] = lab
        yield ids, attn, labels, weights


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, sum(w * ce) / sum(w) over the learned tokens: with 0/1 weights it is the
    usual mean over unmasked tokens (what `model(labels=...)` returns)."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=-100, reduction="none")
    w = weights[:, 1:].flatten() * (labels[:, 1:].flatten() != -100)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


# Causal LMs whose logits are exactly lm_head(last hidden state): no logit scaling or soft-capping after it.
_PLAIN_HEAD = ("llama", "qwen2", "qwen3", "mistral")


def lm_loss(model, ids: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """weighted_lm_loss of `model` on a batch, with the output layer run only at the positions that predict a
    learned token: over SmolLM2's 49k vocabulary the logits of every prompt and passage position cost a
    third of the forward pass and as much again backward, for tokens the loss never reads."""
    if getattr(model.config, "model_type", None) not in _PLAIN_HEAD:
        return weighted_lm_loss(model(input_ids=ids, attention_mask=attn).logits, labels, weights)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
    w = weights[:, 1:] * (labels[:, 1:] != -100)
    keep = w > 0
    ce = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden[keep]).float(),
                                           labels[:, 1:][keep], reduction="none")
    return (ce * w[keep]).sum() / w[keep].sum().clamp_min(1e-8)


def sft_train(model_or_path, examples: Sequence[Example], *, out_dir: Optional[str] = None, tokenizer=None,
              epochs: float = 1.0, steps: Optional[int] = None, lr: float = 1e-3, batch_size: int = 16,
              max_len: int = 1024, weight_decay: float = 0.01, warmup: int = 20, grad_clip: float = 1.0,
              betas: tuple[float, float] = (0.9, 0.999),
              seed: int = 0, threads: Optional[int] = None, log_every: int = 50,
              progress: Callable[[str], None] = print, label: str = "sft") -> dict:
    """Train a causal LM on masked examples; saves to `out_dir` (safetensors + tokenizer) when given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM.from_pretrained(model_or_path, dtype=torch.float32, use_safetensors=True)
             if isinstance(model_or_path, str) else model_or_path)
    if tokenizer is None and isinstance(model_or_path, str):
        tokenizer = AutoTokenizer.from_pretrained(model_or_path)
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    per_epoch = max(1, len(examples) // batch_size)
    total = steps if steps is not None else max(1, int(math.ceil(epochs * per_epoch)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    partial = any(not p.requires_grad for p in model.parameters())
    model.train()
    rng, step, t0, losses, tokens = random.Random(seed), 0, time.perf_counter(), [], 0
    while step < total:
        for ids, attn, labels, weights in _batches(examples, batch_size, pad_id, rng, max_len):
            # the head-only-where-learned path for partly frozen (pretrained) models; the tiny models keep the
            # full-logits loss, whose float order their tests' learning bars were measured with
            loss = (lm_loss(model, ids, attn, labels, weights) if partial else
                    weighted_lm_loss(model(input_ids=ids, attention_mask=attn).logits, labels, weights))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += int((labels != -100).sum())
            step += 1
            if log_every and step % log_every == 0:
                progress(f"[{label}] step {step}/{total} loss {sum(losses[-log_every:]) / log_every:.4f} "
                         f"({time.perf_counter() - t0:.0f}s)")
            if step >= total:
                break
    model.eval()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    return {"steps": step, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "losses": losses,
            "seconds": time.perf_counter() - t0, "trained_tokens": tokens, "model": model}
