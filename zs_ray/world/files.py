"""The synthetic world on disk: the Search-R1 parquet files, the corpus, the prior's texts, and the
tokenizer and tiny models trained or created from them (the world itself: zs_ray/world/world.py). No Ray here."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Mapping, Optional

from zs_ray.core.protocol import make_prompt
from zs_ray.world.world import (ABILITY, NAME_SYLLABLES, SOURCE_1HOP, SOURCE_2HOP, VALUE_SYLLABLES, WORDS, Question,
                                World, WorldParams, make_world, write_rows_jsonl)

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def searchr1_rows(questions: list[Question]) -> list[dict]:
    """Rows in the exact Search-R1 parquet layout (field order as in its released nq parquet)."""
    return [{
        "id": q.id, "question": q.question, "golden_answers": list(q.answers), "data_source": q.data_source,
        "prompt": [{"content": make_prompt(q.question), "role": "user"}], "ability": ABILITY,
        "reward_model": {"ground_truth": {"target": list(q.answers)}, "style": "rule"},
        "extra_info": {"index": i, "split": q.split},
    } for i, q in enumerate(questions)]


def _searchr1_schema():
    import pyarrow as pa

    s = pa.string()
    return pa.schema([
        ("id", s), ("question", s), ("golden_answers", pa.list_(s)), ("data_source", s),
        ("prompt", pa.list_(pa.struct([("content", s), ("role", s)]))), ("ability", s),
        ("reward_model", pa.struct([("ground_truth", pa.struct([("target", pa.list_(s))])), ("style", s)])),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", s)])),
    ])


def write_parquet(path: str, questions: list[Question]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(searchr1_rows(questions), schema=_searchr1_schema()), path)


def _params_from(cfg_or_kwargs) -> tuple[Optional[str], WorldParams]:
    """Accept a mapping (dict / OmegaConf node) or keyword args; unknown keys are an error."""
    d = dict(cfg_or_kwargs)
    out_dir = d.pop("out_dir", None)
    known = {f.name for f in dataclasses.fields(WorldParams)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown world parameters {sorted(unknown)}; known: {sorted(known) + ['out_dir']}")
    return out_dir, WorldParams(**d)


def build_world(out_dir=None, **kwargs) -> dict[str, str]:
    """Write the world to `out_dir`: corpus.jsonl, train/test.parquet, warmstart.jsonl, pretrain.txt,
    questions.jsonl, entities.jsonl, world.json. Returns {name: path}.

    `build_world("dir", seed=0, n_entities=...)` or `build_world({"out_dir": "dir", "seed": 0, ...})`.
    """
    if dataclasses.is_dataclass(out_dir):  # a WorldParams (or a config dataclass with these fields)
        out_dir = dataclasses.asdict(out_dir)
    if isinstance(out_dir, Mapping):  # a dict or an OmegaConf node
        out_dir, p = _params_from({**dict(out_dir), **kwargs})
    else:
        _, p = _params_from(kwargs)
    if not out_dir:
        raise ValueError("build_world needs out_dir")
    from zs_ray.world.prior_texts import PRETRAIN_SEPARATOR, pretrain_texts, warmstart_demos
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    world = make_world(p)
    paths = world_file_paths(out_dir)

    write_rows_jsonl(paths["corpus"], world.passages)
    write_parquet(paths["train"], world.split("train"))
    write_parquet(paths["test"], world.split("test"))
    write_rows_jsonl(paths["questions"], (dataclasses.asdict(q) for q in world.questions))
    write_rows_jsonl(paths["entities"], (dataclasses.asdict(e) for e in world.entities))
    demos = warmstart_demos(world, "train", with_segments=True)
    write_rows_jsonl(paths["warmstart"], ({
        "id": q.id, "question": q.question, "golden_answers": q.answers, "data_source": q.data_source,
        "prompt": prompt, "response": "".join(t for t, _ in segs), "n_searches": len(q.hops)}
        for q, prompt, segs in demos))
    with open(paths["pretrain"], "w", encoding="utf-8") as f:
        f.write(PRETRAIN_SEPARATOR.join(pretrain_texts(p.n_pretrain, p.seed, p.topk)))
    with open(paths["summary"], "w") as f:
        json.dump(world_summary(world), f, indent=1)
    return paths


def world_file_paths(out_dir: str) -> dict[str, str]:
    """{name: path} of the files `build_world(out_dir)` writes."""
    return {k: os.path.join(out_dir, f) for k, f in [
        ("corpus", "corpus.jsonl"), ("train", "train.parquet"), ("test", "test.parquet"),
        ("warmstart", "warmstart.jsonl"), ("pretrain", "pretrain.txt"), ("questions", "questions.jsonl"),
        ("entities", "entities.jsonl"), ("summary", "world.json")]}


def world_summary(world: World) -> dict:
    def count(split, src=None):
        return sum(1 for q in world.split(split) if src is None or q.data_source == src)

    return {
        "params": dataclasses.asdict(world.params),
        "n_entities": len(world.entities),
        "n_question_entities": {s: sum(1 for e in world.entities if e.pool == s and e.role == "question")
                                for s in ("train", "test")},
        "n_distractor_entities": sum(1 for e in world.entities if e.role == "distractor"),
        "n_passages": len(world.passages), "n_facts": len(world.facts),
        "n_questions": {s: {"total": count(s), SOURCE_1HOP: count(s, SOURCE_1HOP), SOURCE_2HOP: count(s, SOURCE_2HOP)}
                        for s in ("train", "test")},
        "name_syllables": NAME_SYLLABLES, "value_syllables": VALUE_SYLLABLES,
        "corpus_sha256": hashlib.sha256("".join(json.dumps(p) for p in world.passages).encode()).hexdigest(),
    }


def load_world(out_dir: str) -> World:
    """The World behind a built directory (regenerated from the parameters in world.json)."""
    with open(os.path.join(out_dir, "world.json")) as f:
        return make_world(WorldParams(**json.load(f)["params"]))


# ---------------------------------------------------------------------------------------------
# Tokenizer and tiny models
# ---------------------------------------------------------------------------------------------

def tokenizer_texts(world: World, topk: Optional[int] = None) -> list[str]:
    """Corpus, prompts and demonstrations: what the world's tokenizer must encode compactly."""
    from zs_ray.world.prior_texts import warmstart_demos

    # The whole syllable inventory and the digits, so each is one token even in a small world.
    texts = [" ".join(WORDS)] * 20
    texts += [p["contents"] for p in world.passages]
    texts += [q.question for q in world.questions]  # the prompt template itself is in protocol_texts()
    texts += [r for _, r in warmstart_demos(world, "train", topk=topk)]
    return texts


def token_stats(tokenizer, world: World, n: int = 200) -> dict:
    """Tokens of a typical chat-templated prompt and of 1-hop / 2-hop demonstrations."""
    from zs_ray.world.prior_texts import warmstart_demos

    demos = warmstart_demos(world, "train", with_segments=True)[:n]
    stats: dict = {}
    for src in (SOURCE_1HOP, SOURCE_2HOP):
        sel = [(q, p, s) for q, p, s in demos if q.data_source == src]
        if not sel:
            continue
        p_len = [len(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                                   add_generation_prompt=True, return_dict=False)) for _, p, _ in sel]
        r_len = [len(tokenizer("".join(t for t, _ in s))["input_ids"]) for _, _, s in sel]
        stats[src] = {"prompt_tokens_mean": sum(p_len) / len(p_len), "response_tokens_mean": sum(r_len) / len(r_len),
                      "total_tokens_max": max(a + b for a, b in zip(p_len, r_len))}
    stats["multi_token_syllables"] = [w for w in WORDS if len(tokenizer(" " + w)["input_ids"]) != 1]
    return stats


def asset_paths(out_dir: str) -> dict[str, str]:
    """Where `build_world_assets(out_dir)` puts the world folder, the tokenizer and the tiny models; the world's
    own files are `world_file_paths(asset_paths(out_dir)["world"])`."""
    return {k: os.path.join(out_dir, k) for k in ("world", "tokenizer", "policy", "simulator")}


def build_world_assets(out_dir: str, seed: int = 0, vocab_size: int = 1000, policy_arch: str = "llama",
                       simulator_arch: str = "qwen2", policy_size: str = "policy", **world_kwargs) -> dict[str, str]:
    """The world files plus a tokenizer trained on them and the tiny policy and simulator models."""
    from transformers import AutoTokenizer

    from zs_ray.world.tiny_models import make_tiny_model, train_tokenizer

    where = asset_paths(out_dir)
    paths = build_world(where["world"], seed=seed, **world_kwargs)
    world = load_world(where["world"])
    tok_dir = where["tokenizer"]
    train_tokenizer(tokenizer_texts(world), tok_dir, vocab_size=vocab_size)
    paths["tokenizer"] = tok_dir
    paths["policy"] = make_tiny_model(tok_dir, where["policy"], size=policy_size, arch=policy_arch, seed=seed)
    paths["simulator"] = make_tiny_model(tok_dir, where["simulator"], size="simulator", arch=simulator_arch,
                                         seed=seed + 1)
    stats = token_stats(AutoTokenizer.from_pretrained(tok_dir), world)
    paths["token_stats"] = os.path.join(out_dir, "token_stats.json")
    with open(paths["token_stats"], "w") as f:
        json.dump(stats, f, indent=1)
    return paths
