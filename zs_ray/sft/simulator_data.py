"""The simulator's SFT set (steps 1 and 2 of zs_ray/sft/simulator_sft.py): (query, documents) pairs from real
search, labelled useful or noisy, balanced, useful targets leading with the answer. No Ray, no torch.
"""
from __future__ import annotations

import json
import os
import random
import re
from typing import Callable, Iterable, Sequence

from zs_ray.core.protocol import render_documents
from zs_ray.core.reward import normalize_answer
from zs_ray.data.qa import golds_of

USEFUL, NOISY = "useful", "noisy"
Labeller = Callable[[str, Sequence[str], Sequence[str]], str]  # (question, golds, docs) -> label


# ---------------------------------------------------------------- labelling ----------------------

def contains_answer(text: str, golds: Sequence[str]) -> bool:
    """Normalised gold answer appears in the normalised text, on word boundaries."""
    norm = f" {normalize_answer(text)} "
    return any(g and f" {g} " in norm for g in (normalize_answer(x) for x in golds))


def states_answer(docs: Sequence[str], query: str, golds: Sequence[str]) -> bool:
    """One sentence holds a gold answer AND every content word of the query: the answer stated about what
    was asked. `contains_answer` alone passes "za pi: ga pi birthplace is X" for "za pi birthplace" (the
    2-layer simulator garbles names and values; BENCHMARKS, docs/experiments.md: 96 % contain, ~58 % state). A question
    asked whole about a chain (two hops) has no such sentence: read it on one-hop queries."""
    need = set(normalize_answer(query).split()) - _STOP
    bodies = [d.split(": ", 1)[1] if ": " in d else d for d in docs]  # the "Title: " names no fact
    return any(contains_answer(s, golds) and need <= set(normalize_answer(s).split())
               for b in bodies for s in _SENTENCE_END.split(b))


def answer_in_docs_label(question: str, golds: Sequence[str], docs: Sequence[str]) -> str:
    return USEFUL if contains_answer(" ".join(docs), golds) else NOISY


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lead_with_answer(docs: Sequence[str], golds: Sequence[str]) -> list[str]:
    """Documents that contain a gold answer first and, inside each, the sentence holding it first (a
    "Title: " prefix stays in front); everything else keeps its order. Why: with the answer at a varying
    place the 2-layer CPU simulator memorised facts instead of copying the prompt's answer (useful
    documents containing it after 400 SFT steps: 4 % as retrieved, 26 % answer-first; after 1,500: 82 % of
    one-hop questions)."""
    def lead(doc: str) -> str:
        title, sep, body = doc.partition(": ")
        if not sep:
            title, body = "", doc
        sentences = [x for x in _SENTENCE_END.split(body.strip()) if x]
        sentences.sort(key=lambda x: not contains_answer(x, golds))  # stable: the rest keep their order
        return f"{title}{sep}{' '.join(sentences)}"
    has = [contains_answer(d, golds) for d in docs]
    return [lead(d) for d, h in zip(docs, has) if h] + [d for d, h in zip(docs, has) if not h]


def judge_labeller(generate: Callable[[str], str]) -> Labeller:
    """An LLM-judge labeller (the paper's choice): `generate(prompt) -> text`, 'yes' means useful."""
    def label(question, golds, docs):
        prompt = (f"Question: {question}\nDocuments:\n{render_documents(list(docs))}\n"
                  "Do these documents contain enough information to answer the question? Answer yes or no.")
        return USEFUL if generate(prompt).strip().lower().startswith("yes") else NOISY
    return label


# ---------------------------------------------------------------- pairs ---------------------------

def pairs_from_trajectories(trajectories: Iterable[dict]) -> list[dict]:
    """Split trajectories ({question, golden_answers, search_calls: [{query, docs}]}) into pairs."""
    out = []
    for t in trajectories:
        golds = golds_of(t)
        for call in t.get("search_calls") or []:
            docs = [d for d in (call.get("docs") or []) if str(d).strip()]
            if docs:  # an empty result teaches nothing
                out.append(dict(query=str(call["query"]), question=str(t["question"]), golden_answers=golds,
                                docs=[str(d) for d in docs], source="trajectory"))
    return out


_STOP = set("a an the of in on at to is was who what which when where how why did does do by for from "
            "and or with as that this it its be are were".split())


def default_queries(question: str, rng: random.Random) -> list[str]:
    """Queries a policy might write: the question, its content words in the question's order and with the
    first moved last (the subject first: "ze vo year" for "what is the year of ze vo?", the form the
    warm-started policy writes), and a partial keyword query. Without the subject-first form the simulator
    met that query out of distribution and stated the asked fact in 58 % of its useful results, against
    94 % for the question (docs/experiments.md, 2026-12-02)."""
    q = question.strip()
    words = [w for w in re.findall(r"\w+", q) if w.lower() not in _STOP]
    out = [q]
    if words:
        out.append(" ".join(words))
    if len(words) > 1:
        out.append(" ".join(words[1:] + words[:1]))
        out.append(" ".join(sorted(rng.sample(words, max(1, len(words) // 2)), key=words.index)))
    return list(dict.fromkeys(out))


def passages_stating(index, answers: Iterable[str]) -> dict[str, list[int]]:
    """Normalised answer -> indices of the passages that state it (word-boundary match, as `contains_answer`),
    in one pass over the corpus's word n-grams. Unlike a BM25 search for the answer this finds answers made
    of tokens BM25 drops (bm25s ignores one-character tokens, so a year written "1 8 2 1" is invisible to it)."""
    wanted = {normalize_answer(a) for a in answers} - {""}
    longest = max((len(a.split()) for a in wanted), default=0)
    out: dict[str, list[int]] = {}
    for i in range(len(index)):
        words = normalize_answer(index.passage(i)).split()
        found = {" ".join(words[j:j + n]) for n in range(1, longest + 1) for j in range(len(words) - n + 1)}
        for a in found & wanted:
            out.setdefault(a, []).append(i)
    return out


def targets_of(row: dict) -> list[str]:
    """What answers a pair's query: its `targets` (set by `hop_aware`: the next hop's entity), else the gold answers."""
    return list(row.get("targets") or row["golden_answers"])


def hop_queries(row: dict) -> list[tuple[str, list[str]]]:
    """(query, what answers it) per hop of a multi-hop row with `hops` [[entity, attribute], ...] (the
    world's questions.jsonl): hop i asks "entity attribute" and is answered by the next hop's entity, the
    last hop by the gold answers. [] for rows with fewer than two hops."""
    hops = row.get("hops") or []
    if len(hops) < 2:
        return []
    return [(f"{entity} {attr}", [str(hops[i + 1][0])] if i + 1 < len(hops) else golds_of(row))
            for i, (entity, attr) in enumerate(hops)]


def pairs_from_corpus(index, questions: Sequence[dict], topk: int = 5, depth: int = 4,
                      query_fn: Callable = default_queries, seed: int = 0, answer_aware: bool = True,
                      hop_aware: bool = False) -> list[dict]:
    """BM25 pairs for each question's queries: the top-k as returned, plus the best k hits that do NOT
    mention a gold answer (related but unhelpful: the kind of results a noisy engine gives).
    `answer_aware`: one more pair per question, shown as the result of the question itself: the passages
    that state a gold answer, best BM25 score for the question first, then the question's other hits:
    what an engine that knows the answer would return. Why: no passage retrieved for a multi-hop question
    states its answer, so without these the simulator never saw a useful result for one (two-hop useful
    documents contained the answer 0 % of the time; a top-50 BM25 search for "question + answer" found an
    answer-bearing passage for 69 % of them, none with a year for an answer). Corpora over
    ANSWER_SCAN_LIMIT passages fall back to that search (`_answer_search_pairs`).
    `hop_aware`: rows with `hops` are labelled per query, by what answers the hop it asks: the hop queries
    themselves ("entity attribute", `hop_queries`) are added, and a question-derived query counts as the
    first hop (what real search returns for it); such rows get no answer-aware pair. Why: with answer-aware
    pairs the simulator put the final answer into 90 % of whole-question results and the bridge entity into
    0 % of first-hop results, so on it one search was enough and the policy stopped chaining (docs/experiments.md)."""
    rng = random.Random(seed)
    jobs, single = [], []  # (row, query, what makes its documents useful); rows without hops
    for row in questions:
        hops = hop_queries(row) if hop_aware else []
        if not hops:
            single.append(row)
        asks = hops[0][1] if hops else golds_of(row)
        jobs += [(row, q, asks) for q in query_fn(str(row["question"]), rng)] + [(row, q, a) for q, a in hops]
    hits = index.search([q for _, q, _ in jobs], topk * depth) if jobs else []
    out = []
    for (row, q, asks), docs in zip(jobs, hits):
        base = dict(query=q, question=str(row["question"]), golden_answers=golds_of(row), targets=asks,
                    source="bm25")
        if docs[:topk]:
            out.append({**base, "docs": docs[:topk]})
        unhelpful = [d for d in docs if not contains_answer(d, asks)][:topk]
        if unhelpful and unhelpful != docs[:topk]:
            out.append({**base, "docs": unhelpful, "source": "bm25_filtered"})
    if answer_aware and single:
        out += (_stated_answer_pairs(index, single, topk) if len(index) <= ANSWER_SCAN_LIMIT
                else _answer_search_pairs(index, single, topk))
    return out


ANSWER_SCAN_LIMIT = 200_000  # passages: above it `passages_stating` (a pure-Python pass) would take hours


def _answer_pair(question: str, golds: list, answered: list, others: list, topk: int) -> dict:
    return dict(query=question, question=question, golden_answers=golds, source="bm25_answer_aware",
                docs=(answered + [d for d in others if d not in answered])[:topk])


def _stated_answer_pairs(index, questions: Sequence[dict], topk: int) -> list[dict]:
    """Every passage that states the answer, best BM25 score for the question first, then its own hits."""
    stating, out = passages_stating(index, (g for row in questions for g in golds_of(row))), []
    own_hits = index.search([str(row["question"]) for row in questions], topk)  # one batched search
    for row, own in zip(questions, own_hits):
        question, golds = str(row["question"]), golds_of(row)
        holders = sorted({i for g in golds for i in stating.get(normalize_answer(g), ())})
        if holders:
            scores = index.scores(question)
            answered = [index.passage(i) for i in sorted(holders, key=lambda i: -scores[i])[:topk]]
            out.append(_answer_pair(question, golds, answered, own, topk))
    return out


def _answer_search_pairs(index, questions: Sequence[dict], topk: int, depth: int = 50) -> list[dict]:
    """Large corpora: the answer-stating hits among the top `depth` of a BM25 search for "question answer"
    (misses answers BM25 cannot match, e.g. a year written digit by digit)."""
    queries = [f"{row['question']} {golds_of(row)[0]}" for row in questions]
    out = []
    for row, docs in zip(questions, index.search(queries, max(depth, topk))):
        golds = golds_of(row)
        answered = [d for d in docs if contains_answer(d, golds)][:topk]
        if answered:
            out.append(_answer_pair(str(row["question"]), golds, answered, docs, topk))
    return out


def label_and_balance(pairs: Sequence[dict], labeller: Labeller = answer_in_docs_label,
                      seed: int = 0, answer_first: bool = True) -> list[dict]:
    """Label each pair and down-sample the larger class so useful and noisy are equally many;
    `answer_first`: useful pairs' documents go through `lead_with_answer`. A pair's `targets` (what answers
    its query; the gold answers unless set, as by `hop_aware`) decide usefulness."""
    by = {USEFUL: [], NOISY: []}
    for p in pairs:
        targets = targets_of(p)
        lab = labeller(p["question"], targets, p["docs"])
        if lab not in by:
            raise ValueError(f"labeller returned {lab!r}; expected {USEFUL!r} or {NOISY!r}")
        docs = lead_with_answer(p["docs"], targets) if answer_first and lab == USEFUL else p["docs"]
        by[lab].append({**p, "targets": targets, "docs": list(docs), "label": lab})
    n = min(len(by[USEFUL]), len(by[NOISY]))
    if n == 0:
        raise ValueError(f"cannot balance the SFT set: {len(by[USEFUL])} useful and {len(by[NOISY])} "
                         "noisy pairs (one class is empty)")
    rng = random.Random(seed)
    rows = rng.sample(by[USEFUL], n) + rng.sample(by[NOISY], n)
    rng.shuffle(rows)
    return rows


def write_sft_set(rows: Sequence[dict], path: str) -> str:
    """Save as parquet through `datasets` (loads back with datasets.load_dataset('parquet'))."""
    import datasets

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    datasets.Dataset.from_list([dict(r) for r in rows]).to_parquet(path)
    return path


def load_rows(paths: Sequence[str]) -> list[dict]:
    """Rows of parquet / jsonl files (Search-R1 train parquet, trajectories jsonl)."""
    rows: list[dict] = []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"simulator SFT input not found: {p}")
        if p.endswith(".parquet"):
            import pyarrow.parquet as pq
            rows.extend(pq.read_table(p).to_pylist())
        else:
            with open(p) as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def split_questions(questions: Sequence[dict], heldout_frac: float, seed: int = 0) -> tuple[list, list]:
    rows = list(questions)
    random.Random(seed).shuffle(rows)
    n_held = max(1, int(round(len(rows) * heldout_frac))) if heldout_frac > 0 else 0
    return rows[n_held:], rows[:n_held]
