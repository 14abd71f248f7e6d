"""QA data: load and validate Search-R1/ZeroSearch parquet or FlashRAG jsonl (which prompts a training step
takes: zs_ray/core/schedule.py).

Row format (the Search-R1/ZeroSearch parquet): `data_source`, `prompt` (chat list),
`ability`, `reward_model.ground_truth.target` (list of str), `extra_info{split, index}`, plus
`question`, `golden_answers` (and FlashRAG's `id` when present). Loaded parquet rows are kept
unchanged; every row gets one added key, `prompt_id`, unique across all loaded files (GRPO groups
are keyed by it: the reference keyed them by a per-source index that collided across sources).

Nothing is dropped silently: every row is validated and all problems (up to `MAX_REPORTED`) are
raised together as one `DataError` naming the file, the row index and the field.

Pure Python (pyarrow for parquet): no Ray.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from zs_ray.core.protocol import make_prompt, normalize_question

MAX_REPORTED = 20
SPLITS = ("train", "test", "dev", "val", "validation")
# Column order of Search-R1's data scripts, then the FlashRAG columns it carries through.
COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info", "id", "question",
           "golden_answers", "prompt_id")
_QUESTION_MARK = "Question: "


class DataError(ValueError):
    """Bad or unreadable data; the message names the file (and row index and field)."""


# ---- row accessors ------------------------------------------------------------------------

def question_of(row: dict) -> str:
    """The `question` column, else the text after the last "Question: " in the user prompt."""
    q = row.get("question")
    if isinstance(q, str) and q.strip():
        return q
    prompt = row.get("prompt")
    content = prompt[-1].get("content") if isinstance(prompt, (list, tuple)) and prompt else None
    if isinstance(content, str) and _QUESTION_MARK in content:
        q = content.rsplit(_QUESTION_MARK, 1)[1].strip()
        if q:
            return q
    raise KeyError("row has no question (no 'question' column and no 'Question: ' in the prompt)")


def golds_of(row: dict) -> list[str]:
    """`reward_model.ground_truth.target`, else `golden_answers` (the reward reads the former)."""
    rm = row.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    target = gt.get("target") if isinstance(gt, dict) else None
    if target is None:
        target = row.get("golden_answers")
    if target is None:
        raise KeyError("row has no gold answers (reward_model.ground_truth.target / golden_answers)")
    if isinstance(target, str):  # a bare string would otherwise be iterated char by char
        return [target]
    return [str(t) for t in target]


def names_from_path(path: str) -> tuple[str, Optional[str]]:
    """(data_source, split) guessed from a file name: 'bamboogle_test.jsonl' -> ('bamboogle', 'test'),
    'nq_test_sub1000.jsonl' -> ('nq', 'test'), 'data/hotpotqa/dev.jsonl' -> ('hotpotqa', 'dev')."""
    stem = os.path.basename(path).split(".")[0]
    if stem in SPLITS:
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or stem, stem
    parts = stem.split("_")
    for i, p in enumerate(parts):
        if p in SPLITS and i > 0:
            return "_".join(parts[:i]), p
    return stem, None


# ---- validation ---------------------------------------------------------------------------

def _is_str_list(x: Any, nonempty_items: bool = True) -> bool:
    return isinstance(x, list) and all(isinstance(t, str) and (t.strip() or not nonempty_items) for t in x)


def _check_golds(value: Any, field: str, problems: list[tuple[str, str]]) -> None:
    if value is None:
        problems.append((field, "missing"))
    elif not isinstance(value, list):
        problems.append((field, f"must be a list of strings, got {type(value).__name__}"))
    elif not value:
        problems.append((field, "empty gold answer list"))
    elif not _is_str_list(value):
        problems.append((field, f"must be non-empty strings, got {value!r:.120}"))


def _check_searchr1(row: dict) -> list[tuple[str, str]]:
    """(field, problem) pairs for one Search-R1 row."""
    p: list[tuple[str, str]] = []
    ds = row.get("data_source")
    if not isinstance(ds, str) or not ds.strip():
        p.append(("data_source", "missing" if ds is None else f"must be a non-empty string, got {ds!r:.60}"))
    prompt = row.get("prompt")
    if prompt is None:
        p.append(("prompt", "missing"))
    elif not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt)):
        p.append(("prompt", "must be a non-empty list of {role: str, content: str}"))
    rm = row.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    if not isinstance(rm, dict):
        p.append(("reward_model", "missing" if rm is None else "must be a dict"))
    elif not isinstance(gt, dict):
        p.append(("reward_model.ground_truth", "missing or not a dict"))
    else:
        _check_golds(gt.get("target"), "reward_model.ground_truth.target", p)
    if "golden_answers" in row and row["golden_answers"] is not None:
        _check_golds(row["golden_answers"], "golden_answers", p)
    q = row.get("question")
    if q is not None and not isinstance(q, str):
        p.append(("question", f"must be a string, got {type(q).__name__}"))
    elif all(f != "prompt" for f, _ in p):  # a broken prompt is already reported
        try:
            question_of(row)
        except KeyError:
            p.append(("question", "missing (no 'question' column and no 'Question: ' in the prompt)"))
    ei = row.get("extra_info")
    if ei is not None:
        if not isinstance(ei, dict):
            p.append(("extra_info", "must be a dict"))
        else:
            if "split" in ei and not isinstance(ei["split"], str):
                p.append(("extra_info.split", "must be a string"))
            if "index" in ei and (isinstance(ei["index"], bool) or not isinstance(ei["index"], int)):
                p.append(("extra_info.index", f"must be an int, got {type(ei['index']).__name__}"))
    if "ability" in row and row["ability"] is not None and not isinstance(row["ability"], str):
        p.append(("ability", "must be a string"))
    if "id" in row and row["id"] is not None and not isinstance(row["id"], (str, int)):
        p.append(("id", "must be a string or int"))
    return p


def _check_flashrag(row: Any) -> list[tuple[str, str]]:
    if not isinstance(row, dict):
        return [("<row>", f"must be a JSON object, got {type(row).__name__}")]
    p: list[tuple[str, str]] = []
    if row.get("id") is None:
        p.append(("id", "missing"))
    elif isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        p.append(("id", f"must be a string or int, got {type(row['id']).__name__}"))
    q = row.get("question")
    if q is None:
        p.append(("question", "missing"))
    elif not isinstance(q, str) or not q.strip():
        p.append(("question", f"must be a non-empty string, got {q!r:.60}"))
    _check_golds(row.get("golden_answers"), "golden_answers", p)
    return p


class Problems:
    """Collects (file, row, field, problem); raises one DataError listing them all."""

    def __init__(self, path: str):
        self.path, self.items = path, []

    def add(self, row: Optional[int], field: str, msg: str) -> None:
        where = f"row {row}" if row is not None else "file"
        self.items.append(f"{self.path}: {where}: field '{field}': {msg}")

    def raise_if_any(self) -> None:
        if self.items:
            shown = self.items[:MAX_REPORTED]
            more = len(self.items) - len(shown)
            tail = f"\n  ... and {more} more" if more else ""
            raise DataError(f"{len(self.items)} problem(s) in {self.path}:\n  " + "\n  ".join(shown) + tail)


# ---- reading files ------------------------------------------------------------------------

def _read_parquet(path: str) -> list[dict]:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PAR1":
        raise DataError(f"{path}: not a parquet file (bad magic bytes {magic!r})")
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: unreadable parquet: {e}") from e


def read_jsonl(path: str) -> list[Any]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n + 1} (row {len(rows)}): not JSON: {e}") from e
    return rows


def flashrag_to_searchr1(row: dict, index: int, data_source: str, split: str) -> dict:
    """One FlashRAG row as Search-R1's `nq_search.py` / `qa_search_*_merge.py` would write it."""
    question = normalize_question(row["question"])
    golds = list(row["golden_answers"])
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": make_prompt(question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": golds}},
        "extra_info": {"split": split, "index": index},
        "id": str(row["id"]),
        "question": question,
        "golden_answers": golds,
    }


def _prompt_key(row: dict, i: int) -> tuple[str, Any]:
    """(field the key came from, key): FlashRAG id, else extra_info.index, else the row position."""
    if row.get("id") is not None:
        return "id", row["id"]
    ei = row.get("extra_info") or {}
    if ei.get("index") is not None:
        return "extra_info.index", ei["index"]
    return "<position>", i


def _assign_prompt_ids(rows: list[dict], split: str, problems: Problems) -> None:
    """prompt_id = "{data_source}/{split}/{id or index}"; a collision within the file is an error."""
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if isinstance(row.get("prompt_id"), str) and row["prompt_id"]:
            pid, field = row["prompt_id"], "prompt_id"  # written by write_searchr1_parquet: keep it
        else:
            field, key = _prompt_key(row, i)
            row_split = (row.get("extra_info") or {}).get("split") or split
            pid = f"{row['data_source']}/{row_split}/{key}"
            row["prompt_id"] = pid
        if pid in seen:
            problems.add(i, field, f"duplicate: prompt id {pid!r} already used by row {seen[pid]}")
        else:
            seen[pid] = i


def load_rows(path: str, data_source: Optional[str] = None, split: Optional[str] = None) -> list[dict]:
    """Validated Search-R1 rows (each with a `prompt_id`) from a .parquet or FlashRAG .jsonl file.

    `data_source`/`split` name FlashRAG rows (default: from the file name, split else "test");
    for parquet rows they are only fallbacks (the rows' own `data_source`/`extra_info.split` win).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    guessed_source, guessed_split = names_from_path(path)
    split = split or guessed_split or "test"
    ext = os.path.splitext(path)[1].lower()
    problems = Problems(path)
    if ext == ".parquet":
        rows = _read_parquet(path)
        for i, row in enumerate(rows):
            for field, msg in _check_searchr1(row):
                problems.add(i, field, msg)
    elif ext == ".jsonl":
        raw = read_jsonl(path)
        rows = []
        for i, row in enumerate(raw):
            bad = _check_flashrag(row)
            for field, msg in bad:
                problems.add(i, field, msg)
            if not bad:
                rows.append(flashrag_to_searchr1(row, i, data_source or guessed_source, split))
    else:
        raise DataError(f"{path}: unknown data file extension {ext!r} (expected .parquet or .jsonl)")
    if not rows and not problems.items:
        problems.add(None, "<rows>", "no rows")
    problems.raise_if_any()  # before ids: prompt ids need valid rows
    _assign_prompt_ids(rows, split, problems)
    problems.raise_if_any()
    return rows


def load_dataset_files(paths: Sequence[str] | str, split: Optional[str] = None,
                       data_sources: Optional[Sequence[Optional[str]]] = None) -> list[dict]:
    """Concatenate several files; a prompt id used in two files is an error naming both."""
    if isinstance(paths, str):
        paths = [paths]
    sources = list(data_sources) if data_sources is not None else [None] * len(paths)
    if len(sources) != len(paths):
        raise ValueError("data_sources must match paths one to one")
    out: list[dict] = []
    owner: dict[str, tuple[str, int]] = {}
    clashes: list[str] = []
    for path, ds in zip(paths, sources):
        for i, row in enumerate(load_rows(path, data_source=ds, split=split)):
            pid = row["prompt_id"]
            if pid in owner:
                clashes.append(f"{path}: row {i}: field 'prompt_id': {pid!r} also in "
                               f"{owner[pid][0]} row {owner[pid][1]}")
            else:
                owner[pid] = (str(path), i)
            out.append(row)
    if clashes:
        more = f"\n  ... and {len(clashes) - MAX_REPORTED} more" if len(clashes) > MAX_REPORTED else ""
        raise DataError(f"{len(clashes)} prompt id collision(s) across files:\n  "
                        + "\n  ".join(clashes[:MAX_REPORTED]) + more)
    return out


def write_searchr1_parquet(rows: Iterable[dict], path: str) -> None:
    """Write rows as a Search-R1/ZeroSearch parquet (Search-R1 column order, `prompt_id` kept)."""
    rows = list(rows)
    problems = Problems(str(path))
    for i, row in enumerate(rows):
        for field, msg in _check_searchr1(row):
            problems.add(i, field, msg)
    problems.raise_if_any()
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    cols = [c for c in COLUMNS if any(c in r for r in rows)] + extra
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(table, path)
