"""The text of the policy's prior: warm-start demonstrations, copy drills
on throwaway worlds, and the two copy tasks that come before the drills.

Why the copy tasks (measured, docs/experiments.md): a tiny model trained from scratch on drills
alone never learns to copy a value out of the documents within minutes. Content-addressed copying comes
in two steps that each have a clean training signal of their own:
1. `induction_sequence`: a sequence of *distinct* tokens, then the same sequence again (loss on the
   repeat). With no repeated token the previous occurrence is unambiguous, and an induction head forms
   in ~700 steps of 32 (2 layers); with repeats allowed (the obvious version) it took ~7,000.
2. `fact_recall`: documents, then their fact sentences in a *shuffled* order with the loss on
   the values: a lookup keyed by entity and attribute among look-alikes, which an in-order repeat of the
   documents does not teach (a fixed-offset copy solves that one).
No Ray here.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from typing import Iterator, Optional

from zs_ray.core.protocol import make_prompt, observation_text, render_documents
from zs_ray.world.world import (NAME_SET, NAME_VALUED, Question, World, WorldParams, doc_text, fact_sentence,
                                make_world, search_query, write_rows_jsonl)


def demonstration_turns(q: Question, docs_per_hop: list[list[str]]) -> list[tuple[str, bool]]:
    """(text, from_environment) segments of the response: policy turns and information blocks.

    The last think repeats the fact sentence and the answer copies its value from there: copying a
    whole sentence out of a document is what a tiny model trained from scratch can learn.
    """
    (name, attr0), value = q.hops[0], q.answers[0]
    segs: list[tuple[str, bool]] = []
    if len(q.hops) == 1:
        segs.append((f"<think> i need the {attr0} of {name} . </think> <search> {search_query(name, attr0)} </search>",
                     False))
        segs.append((observation_text(render_documents(docs_per_hop[0])), True))
    else:
        bridge, attr = q.hops[1]
        segs.append((f"<think> i need the {attr0} of {name} first . </think> "
                     f"<search> {search_query(name, attr0)} </search>", False))
        segs.append((observation_text(render_documents(docs_per_hop[0])), True))
        segs.append((f"<think> {fact_sentence(name, attr0, bridge)} now i need the {attr} of {bridge} . </think> "
                     f"<search> {search_query(bridge, attr)} </search>", False))
        segs.append((observation_text(render_documents(docs_per_hop[1])), True))
        name, attr0 = bridge, attr
    segs.append((f"<think> {fact_sentence(name, attr0, value)} </think> <answer> {value} </answer>", False))
    return segs


def _retrieve_bm25(world: World, queries: list[str], topk: int) -> list[list[tuple[str, str]]]:
    """Real BM25 (zs_ray.search.retrieval, the evaluation backend) over the world's corpus: (id, text) hits."""
    from zs_ray.search.retrieval import BM25Index

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.jsonl")
        write_rows_jsonl(path, world.passages)
        index = BM25Index.build(path)
    return [[(h.id, h.text) for h in hits] for hits in index.search_with_ids(queries, topk)]


def _with_gold(hits: list[tuple[str, str]], gold_id: str, gold_text: str, topk: int) -> list[str]:
    """The top-k texts, the gold passage put in place of the last one if BM25 missed it (rare)."""
    if gold_id not in [i for i, _ in hits]:
        hits = hits[: topk - 1] + [(gold_id, gold_text)]
    return [t for _, t in hits]


def warmstart_demos(world: World, split: str = "train", topk: Optional[int] = None,
                    with_segments: bool = False) -> list:
    """Clean demonstrations for the warm start: (prompt_text, response_text) per question of `split`.

    The documents are the real BM25 top-k of each query (the evaluation backend, in its order), with
    the gold passage guaranteed in. `with_segments=True` returns (question, prompt, segments) instead,
    segments being (text, from_environment) so callers can mask the information blocks.
    """
    topk = topk or world.params.topk
    qs = world.split(split)
    queries = [search_query(n, a) for q in qs for n, a in q.hops]
    hits = iter(_retrieve_bm25(world, queries, topk))
    out = []
    for q in qs:
        docs = [_with_gold(next(hits), pid, doc_text(world.passage(pid)), topk) for pid in q.gold_passage_ids]
        segs = demonstration_turns(q, docs)
        prompt = make_prompt(q.question)
        out.append((q, prompt, segs) if with_segments else (prompt, "".join(t for t, _ in segs)))
    return out


# ---------------------------------------------------------------------------------------------
# Pre-training text: copy drills on throwaway worlds
# ---------------------------------------------------------------------------------------------

def _syllable_index(world: World) -> dict[str, list[dict]]:
    """Name syllable -> passages whose text contains it (for look-alike documents)."""
    index: dict[str, list[dict]] = {}
    for p in world.passages:
        for s in sorted(set(p["contents"].split()) & NAME_SET):
            index.setdefault(s, []).append(p)
    return index


def _title(passage: dict) -> str:
    """The entity name a passage is about (its quoted first line, as `passage_contents` writes it)."""
    return passage["contents"].partition("\n")[0].strip('"')


def _lookalike_passages(rng: random.Random, world: World, index: dict, gold_id: str, topk: int) -> list[dict]:
    """Gold passage plus look-alike passages (sharing a name syllable), shuffled: BM25-like results."""
    gold = world.passage(gold_id)
    near = {p["id"]: p for s in _title(gold).split() for p in index.get(s, [])}
    near.pop(gold_id, None)
    rows = rng.sample(sorted(near.values(), key=lambda p: int(p["id"])), min(topk - 1, len(near))) + [gold]
    rng.shuffle(rows)
    return rows


def recall_questions(rng: random.Random, world: World, rows: list[dict], n: int) -> str:
    """Up to `n` more questions about facts *shown* in `rows`, each answered by copying its sentence.

    Drills are dense in copy events this way: one trajectory's documents serve several lookups, and
    every lookup is keyed by entity *and* attribute among look-alikes (the skill the policy lacks).
    """
    names = dict.fromkeys(_title(p) for p in rows)  # ordered, each entity once
    facts = [(name, a, v) for name in names for a, v in world.entity(name).facts.items() if a not in NAME_VALUED]
    picks = rng.sample(facts, min(n, len(facts)))
    return "".join(f"\nQuestion: what is the {a} of {name}?\n<think> {fact_sentence(name, a, v)} </think> "
                   f"<answer> {v} </answer>" for name, a, v in picks)


def pretrain_texts(n: int, seed: int = 0, topk: int = 3, params: WorldParams | None = None,
                   recall: int = 4) -> Iterator[str]:
    """`n` copy drills: "Question: ...\\n" + a full clean trajectory with look-alike documents, then
    `recall` more questions answered from the same documents.

    The drills come from *throwaway* worlds (other seeds, same syllables), never the real one, so
    pre-training teaches copying from context, not the real world's facts (a fact of the real world
    can recur in a drill only by chance, and then among look-alikes with other values).
    """
    base = params or WorldParams(n_entities=300, n_test_entities=0, n_pretrain=0)
    rng = random.Random(f"pretrain-{seed}")
    made, k = 0, 0
    while made < n:
        w = make_world(base, seed=10_000_019 * (seed + 1) + k)
        k += 1
        index = _syllable_index(w)
        for q in w.split("train"):
            if made >= n:
                break
            shown = [_lookalike_passages(rng, w, index, pid, topk) for pid in q.gold_passage_ids]
            turns = demonstration_turns(q, [[doc_text(p) for p in rows] for rows in shown])
            yield (f"Question: {q.question}\n" + "".join(t for t, _ in turns)
                   + recall_questions(rng, w, [p for rows in shown for p in rows], recall))
            made += 1


PRETRAIN_SEPARATOR = "\n<|endoftext|>\n"  # GPT-2 style document separator (a special token of ours)


# ---------------------------------------------------------------------------------------------
# Copy tasks that come before the drills (see the module docstring for why)
# ---------------------------------------------------------------------------------------------

Segments = list[tuple[str, bool]]  # (text, learn it): tokenized piece by piece (zs_ray.sft.sft.encode_segments)


def induction_sequence(rng: random.Random, vocabulary: list[str], min_len: int = 8, max_len: int = 20,
                       max_prefix: int = 8) -> Segments:
    """A random prefix and a sequence of *distinct* words, " ;", the sequence again (learned).

    Every word occurs once before the repeat, so "the word after the earlier copy of the current word"
    is always right: the clean signal an induction head forms on.
    """
    k = rng.randint(min_len, max_len)
    words = rng.sample(vocabulary, k + max_prefix)
    seq, prefix = words[:k], words[k:k + rng.randint(0, max_prefix)]
    return [(" " + " ".join(prefix + seq) + " ;", False), (" " + " ".join(seq), True)]


_FACT_RE = re.compile(r"(\S+ \S+ \S+ is) ([^.]+ \.)")  # "NAME1 NAME2 ATTR is" "V1 V2 ." (fact_sentence)


def fact_recall(rng: random.Random, drill: str) -> list[Segments]:
    """Per `<information>` block of a drill: the documents, " ;", then their fact sentences in a
    shuffled order with only the values learned: a lookup keyed by entity and attribute."""
    out = []
    for block in re.findall(r"<information>(.*?)</information>", drill, re.S):
        facts = _FACT_RE.findall(block)
        rng.shuffle(facts)
        segs: Segments = [(" " + block.strip() + " ;", False)]
        for key, value in facts:
            segs += [(" " + key, False), (" " + value, True)]
        out.append(segs)
    return out
