"""Real question sets and passages -> the Search-R1 parquet, a passage corpus and its BM25 index.

`zs-ray data real --out DIR` (jobs/data.py) writes, from the shared data folder (SOURCES.md there):
  DIR/train.parquet, DIR/test.parquet   Search-R1 rows (data.flashrag_to_searchr1), `data_source`,
                                        `question`, `golden_answers` kept
  DIR/corpus.jsonl                      {id, contents="\"Title\"\ntext"}, deduplicated on contents
  DIR/bm25/                             retrieval.BM25Index of that corpus
  DIR/manifest.json                     inputs (sha256), seed, counts, BM25 recall@3 per test source

Split (Search-R1 trains on NQ+HotpotQA and tests on seven sources): every source gives a held-out
test set drawn by a seeded shuffle; the rest of a source whose passages are in the corpus and that is
not test-only becomes train. Questions are compared on `reward.normalize_answer` of their text:
duplicates within a source are dropped, and a train question equal to any test question is dropped,
so train and test are disjoint. Rows marked as train by their file (a `train.parquet` from
`zs-ray download zerosearch-dataset`, or `extra_info.split == "train"`) never go to test.

Pure Python: no Ray.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from typing import Optional, Sequence

from zs_ray.core.reward import normalize_answer
from zs_ray.data.qa import (DataError, Problems, flashrag_to_searchr1, golds_of, load_rows, question_of, read_jsonl,
                            write_searchr1_parquet)
from zs_ray.paths import project_root

SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
TEST_ONLY = ("bamboogle", "2wikimultihopqa", "musique")
# None = the whole source. Sources not named here (from a downloaded parquet) get DEFAULT_TEST_SIZE.
TEST_SIZES: dict[str, Optional[int]] = {"nq": 200, "triviaqa": 200, "popqa": 200, "hotpotqa": 200,
                                        "2wikimultihopqa": 200, "musique": 200, "bamboogle": None}
DEFAULT_TEST_SIZE = 200
RECALL_K = 3
ENV_VAR = "ZS_RAY_SHARED_DATA"

# The shared data layout: relative path -> (data_source, reader).
QUESTION_FILES = {
    "qa/flashrag_format/nq_test_sub1000.jsonl": ("nq", "flashrag"),
    "qa/flashrag_format/triviaqa_test_sub1000.jsonl": ("triviaqa", "flashrag"),
    "qa/flashrag_format/popqa_test_sub1000.jsonl": ("popqa", "flashrag"),
    "qa/flashrag_format/bamboogle_test.jsonl": ("bamboogle", "flashrag"),
    "qa/hotpotqa_distractor/hotpotqa_hard_dev300.jsonl": ("hotpotqa", "hotpotqa"),
    "qa/qa_pairs/2wikimultihopqa_dev.json": ("2wikimultihopqa", "qa_pairs"),
    "qa/qa_pairs/musique_dev.json": ("musique", "qa_pairs"),
}
PASSAGE_FILES = {
    "derived/wiki18_e5top3_pool_nq.jsonl": "nq",
    "derived/wiki18_e5top3_pool_triviaqa.jsonl": "triviaqa",
    "derived/wiki18_e5top3_pool_popqa.jsonl": "popqa",
    "derived/wiki18_e5top3_pool_bamboogle.jsonl": "bamboogle",
    "derived/hotpotqa_hard_dev300_paragraphs.jsonl": "hotpotqa",
}
# What `zs-ray download zerosearch-dataset DIR` puts in DIR (zs_ray/tools/hub.py: the hub repo's files).
DOWNLOAD_FILES = ("train.parquet", "test.parquet")


@dataclass
class Question:
    source: str
    id: str
    question: str
    golds: list[str]
    file: str
    row: int
    train_only: bool = False


def question_key(text: str) -> str:
    """The text two questions are compared on (the answer normaliser; a trailing '?' does not matter)."""
    return normalize_answer(text)


def default_src(repo_root: Optional[str] = None) -> str:
    """$ZS_RAY_SHARED_DATA, else <repo>/../shared/data."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    root = repo_root or project_root()
    return os.path.abspath(os.path.join(root, "..", "shared", "data"))


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- finding and reading the inputs -----------------------------------------------------------

def find_inputs(srcs: Sequence[str]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """([(path, data_source or "", reader)], [(path, data_source)]) over the source folders.

    A folder with `qa/` or `derived/` is the shared layout and must hold every file of it; a folder
    with train.parquet / test.parquet is a download folder (Search-R1 rows, data_source per row).
    """
    questions, passages = [], []
    for src in srcs:
        if not os.path.isdir(src):
            raise DataError(f"{src}: source folder not found (set --src or ${ENV_VAR})")
        shared = any(os.path.isdir(os.path.join(src, d)) for d in ("qa", "derived"))
        downloaded = [f for f in DOWNLOAD_FILES if os.path.isfile(os.path.join(src, f))]
        if not shared and not downloaded:
            raise DataError(f"{src}: neither the shared data layout (qa/, derived/; see SOURCES.md) "
                            f"nor a downloaded dataset ({' or '.join(DOWNLOAD_FILES)})")
        if shared:
            for rel in list(QUESTION_FILES) + list(PASSAGE_FILES):
                if not os.path.isfile(os.path.join(src, rel)):
                    raise DataError(f"{os.path.join(src, rel)}: file not found (expected in the shared "
                                    f"data layout of {src})")
            questions += [(os.path.join(src, rel), ds, kind) for rel, (ds, kind) in QUESTION_FILES.items()]
            passages += [(os.path.join(src, rel), ds) for rel, ds in PASSAGE_FILES.items()]
        questions += [(os.path.join(src, f), "", "parquet") for f in downloaded]
    return questions, passages


def _nonempty_str(x) -> bool:
    return isinstance(x, str) and bool(x.strip())


def _read_json_list(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON: {e}") from e
    if not isinstance(rows, list):
        raise DataError(f"{path}: file: expected a JSON list of {{question, answer}}, got {type(rows).__name__}")
    return rows


def _read_answer_rows(path: str, source: str, kind: str) -> list[Question]:
    """HotpotQA rows {id, question, answer} (jsonl) or qa pairs [{question, answer}] (json list)."""
    raw = read_jsonl(path) if kind == "hotpotqa" else _read_json_list(path)
    problems, out = Problems(path), []
    for i, row in enumerate(raw):
        if not isinstance(row, dict):
            problems.add(i, "<row>", f"must be a JSON object, got {type(row).__name__}")
            continue
        bad = len(problems.items)
        if kind == "hotpotqa" and not (_nonempty_str(row.get("id")) or isinstance(row.get("id"), int)):
            problems.add(i, "id", "missing" if row.get("id") is None else f"must be a string, got {row['id']!r:.60}")
        if not _nonempty_str(row.get("question")):
            problems.add(i, "question", "missing" if row.get("question") is None else
                         f"must be a non-empty string, got {row['question']!r:.60}")
        answer = row.get("answer")
        golds = answer if isinstance(answer, list) else [answer]
        if answer is None or not golds or not all(_nonempty_str(g) for g in golds):
            problems.add(i, "answer", "missing" if answer is None else
                         f"must be a non-empty string or list of them, got {answer!r:.60}")
        if len(problems.items) == bad:
            qid = str(row["id"]) if kind == "hotpotqa" else f"dev_{i}"
            out.append(Question(source, qid, row["question"], list(golds), path, i))
    if not raw:
        problems.add(None, "<rows>", "no rows")
    problems.raise_if_any()
    return out


def read_questions(path: str, source: str, kind: str) -> list[Question]:
    """The questions of one input file; any malformed row raises DataError naming the file and row."""
    if kind in ("hotpotqa", "qa_pairs"):
        return _read_answer_rows(path, source, kind)
    if kind not in ("flashrag", "parquet"):
        raise ValueError(f"unknown question reader {kind!r}")
    # FlashRAG jsonl and Search-R1 parquet: the project's loader validates every row.
    rows = load_rows(path, data_source=source or None, split="train" if path.endswith("train.parquet") else None)
    out = []
    for i, r in enumerate(rows):
        train_only = (r.get("extra_info") or {}).get("split") == "train" or os.path.basename(path) == "train.parquet"
        qid = str(r["id"]) if r.get("id") is not None else f"{(r.get('extra_info') or {}).get('split', 'row')}_{i}"
        out.append(Question(source or r["data_source"], qid, question_of(r), golds_of(r), path, i, train_only))
    return out


def read_passages(path: str, source: str) -> list[dict]:
    """{id, contents} rows of one passage file; ids get a `<source>_` prefix unless they have one."""
    problems, out = Problems(path), []
    for i, row in enumerate(read_jsonl(path)):
        if not isinstance(row, dict):
            problems.add(i, "<row>", f"must be a JSON object, got {type(row).__name__}")
            continue
        pid, contents = row.get("id"), row.get("contents")
        if pid is None or isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
            problems.add(i, "id", "missing" if pid is None else f"must be a non-empty string or int, got {pid!r:.60}")
        elif not _nonempty_str(contents):
            problems.add(i, "contents", "missing" if contents is None else
                         f"must be a non-empty string, got {contents!r:.60}")
        else:
            pid = str(pid)
            out.append({"id": pid if pid.startswith(f"{source}_") else f"{source}_{pid}", "contents": contents})
    if not out and not problems.items:
        problems.add(None, "<rows>", "no rows")
    problems.raise_if_any()
    return out


# ---- splitting --------------------------------------------------------------------------------

def dedup(questions: list[Question]) -> tuple[list[Question], int]:
    """First occurrence of each normalised question text; (kept, number dropped)."""
    seen, kept = set(), []
    for q in questions:
        k = question_key(q.question)
        if k and k not in seen:
            seen.add(k)
            kept.append(q)
    return kept, len(questions) - len(kept)


def _unique_ids(questions: list[Question]) -> None:
    """Make ids unique within a source (two files of one source may reuse FlashRAG's `test_N`)."""
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            q.id = f"{os.path.splitext(os.path.basename(q.file))[0]}/{q.id}"
        seen.add(q.id)


def split_questions(by_source: dict[str, list[Question]], test_sizes: dict[str, Optional[int]],
                    train_sources: Sequence[str], seed: int) -> tuple[dict, dict, dict]:
    """(test, train, counts): per-source lists of deduplicated questions and the counts of each step.

    The test draw of a source depends only on (seed, source), not on the other sources.
    """
    test, rest, counts = {}, {}, {}
    for src in sorted(by_source, key=lambda s: (SOURCES.index(s) if s in SOURCES else len(SOURCES), s)):
        pool, dups = dedup(by_source[src])
        _unique_ids(pool)
        eligible = [q for q in pool if not q.train_only]
        order = list(range(len(eligible)))
        random.Random(f"{seed}/{src}").shuffle(order)
        n = test_sizes.get(src, DEFAULT_TEST_SIZE)
        n = len(order) if n is None or n < 0 else min(n, len(order))
        chosen = {id(eligible[i]) for i in order[:n]}
        test[src] = [q for q in eligible if id(q) in chosen]  # kept in file order
        rest[src] = [q for q in pool if id(q) not in chosen]
        counts[src] = {"read": len(by_source[src]), "duplicates_dropped": dups, "test": len(test[src]),
                       "train": 0, "dropped_as_in_test_or_other_train": 0, "unused": 0}
    test_keys = {question_key(q.question) for qs in test.values() for q in qs}
    train, train_keys = {}, set()
    for src, qs in rest.items():
        if src not in train_sources:
            counts[src]["unused"] = len(qs)
            continue
        kept, overlap = [], 0
        for q in qs:
            k = question_key(q.question)
            if k in test_keys or k in train_keys:
                overlap += 1
                continue
            train_keys.add(k)
            kept.append(q)
        train[src] = kept
        counts[src].update(train=len(kept), dropped_as_in_test_or_other_train=overlap)
    return test, train, counts


def to_rows(by_source: dict[str, list[Question]], split: str) -> list[dict]:
    rows = []
    for src, qs in by_source.items():
        for i, q in enumerate(qs):
            rows.append(flashrag_to_searchr1({"id": q.id, "question": q.question, "golden_answers": q.golds},
                                             i, src, split))
    return rows


# ---- corpus, index, recall --------------------------------------------------------------------

def build_corpus(passages: list[tuple[str, str, list[dict]]], out_path: str) -> dict:
    """Write the union of (path, source, read_passages rows), deduplicated on contents; per-source counts."""
    seen_contents: set[str] = set()
    ids: set[str] = set()
    counts: dict[str, dict] = {}
    with open(out_path, "w", encoding="utf-8") as f:
        for path, src, rows in passages:
            c = counts.setdefault(src, {"read": 0, "written": 0})
            for p in rows:
                c["read"] += 1
                if p["contents"] in seen_contents:
                    continue
                if p["id"] in ids:
                    raise DataError(f"{path}: passage id {p['id']!r} is used twice with different contents")
                seen_contents.add(p["contents"])
                ids.add(p["id"])
                c["written"] += 1
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
    if not ids:
        raise DataError(f"no passages: no passage file in the source folders ({', '.join(PASSAGE_FILES)})")
    return counts


def contains_answer(passage: str, golds: Sequence[str]) -> bool:
    """A normalised gold answer occurs in the normalised passage as whole words ('no' is not in 'north')."""
    p = f" {normalize_answer(passage)} "
    return any(g and f" {g} " in p for g in (normalize_answer(x) for x in golds))


def recall_at_k(index, questions: list[Question], k: int = RECALL_K) -> float:
    """Share of questions with a gold answer in their top-k BM25 passages (query = question text)."""
    if not questions:
        return 0.0
    hits = index.search_with_ids([q.question for q in questions], k)
    return sum(any(contains_answer(h.text, q.golds) for h in hs) for q, hs in zip(questions, hits)) / len(questions)


# ---- the whole command ------------------------------------------------------------------------

def prepare(srcs: Sequence[str], out: str, seed: int = 0, test_sizes: Optional[dict] = None,
            test_only: Sequence[str] = TEST_ONLY) -> dict:
    """Write train/test parquet, corpus, BM25 index and manifest into `out`; returns the manifest."""
    from zs_ray.search.retrieval import BM25Index

    sizes = dict(TEST_SIZES, **(test_sizes or {}))
    question_files, passage_files = find_inputs(srcs)
    by_source: dict[str, list[Question]] = {}
    inputs = []
    for path, src, kind in question_files:
        qs = read_questions(path, src, kind)
        for q in qs:
            by_source.setdefault(q.source, []).append(q)
        inputs.append({"path": os.path.abspath(path), "kind": kind, "role": "questions", "rows": len(qs),
                       "sources": sorted({q.source for q in qs}), "sha256": sha256_of(path)})
    passages = [(path, src, read_passages(path, src)) for path, src in passage_files]  # all read before writing
    for path, src, rows in passages:
        inputs.append({"path": os.path.abspath(path), "kind": "passages", "role": "passages", "rows": len(rows),
                       "sources": [src], "sha256": sha256_of(path)})
    with_passages = {src for _, src in passage_files}
    train_sources = [s for s in by_source if s in with_passages and s not in test_only]
    test, train, counts = split_questions(by_source, sizes, train_sources, seed)

    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, v) for k, v in (("train", "train.parquet"), ("test", "test.parquet"),
             ("corpus", "corpus.jsonl"), ("bm25", "bm25"), ("manifest", "manifest.json"))}
    train_rows, test_rows = to_rows(train, "train"), to_rows(test, "test")
    if not train_rows:
        raise DataError(f"no training questions: no source has passages and is not test-only "
                        f"(sources {sorted(by_source)}, with passages {sorted(with_passages)})")
    write_searchr1_parquet(train_rows, paths["train"])
    write_searchr1_parquet(test_rows, paths["test"])
    passage_counts = build_corpus(passages, paths["corpus"])
    index = BM25Index.build(paths["corpus"])
    index.save(paths["bm25"])
    for src, c in counts.items():
        c["has_passages"] = src in with_passages
        c["passages"] = passage_counts.get(src, {}).get("written", 0)
        c[f"bm25_recall@{RECALL_K}"] = round(recall_at_k(index, test[src]), 4) if test[src] else None
    train_keys = {question_key(r["question"]) for r in train_rows}
    overlap = sum(question_key(r["question"]) in train_keys for r in test_rows)
    if overlap:  # split_questions guarantees this; a failure here is a bug, not bad data
        raise AssertionError(f"{overlap} test questions are also in train")
    manifest = {
        "seed": seed, "test_sizes": sizes, "test_only": list(test_only), "train_sources": train_sources,
        "outputs": {k: os.path.abspath(v) for k, v in paths.items()},
        "totals": {"train": len(train_rows), "test": len(test_rows), "corpus": len(index),
                   "train_test_overlap": overlap},
        "per_source": counts, "inputs": inputs, "question_key": "zs_ray.core.reward.normalize_answer",
        "recall": f"share of test questions whose BM25 top-{RECALL_K} passages contain a normalised gold "
                  f"answer as whole words (query: the question)",
    }
    with open(paths["manifest"], "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def summary_table(manifest: dict) -> str:
    """One line per source: counts, passages and BM25 recall@3."""
    r = f"bm25_recall@{RECALL_K}"
    lines = [f"{'source':16s} {'read':>6s} {'dups':>5s} {'test':>5s} {'train':>6s} {'passages':>8s} {'recall@3':>9s}"]
    for src, c in manifest["per_source"].items():
        rec = "-" if c[r] is None else f"{c[r]:.3f}"
        note = "" if c["has_passages"] else "  no passages in the corpus"
        lines.append(f"{src:16s} {c['read']:6d} {c['duplicates_dropped']:5d} {c['test']:5d} {c['train']:6d} "
                     f"{c['passages']:8d} {rec:>9s}{note}")
    t = manifest["totals"]
    lines.append(f"{'total':16s} {'':6s} {'':5s} {t['test']:5d} {t['train']:6d} {t['corpus']:8d}")
    return "\n".join(lines)
