"""Advantages and losses: GRPO, REINFORCE, PPO/GAE, clipped policy loss, stale-sample weights, KL, entropy.

Tensors are [B, T] over the whole sequence (prompt + response); `mask` is 1 on tokens the policy
sampled and 0 on prompt, environment (information, feedback) and padding tokens. `logp[b, t]` is
log pi(token t | tokens < t). Token-mean is over the unmasked tokens of the *whole batch*: callers
pass `n_tokens` so that micro-batches with gradient accumulation give the same loss as one batch.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch


def _group_indices(group_ids: list) -> list[list[int]]:
    """Sample indices per group, groups in order of first appearance."""
    groups: dict = defaultdict(list)
    for i, g in enumerate(group_ids):
        groups[g].append(i)
    return list(groups.values())


def grpo_advantages(rewards: torch.Tensor, group_ids: list, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group of samples of one prompt (unbiased std, as torch.std).

    A group whose rewards are all equal gets advantage 0 (never NaN); a group of one gets 0.
    """
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    for idx in _group_indices(group_ids):
        r = rewards[idx].double()  # float64: float32 rounding of the mean is not zero-noise
        if len(idx) < 2 or bool((r == r[0]).all()):  # all equal: exactly 0, not rounding noise / eps
            continue
        adv[idx] = ((r - r.mean()) / (r.std() + eps)).to(adv.dtype)
    return adv


def group_spread(rewards: torch.Tensor, group_ids: list) -> torch.Tensor:
    """[B] bool: True where the sample's group has rewards that differ (the groups GRPO learns from).

    A group whose samples all got the same reward (all right, all wrong, or the same partial F1) gets
    advantage 0 for every sample: it adds no policy gradient, only KL and entropy terms and tokens to the
    token-mean's denominator. DAPO (Yu et al. 2025) drops such groups ("dynamic sampling").
    """
    out = torch.zeros(len(group_ids), dtype=torch.bool)
    for idx in _group_indices(group_ids):
        r = rewards[idx]
        out[idx] = len(idx) > 1 and not bool((r == r[0]).all())
    return out


def tied_groups(rewards: torch.Tensor, group_ids: list, spread: torch.Tensor) -> dict:
    """Fractions of the groups whose rewards all tie (`spread`, from group_spread, is False; no GRPO gradient): in
    all, all at 1 (solved), all at 0 (failed); the rest share a partial reward. Rising ties: RL runs out of signal."""
    firsts = [idx[0] for idx in _group_indices(group_ids)]
    tied = [float(rewards[i]) for i in firsts if not spread[i]]
    n = max(len(firsts), 1)
    return {"reward/zero_var_groups": len(tied) / n, "reward/solved_groups": sum(r >= 1.0 for r in tied) / n,
            "reward/failed_groups": sum(r <= 0.0 for r in tied) / n}


def reinforce_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE as in ZeroSearch: the raw reward, no baseline."""
    return rewards.float().clone()


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the policy's own tokens; environment tokens (mask 0) are skipped, not steps.

    Returns (advantages, returns), both zero where mask is 0.
    """
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        idx = mask[b].nonzero(as_tuple=True)[0]
        last = 0.0
        for j in range(len(idx) - 1, -1, -1):
            t = idx[j]
            next_v = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
            delta = token_rewards[b, t] + gamma * next_v - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
    returns = (adv + values) * mask
    return adv * mask, returns


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the unmasked tokens of the batch; zero where mask is 0. PPO whitens its GAE
    advantages so, as verl (the ZeroSearch reference) does: their scale then depends on neither the reward's
    nor the critic's, whose values start untrained."""
    mask = mask.to(x.dtype)
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)  # unbiased, as verl's masked_var
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || ref) estimate. k1 = logp - ref; k3 ("low_var_kl") = e^(ref-logp) - (ref-logp) - 1."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        d = (ref_logp - logp).clamp(-20, 20)
        return (torch.exp(d) - d - 1).clamp(-10, 10)
    raise ValueError(f"algorithm.kl_estimator must be 'k1' or 'k3', got {kind!r}")


def masked_sum_mean(x: torch.Tensor, mask: torch.Tensor, n_tokens: float) -> torch.Tensor:
    """Sum over unmasked tokens divided by the batch-wide count `n_tokens` (token-mean)."""
    return (x * mask).sum() / max(float(n_tokens), 1.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def behaviour_weights(prox_logp, behav_logp, mask, cap: float = 2.0, mode: str = "truncate"):
    """Importance weights w = pi_prox / pi_behav for samples the rollout engine drew from an older policy.

    With staleness k a trajectory comes from the behaviour policy pi_behav (the engine's weights, up to k
    versions old, and its own numerics); the trainer recomputes the proximal policy pi_prox (the weights at the
    start of this update). The decoupled PPO objective (AReaL, Fu et al. 2025) is, per policy token,

        -min(r A, clip(r, 1 - eps, 1 + eps) A) * w,    r = pi_theta / pi_prox,   w = pi_prox / pi_behav,

    so the trust region is around pi_prox and w corrects for having sampled from pi_behav. w is detached and
    bounded: mode "truncate" uses min(w, cap) (truncated importance sampling, Yao et al. 2025); mode "mask"
    drops tokens with w > cap (AReaL's behav_imp_weight_cap). Without it a stale batch is trained as if
    on-policy. Measured at staleness 1 on the CPU default: w stayed within 0.986-1.003 per step, a no-op
    (docs/experiments.md); it matters for larger staleness or an engine whose numerics differ from the trainer's.
    pi_behav is the engine's raw log-prob (before top-p), so the nucleus renormalisation is not corrected.
    Returns (w [B, T], zero where mask is 0; the fraction of policy tokens over the cap).
    """
    if mode not in ("truncate", "mask"):
        raise ValueError(f"algorithm.behaviour_correction must be 'none', 'truncate' or 'mask', got {mode!r}")
    w = torch.exp((prox_logp - behav_logp).clamp(-20, 20)).detach()
    over = (w > cap) & (mask > 0)
    w = w.clamp(max=cap) if mode == "truncate" else torch.where(over, torch.zeros_like(w), w)
    return w * mask, over.float().sum() / mask.sum().clamp(min=1)


def policy_loss(logp, old_logp, advantages, mask, n_tokens, clip: float = 0.2, weights=None):
    """PPO clipped surrogate, token-mean; `weights` (e.g. behaviour_weights) scale each token's term.
    Returns (loss, clip_fraction)."""
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logp)
    surr1 = ratio * adv
    surr2 = ratio.clamp(1 - clip, 1 + clip) * adv
    per_token = -torch.minimum(surr1, surr2)
    loss = masked_sum_mean(per_token if weights is None else per_token * weights, mask, n_tokens)
    clipped = ((surr2 < surr1).float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, clipped.detach()


def value_loss(values, old_values, returns, mask, n_tokens, clip: float = 0.5):
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
    return 0.5 * masked_sum_mean(loss, mask, n_tokens)


def actor_loss(logp, old_logp, ref_logp, advantages, mask, n_tokens, entropy=None, *, clip=0.2,
               kl_coef=0.001, kl_estimator="k3", entropy_coef=0.001, weights=None):
    """pg_loss - entropy_coef * entropy + kl_coef * KL  (the KL is *added*; the reference subtracted it).
    `weights` scale the policy-gradient term only (behaviour_weights); KL and entropy are about pi_theta itself."""
    pg, clipfrac = policy_loss(logp, old_logp, advantages, mask, n_tokens, clip, weights)
    loss = pg
    stats = {"pg_loss": pg.detach(), "clip_frac": clipfrac}
    if ref_logp is not None and kl_coef:
        kl = masked_sum_mean(kl_penalty(logp, ref_logp, kl_estimator), mask, n_tokens)
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    if entropy is not None:
        ent = masked_sum_mean(entropy, mask, n_tokens)
        loss = loss - entropy_coef * ent
        stats["entropy"] = ent.detach()
    return loss, stats


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T]: position t holds log p(x_t | x_<t) (from logits at t-1); position 0 holds 0."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    lp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[B, T]: entropy of the distribution token t was sampled from; position 0 holds 0."""
    return torch.nn.functional.pad(entropy_from_logits(logits[:, :-1]), (1, 0))


def actor_microbatch_loss(logits: torch.Tensor, mb: dict, n_tokens: int, algo: dict):
    """The actor loss of one micro-batch (PPO clip + k3/k1 KL to ref, added + entropy bonus).

    Every term is `(x * loss_mask).sum() / n_tokens`, so masked tokens get exactly zero gradient
    and the sum over micro-batches and ranks is the token-mean over the whole batch.
    `old_logprobs` (the proximal policy) defaults to the detached current log-probs (exactly on-policy: ratio
    1). With algo.behaviour_correction set, `rollout_logprobs` (the behaviour policy) weight each token.
    `algo` is the worker's algorithm dict, with every key of actors.policy_worker.ALGO_DEFAULTS.
    """
    logp = token_logprobs(logits, mb["input_ids"])
    ent = token_entropy(logits) if algo["entropy_coef"] else None
    old = mb.get("old_logprobs", logp.detach())
    ref = mb.get("ref_logprobs") if algo["kl_coef"] else None
    share = mb["loss_mask"].sum() / max(n_tokens, 1)  # this micro-batch's share of the global tokens
    w = None
    if algo["behaviour_correction"] != "none":
        if "rollout_logprobs" not in mb:
            raise ValueError("algorithm.behaviour_correction needs the batch's rollout_logprobs (the engine's)")
        w, over = behaviour_weights(old, mb["rollout_logprobs"], mb["loss_mask"],
                                    float(algo["behaviour_weight_cap"]), algo["behaviour_correction"])
    loss, stats = actor_loss(logp, old, ref, mb["advantages"], mb["loss_mask"], n_tokens, ent,
                             clip=algo["clip"], kl_coef=algo["kl_coef"], kl_estimator=algo["kl_estimator"],
                             entropy_coef=algo["entropy_coef"], weights=w)
    if w is not None:  # global token-means once summed over micro-batches and ranks
        stats["behav_weight"] = w.sum() / max(n_tokens, 1)
        stats["behav_over_cap"] = over * share
    if "rollout_logprobs" in mb:  # |log pi_behav - log pi_prox| on the trained tokens (a global mean once summed)
        stats["logprob_gap"] = ((mb["rollout_logprobs"] - old).abs() * mb["loss_mask"]).sum() / max(n_tokens, 1)
    if ent is None:  # for the stats only
        with torch.no_grad():
            stats["entropy"] = (token_entropy(logits) * mb["loss_mask"]).sum() / max(n_tokens, 1)
    stats["clip_frac"] = stats["clip_frac"] * share  # -> a global mean
    stats["loss"] = loss.detach()
    return loss, stats


def ppo_token_rewards(scores: torch.Tensor, logp, ref_logp, mask, beta: float = 0.001,
                      kind: str = "k1") -> torch.Tensor:
    """PPO's KL-in-reward: -beta * KL on every policy token, the score on the last policy token."""
    r = -beta * kl_penalty(logp, ref_logp, kind) * mask
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero(as_tuple=True)[0]
        if len(idx):
            r[b, idx[-1]] += scores[b]
    return r


def lr_factor(step: int, warmup_steps: int = 0, total_steps: int = 0, schedule: str = "constant",
              min_ratio: float = 0.1) -> float:
    """The lr multiplier after `step` optimiser steps: linear warm-up over `warmup_steps`, then constant, or
    cosine from 1 down to `min_ratio` at `total_steps` (and `min_ratio` after it).

    Why a decay: at a constant lr high enough to learn fast (5e-4 on the CPU default) the tiny policy learned
    fastest and then lost the answer format in six steps. Measured (docs/experiments.md): cosine from 5e-4
    stayed stable but ended below a constant 3e-4, so the default stays constant, as in the paper.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"algorithm.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
