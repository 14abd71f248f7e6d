"""A training step's metrics: rewards, rollout shape, search calls, staleness, timings, the policy's loss stats."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepTimes:
    """Seconds of one step's phases: generation (since the rollouts' launch); reward (staleness filter and
    reward groups); update (collate, log-probs, advantages, the policy and critic updates); weight sync."""
    generation: float = 0.0
    reward: float = 0.0
    update: float = 0.0
    sync: float = 0.0


def step_metrics(trajs: list[dict], stats: dict, stale_hist: dict, times: StepTimes, *, noise_p: float,
                 rollout_restarts: int, policy_version: int) -> dict:
    """`trajs`: the step's fresh trajectories; `stats`: the policy (and critic) update's; `stale_hist`: how many
    trajectories were generated how many versions ago."""
    n = max(len(trajs), 1)
    gen_tokens = float(sum(sum(t["loss_mask"]) if t.get("loss_mask") is not None else len(t["response_ids"])
                           for t in trajs))
    m = {
        "reward/mean": sum(t["reward"] for t in trajs) / n,
        **{f"reward/{k}": sum(t["metrics"][k] for t in trajs) / n for k in ("em", "cover_em", "f1")},
        "rollout/searches": sum(t["searches"] for t in trajs) / n,
        "rollout/invalid_rate": sum(t["invalid_actions"] > 0 for t in trajs) / n,
        "rollout/response_tokens": gen_tokens / n,
        "rollout/answered": sum(t["answer"] is not None for t in trajs) / n,
        "rollout/trajectories": len(trajs),
        "curriculum/noise_p": noise_p,
        **search_call_metrics(trajs),
        "faults/rollout_restarts": rollout_restarts,
        "time/generation": times.generation, "time/search": sum(t.get("search_s", 0.0) for t in trajs) / n,
        "time/reward": times.reward, "time/update": times.update, "time/sync": times.sync,
        "throughput/gen_tokens_per_s": gen_tokens / max(times.generation, 1e-9),
        "policy/version": policy_version,
    }
    stats = dict(stats)
    if "logprob_gap" in stats:  # the trained tokens' |log pi_behav - log pi_prox|, from the policy's loss
        m["rollout/logprob_gap"] = float(stats.pop("logprob_gap"))
    for k, v in stale_hist.items():
        m[f"staleness/{k}"] = v
    m.update({f"actor/{k}": float(v) for k, v in stats.items()})
    return m


def search_call_metrics(trajs: list[dict]) -> dict:
    """Fractions of the search calls that were noisy, failed (no-information text) or fell back to real search."""
    calls = [c for t in trajs for c in t.get("search_calls", [])]
    n = max(len(calls), 1)
    return {f"search/{k}_fraction": sum(bool(c.get(k)) for c in calls) / n for k in ("noisy", "failed", "fallback", "shared")}


def samples_text(tokenizer, trajs: list[dict]) -> str:
    """A few trajectories as text (logged every trainer.sample_every steps)."""
    out = []
    for t in trajs:
        text = tokenizer.decode(t["response_ids"], skip_special_tokens=False)
        out.append(f"=== {t['prompt_id']} #{t['sample_index']} v{t['policy_version']} reward={t['reward']:.3f} "
                   f"gold={t['golden_answers']}\nQ: {t['question']}\n{text}\n")
    return "\n".join(out)
