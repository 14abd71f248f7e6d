"""The multi-turn search protocol (docs/method.md): one coroutine per trajectory, token in / token out.

Each turn the policy generates until `</search>` or `</answer>`; its sampled tokens are appended
as they are (mask 1, with their log-probs). The action is parsed from the decoded text of *this
turn's sampled tokens only*, so tag-like text inside documents is never read as an action. A search
appends `<information>` tokens, an invalid action the feedback line (both mask 0, log-prob 0.0).
After `max_turns` search/invalid turns one last turn runs in which no search is executed.
No Ray here: the engine is anything with the `zs_ray.engines.engine` interface.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from typing import Optional

from zs_ray.config import RolloutConfig
from zs_ray.core.protocol import INVALID_FEEDBACK, STOP_STRINGS, make_prompt, observation_text, parse_action
from zs_ray.core.reward import score_answer, training_reward
from zs_ray.core.search import SearchBackend, SearchResult
from zs_ray.data.qa import golds_of, question_of


@dataclass(frozen=True)
class RolloutRequest:
    """What one rollout call asks of a rollout worker, for every row it is given."""
    n_samples: int  # trajectories per row (a GRPO group)
    step: int  # the training step: the curriculum's position and part of every sampling seed
    greedy: bool = False
    reward_kind: str = "f1"  # em | f1 (reward.training_reward)
    evaluation: bool = False  # held-out: the worker's real-search backend instead of the training one

    @classmethod
    def held_out(cls, step: int) -> "RolloutRequest":
        """One greedy sample per row, scored by EM, with real search."""
        return cls(n_samples=1, step=step, greedy=True, reward_kind="em", evaluation=True)


@dataclass
class Trajectory:
    prompt_id: str
    sample_index: int
    data_source: str
    question: str
    golden_answers: list[str]
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)  # 1 = sampled by the policy, 0 = environment
    rollout_logprobs: list[float] = field(default_factory=list)  # 0.0 on environment tokens
    policy_version: int = 0  # weights version when the trajectory started
    searches: int = 0
    invalid_actions: int = 0
    finish_reason: str = ""  # answer | max_turns | context_limit | error
    answer: Optional[str] = None
    reward: float = 0.0
    metrics: dict = field(default_factory=dict)  # em, cover_em, f1
    search_calls: list = field(default_factory=list)  # query, noisy, backend, fallback, failed, latency_s
    gen_s: float = 0.0
    search_s: float = 0.0
    n_turns: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def _append(self, ids: list[int], mask: int, logprobs: Optional[list[float]] = None):
        self.response_ids += ids
        self.loss_mask += [mask] * len(ids)
        self.rollout_logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


def as_rollout_config(cfg) -> RolloutConfig:
    """RolloutConfig from a dataclass, an OmegaConf node or a plain dict (what actors receive)."""
    if isinstance(cfg, RolloutConfig):
        return cfg
    names = {f.name for f in dataclasses.fields(RolloutConfig)}
    return RolloutConfig(**{k: cfg[k] for k in cfg.keys() if k in names}) if cfg is not None else RolloutConfig()


def encode_prompt(tokenizer, row: dict) -> list[int]:
    """Prompt token ids: the chat template when the tokenizer has one, else the raw user content."""
    prompt = row.get("prompt")
    messages = [dict(m) for m in prompt] if prompt is not None and len(prompt) else [
        {"role": "user", "content": make_prompt(question_of(row))}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = messages[0]["content"]
    return tokenizer.encode(text, add_special_tokens=False)


def _observation_ids(tok, docs_text: str, limit: int) -> list[int]:
    """`<information>` block tokens, at most `limit`: the documents are cut, the closing tag kept."""
    ids = tok.encode(observation_text(docs_text), add_special_tokens=False)
    if len(ids) <= limit:
        return ids
    head, tail = observation_text(docs_text).split(docs_text.strip(), 1) if docs_text.strip() else ("", "")
    head_ids, tail_ids = tok.encode(head, add_special_tokens=False), tok.encode(tail, add_special_tokens=False)
    room = limit - len(head_ids) - len(tail_ids)
    if room < 0:
        return []
    return head_ids + tok.encode(docs_text.strip(), add_special_tokens=False)[:room] + tail_ids


def _turn_seed(seed: Optional[int], turn: int) -> Optional[int]:
    return None if seed is None else (seed * 1_000_003 + turn) % (2 ** 31)


async def _search(search: SearchBackend, query, question, golds, step, call_key) -> SearchResult:
    """A backend failure is a failed search with the no-information text, never a crashed trajectory."""
    t = time.perf_counter()
    try:
        return await search.search(query, question, golds, step, call_key=call_key)
    except Exception as e:
        return SearchResult(docs=[], backend=getattr(search, "name", "?"), failed=True,
                            latency_s=time.perf_counter() - t, meta={"error": repr(e)[:300]})


async def run_trajectory(engine, search: SearchBackend, row: dict, *, sample_index: int, rollout_cfg,
                         step: int, greedy: bool = False, reward_kind: str = "f1", seed: Optional[int] = None,
                         max_query_chars: int = 512) -> Trajectory:
    cfg, tok = as_rollout_config(rollout_cfg), engine.tokenizer
    question, golds = question_of(row), golds_of(row)
    traj = Trajectory(prompt_id=str(row.get("prompt_id", "")), sample_index=sample_index,
                      data_source=str(row.get("data_source", "")), question=question, golden_answers=golds,
                      prompt_ids=encode_prompt(tok, row), policy_version=engine.version)
    temperature, top_p = (0.0, 1.0) if greedy else (cfg.temperature, cfg.top_p)
    used = 0  # search or invalid turns so far
    while True:
        budget = cfg.max_context_tokens - len(traj.prompt_ids) - len(traj.response_ids)
        if budget <= 0:
            traj.finish_reason = "context_limit"
            break
        final = used >= cfg.max_turns  # the last turn: no search will be executed
        t = time.perf_counter()
        gen = await engine.generate(traj.prompt_ids + traj.response_ids, max_tokens=min(cfg.max_turn_tokens, budget),
                                    temperature=temperature, top_p=top_p, stop=STOP_STRINGS,
                                    seed=_turn_seed(seed, traj.n_turns))
        traj.gen_s += time.perf_counter() - t
        traj.n_turns += 1
        traj._append(gen.token_ids, 1, gen.logprobs)
        # Parse only what the policy sampled this turn (errors="replace" is the tokenizers' default).
        action = parse_action(tok.decode(gen.token_ids, skip_special_tokens=True), max_query_chars)
        if action.kind == "answer":
            traj.answer, traj.finish_reason = action.content, "answer"
            break
        if gen.finish_reason == "length" and budget <= cfg.max_turn_tokens:
            traj.finish_reason = "context_limit"  # cut by the context, not by the turn budget
            break
        if final:  # searched (or broke the protocol) when it had to answer: no search is executed
            traj.finish_reason = "max_turns"
            if action.kind == "invalid":
                traj.invalid_actions += 1
            break
        used += 1
        room = cfg.max_context_tokens - len(traj.prompt_ids) - len(traj.response_ids)
        if action.kind == "search":
            res = await _search(search, action.content, question, golds, step,
                                f"{traj.prompt_id}/{sample_index}/{traj.n_turns - 1}")
            traj.searches += 1
            traj.search_s += res.latency_s
            traj.search_calls.append({"query": action.content, "noisy": res.noisy, "backend": res.backend,
                                      "fallback": res.fallback, "failed": res.failed, "latency_s": res.latency_s,
                                      "shared": bool(res.meta.get("shared")),
                                      "truncated_query": action.truncated})
            obs = _observation_ids(tok, res.text, min(cfg.max_obs_tokens, room))
        else:
            traj.invalid_actions += 1
            obs = tok.encode(INVALID_FEEDBACK, add_special_tokens=False)
            obs = obs if len(obs) <= room else []
        if not obs:  # not even a well-formed observation fits in the context
            traj.finish_reason = "context_limit"
            break
        traj._append(obs, 0)
    traj.reward = training_reward(traj.answer, golds, reward_kind)
    traj.metrics = score_answer(traj.answer, golds)
    return traj


def trajectory_seed(base_seed: int, step: int, prompt_id: str, sample_index: int) -> int:
    """Stable per-trajectory seed (Python's hash() is salted per process)."""
    return zlib.crc32(f"{base_seed}/{step}/{prompt_id}/{sample_index}".encode()) & 0x7FFFFFFF


async def run_rollouts(engine, search: SearchBackend, rows: list[dict], n_samples: int, *, rollout_cfg,
                       step: int, greedy: bool = False, reward_kind: str = "f1", seed: Optional[int] = 0,
                       max_query_chars: int = 512, concurrency: Optional[int] = None) -> list[Trajectory]:
    """All `n_samples` trajectories of every row concurrently (the engine batches them), in row order.

    `seed=None` leaves sampling unseeded; greedy rollouts need one sample per row only.
    """
    sem = asyncio.Semaphore(concurrency or as_rollout_config(rollout_cfg).max_num_seqs)

    async def one(row, i):
        async with sem:
            s = None if seed is None else trajectory_seed(seed, step, str(row.get("prompt_id", "")), i)
            return await run_trajectory(engine, search, row, sample_index=i, rollout_cfg=rollout_cfg,
                                        step=step, greedy=greedy, reward_kind=reward_kind, seed=s,
                                        max_query_chars=max_query_chars)
    return list(await asyncio.gather(*[one(row, i) for row in rows for i in range(n_samples)]))
