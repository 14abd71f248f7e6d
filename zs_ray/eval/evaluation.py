"""Evaluate a policy on QA test sets: the search agent and the paper's no-search / RAG baselines.

Modes:
- `agent`: the search agent, i.e. `zs_ray.core.rollout.run_trajectory` with greedy decoding, the
  configured `rollout.max_turns` and `search.topk`, against any search backend.
- `direct`: answer without search (one answer-only turn, prompt `DIRECT_TEMPLATE`).
- `rag`: retrieve top-k for the question once, put the documents in the prompt, then answer.

Every row is evaluated (the reference validation drops the last partial batch; we never do): a
row whose generation fails is kept, scored 0 and counted in `errors`. Outputs: per data source
and averaged EM / cover-EM / F1, searches per question and invalid-action rate, as a markdown
table, a CSV, a JSONL of every trajectory and a PNG bar chart (zs_ray/eval/report.py), all logged to MLflow.

No Ray here: the engine runs in-process (`rollout.engine` vllm or hf); only a Serve-hosted
simulator backend needs a Ray cluster, which `zs_ray.search.clients` joins.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

from zs_ray.config import SIMULATOR_BACKENDS
from zs_ray.core.protocol import normalize_question
from zs_ray.core.reward import extract_answer, score_answer
from zs_ray.data.qa import golds_of, question_of
from zs_ray.eval.report import (METRIC_NAMES, Progress, aggregate, eval_title, flat_metrics, markdown_table,
                                plot_summary, write_csv, write_jsonl)

EVAL_MODES = ("agent", "direct", "rag")

DIRECT_TEMPLATE = (
    "Answer the given question. Provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
RAG_TEMPLATE = (
    "Answer the given question using the documents below if they help. Provide the answer inside "
    "<answer> and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>.\n"
    "Documents:\n{documents}\n\nQuestion: {question}\n"
)


# ---- scoring ----------------------------------------------------------------------------------

def free_form_answer(response: str) -> Optional[str]:
    """A baseline's (direct, rag) answer when it wrote no `<answer>` tags: its first non-empty line. An instruct
    model asked directly answers in a sentence; free-form RAG baselines are scored so, which keeps EM strict
    and lets cover-EM and F1 count. The agent never gets this: the protocol is what it is judged on."""
    lines = [x.strip() for x in (response or "").splitlines() if x.strip()]
    return lines[0][:300] if lines else None


def score_record(rec: dict) -> dict:
    """Fill `answer` and the metrics from `response` (the response only, never the prompt)."""
    rec["answer"] = extract_answer(rec.get("response") or "")
    rec.update(score_answer(rec["answer"], rec["golden_answers"]))
    return rec


# ---- running ----------------------------------------------------------------------------------

class RecordingSearch:
    """Wraps a backend and keeps every call's documents by call key (rollout records only queries)."""

    def __init__(self, inner):
        self.inner, self.name = inner, getattr(inner, "name", "search")
        self.calls: dict[str, list[dict]] = {}

    async def search(self, query, question, golden_answers, step=0, call_key=""):
        res = await self.inner.search(query, question, golden_answers, step, call_key=call_key)
        prompt_key = call_key.rsplit("/", 1)[0]  # "<prompt_id>/<sample>/<turn>" -> one list per trajectory
        self.calls.setdefault(prompt_key, []).append({"query": query, "documents": list(res.docs)})
        return res

    def pop(self, prompt_id: str, sample_index: int = 0) -> list[dict]:
        return self.calls.pop(f"{prompt_id}/{sample_index}", [])

    async def close(self):
        await self.inner.close()


def baseline_row(row: dict, mode: str, documents: Optional[Sequence[str]] = None) -> dict:
    """The row with its prompt replaced by the direct-answer or RAG prompt (same question, golds)."""
    from zs_ray.core.protocol import render_documents

    q = normalize_question(question_of(row))
    if mode == "direct":
        text = DIRECT_TEMPLATE.format(question=q)
    elif mode == "rag":
        docs = render_documents(list(documents)) if documents else "No information available."
        text = RAG_TEMPLATE.format(documents=docs, question=q)
    else:
        raise ValueError(f"baseline_row mode must be direct or rag, got {mode!r}")
    return {**row, "question": q, "prompt": [{"role": "user", "content": text}]}


def _record(row: dict, mode: str, traj=None, tokenizer=None, calls=(), error: Optional[str] = None) -> dict:
    rec = {"prompt_id": str(row.get("prompt_id", "")), "data_source": str(row.get("data_source", "")),
           "id": row.get("id"), "mode": mode, "question": question_of(row), "golden_answers": golds_of(row)}
    if traj is None:  # a failed row is kept and scored 0: nothing is dropped
        rec.update(response="", answer=None, em=0.0, cover_em=0.0, f1=0.0, searches=0, invalid_actions=0,
                   finish_reason="error", error=error, n_turns=0, response_tokens=0, search_calls=[])
        return rec
    response = tokenizer.decode(traj.response_ids, skip_special_tokens=True)
    metrics = traj.metrics
    if mode != "agent" and traj.answer is None and free_form_answer(response):
        traj.answer = free_form_answer(response)
        metrics = score_answer(traj.answer, golds_of(row))
        rec["free_form"] = True
    rec.update(response=response, answer=traj.answer, **{m: float(metrics.get(m, 0.0)) for m in METRIC_NAMES},
               searches=traj.searches, invalid_actions=traj.invalid_actions, finish_reason=traj.finish_reason,
               n_turns=traj.n_turns, response_tokens=len(traj.response_ids), search_calls=list(calls))
    return rec


async def evaluate_rows(engine, search, rows: Sequence[dict], *, mode: str = "agent", rollout_cfg=None,
                        seed: int = 0, max_query_chars: int = 512,
                        on_record: Optional[Callable[[dict], None]] = None,
                        concurrency: Optional[int] = None) -> list[dict]:
    """One record per row, in row order. Greedy; rows run concurrently (the engine batches them).

    `direct` and `rag` reuse the rollout loop with max_turns=0: one answer-only turn on their own
    prompt, so tokenisation, stop strings and answer parsing are the agent's own.
    """
    from zs_ray.core.rollout import as_rollout_config, run_trajectory, trajectory_seed

    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
    rcfg = as_rollout_config(rollout_cfg)
    if mode != "agent":
        rcfg = dataclasses.replace(rcfg, max_turns=0)
    recorder = RecordingSearch(search) if search is not None else None
    sem = asyncio.Semaphore(concurrency or rcfg.max_num_seqs)

    async def one(row: dict) -> dict:
        async with sem:
            pid = str(row.get("prompt_id", ""))
            try:
                run_row, calls = row, []
                if mode == "rag":  # one retrieval for the question itself, shown in the prompt
                    q = question_of(row)
                    res = await recorder.search(q, q, golds_of(row), 0, call_key=f"{pid}/0/rag")
                    run_row = baseline_row(row, "rag", res.docs)
                elif mode == "direct":
                    run_row = baseline_row(row, "direct")
                traj = await run_trajectory(engine, recorder, run_row, sample_index=0, rollout_cfg=rcfg,
                                            step=0, greedy=True, seed=trajectory_seed(seed, 0, pid, 0),
                                            max_query_chars=max_query_chars)
                calls = recorder.pop(pid) if recorder is not None else []
                rec = _record(row, mode, traj, engine.tokenizer, calls)
                if mode == "rag":
                    rec["searches"] = 1  # the one retrieval, not a policy action
            except Exception as e:  # keep the row, scored 0, and say why
                rec = _record(row, mode, error=f"{type(e).__name__}: {e}"[:500])
            if on_record is not None:
                on_record(rec)
            return rec

    return list(await asyncio.gather(*[one(r) for r in rows]))


def select_rows(rows: Sequence[dict], max_rows: Optional[int]) -> list[dict]:
    """The first `max_rows` rows of each data source (all rows when None), in file order."""
    if max_rows is None:
        return list(rows)
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        ds = str(r.get("data_source", ""))
        if seen.get(ds, 0) < max_rows:
            seen[ds] = seen.get(ds, 0) + 1
            out.append(r)
    return out


def build_engine(cfg, model_path: Optional[str] = None):
    from zs_ray.engines.engine import engine_kwargs, make_engine

    return make_engine(cfg.rollout.engine, model_path or cfg.model.policy_path, **engine_kwargs(cfg))


SEARCH_CHOICES = ("bm25", "retriever", "simulator")  # `zs-ray eval --search`; None: real retrieval


@dataclasses.dataclass(frozen=True)
class EvalSearch:
    """The search an evaluation runs: `kind` bm25 / retriever (real) or simulator, the `backend` it builds
    (a search.backend value) and its `source` (corpus or index, server URLs, or simulator model)."""
    kind: str
    backend: str
    source: str

    @property
    def real(self) -> bool:
        return self.kind != "simulator"

    @property
    def label(self) -> str:
        if self.kind == "bm25":
            return f"real BM25 over {self.source}"
        if self.kind == "retriever":
            return f"real retrieval server {self.source}"
        return f"SIMULATOR {self.backend} ({self.source}), not real search"

    def search_config(self, search) -> dict:
        """The `search` section with the backend this evaluation runs (a simulator asked for on a config whose
        search.urls are a retriever's runs as our Serve app, not against those URLs)."""
        s = {**dict(search), "backend": self.backend}
        if self.kind == "simulator" and search.get("backend") not in SIMULATOR_BACKENDS:
            s["urls"] = []
        return s

    def as_dict(self) -> dict:
        return {"kind": self.kind, "backend": self.backend, "source": self.source, "real": self.real,
                "label": self.label}


def resolve_eval_search(search, choice: Optional[str] = None) -> EvalSearch:
    """Which search evaluating with the `search` config section runs. Real retrieval unless `choice` is
    "simulator": the paper trains against the simulator but evaluates with real search, so the training
    back-end in search.backend is never used by default. None: the retrieval server when
    search.backend=retriever, else BM25 over search.corpus / search.index_dir."""
    from zs_ray.config import ConfigError

    s = dict(search)
    if choice is not None and choice not in SEARCH_CHOICES:
        raise ConfigError(f"--search must be one of {SEARCH_CHOICES}, got {choice!r}")
    urls = ", ".join(str(u) for u in (s.get("urls") or []))
    sim_urls = urls if s.get("backend") in SIMULATOR_BACKENDS else ""
    if choice is None:
        choice = "retriever" if s.get("backend") == "retriever" else "bm25"
        if choice == "bm25" and not (s.get("corpus") or s.get("index_dir")):
            raise ConfigError(
                "evaluation runs real search, and the config names none: set search.corpus (a {id, contents} "
                "jsonl, searched with BM25) or search.index_dir (a saved BM25 index), or pass --search retriever "
                "with search.urls=[URL] of a retrieval server; --search simulator evaluates against the training "
                f"simulator (search.backend={s.get('backend')}) instead, which is not real search")
    if choice == "bm25":
        if not (s.get("corpus") or s.get("index_dir")):
            raise ConfigError("config key 'search.corpus': --search bm25 needs search.corpus (a {id, contents} "
                              "jsonl) or search.index_dir (a saved BM25 index)")
        return EvalSearch("bm25", "bm25", str(s.get("corpus") or s.get("index_dir")))
    if choice == "retriever":
        if not urls:
            raise ConfigError("config key 'search.urls': --search retriever needs search.urls=[URL] of a "
                              "retrieval server (the Search-R1 /retrieve API)")
        return EvalSearch("retriever", "retriever", urls)
    backend = s.get("backend") if s.get("backend") in SIMULATOR_BACKENDS else s.get("simulator_mode", "simulate_sft")
    if not (s.get("simulator_model") or sim_urls):
        raise ConfigError("config key 'search.simulator_model': --search simulator needs search.simulator_model "
                          "(or search.urls of a simulator server)")
    where = sim_urls if sim_urls else f"Serve app '{s.get('app_name', 'simulator')}', model {s.get('simulator_model')}"
    return EvalSearch("simulator", backend, where)


def build_search(cfg, seed: int = 0, choice: Optional[str] = None):
    """The backend `resolve_eval_search` picks (zs_ray.search.clients). No curriculum: evaluation never asks a
    simulator for noisy documents. A Serve-hosted simulator needs Ray: join (or start) it."""
    from zs_ray.config import to_dict
    from zs_ray.search.clients import make_search_backend

    which = resolve_eval_search(to_dict(cfg)["search"], choice)
    s = which.search_config(to_dict(cfg)["search"])
    if which.kind == "simulator" and s["backend"] != "http" and not s.get("urls"):
        from zs_ray.runtime import init_ray
        init_ray()
    return make_search_backend(s, None, seed=seed)


def describe_search(cfg, mode: str, search=None, choice: Optional[str] = None) -> dict:
    """What the evaluation searches with, for its header and saved results: `resolve_eval_search`'s answer, or
    for a backend passed in (or the direct mode) its name."""
    from zs_ray.config import to_dict

    if mode == "direct":
        return {"kind": "none", "backend": "none", "source": "", "real": False, "label": "none (direct answer)"}
    if search is not None:
        name = getattr(search, "name", type(search).__name__)
        return {"kind": name, "backend": name, "source": "passed in", "real": name in ("bm25", "retriever"),
                "label": "none (no search at test time)" if name == "none" else f"{name} (passed in)"}
    return resolve_eval_search(to_dict(cfg)["search"], choice).as_dict()


def run_evaluation(cfg, *, mode: str = "agent", max_rows: Optional[int] = None, out_dir: Optional[str] = None,
                   progress: bool = True, tracking: bool = True, engine=None, search=None,
                   search_choice: Optional[str] = None) -> dict:
    """Evaluate `cfg.model.policy_path` on `cfg.data.test_files`; write and log the outputs.

    Searches with real retrieval unless search_choice="simulator" (`resolve_eval_search`). Returns {"summary",
    "records", "markdown", "out_dir", "files", "tracking", "run_id", "elapsed_s", "search"}. `engine`/`search`
    may be passed in (already built) to share them between several evaluations.
    """
    from zs_ray.data.qa import load_dataset_files

    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
    if not cfg.data.test_files:
        from zs_ray.config import ConfigError
        raise ConfigError("config key 'data.test_files': evaluation needs at least one test file")
    searched = describe_search(cfg, mode, search, search_choice)  # a config naming no real search stops here
    rows = select_rows(load_dataset_files(list(cfg.data.test_files)), max_rows)
    out_dir = os.path.abspath(out_dir or os.path.join(cfg.trainer.output_dir, f"eval_{mode}"))
    os.makedirs(out_dir, exist_ok=True)
    own_engine, own_search = engine is None, search is None and mode != "direct"
    engine = engine or build_engine(cfg)
    if own_search:
        search = build_search(cfg, seed=cfg.trainer.seed, choice=search_choice)
    backend = searched["backend"]
    from zs_ray.core.search import NoSearch
    search = search if search is not None else NoSearch()

    bar = Progress(len(rows), f"eval {mode}", enabled=progress)
    t0 = time.time()

    async def go():
        try:
            return await evaluate_rows(engine, search, rows, mode=mode, rollout_cfg=cfg.rollout,
                                       seed=cfg.rollout.seed,
                                       max_query_chars=cfg.search.max_query_chars, on_record=bar.update)
        finally:
            if own_search:
                await search.close()
    try:
        records = asyncio.run(go())
    finally:
        bar.close()
    elapsed = time.time() - t0
    if len(records) != len(rows):  # never silently lose a row
        raise RuntimeError(f"evaluation produced {len(records)} records for {len(rows)} rows")

    summary = aggregate(records)
    title = eval_title(mode, cfg.model.policy_path, searched["label"], cfg.search.topk, cfg.rollout.max_turns,
                       len(records), elapsed)
    md = markdown_table(summary, title)
    files = {"markdown": os.path.join(out_dir, "summary.md"), "csv": os.path.join(out_dir, "summary.csv"),
             "jsonl": os.path.join(out_dir, "trajectories.jsonl"), "png": os.path.join(out_dir, "summary.png"),
             "json": os.path.join(out_dir, "summary.json")}
    with open(files["markdown"], "w") as f:
        f.write(md)
    write_csv(summary, files["csv"])
    write_jsonl(records, files["jsonl"])
    with open(files["json"], "w") as f:
        json.dump({"mode": mode, "backend": backend, "search": searched, "policy": cfg.model.policy_path,
                   "elapsed_s": elapsed, "summary": summary}, f, indent=1)
    if not plot_summary(summary, files["png"], title):
        files.pop("png")

    track_msg = run_id = None
    if tracking:
        from zs_ray.train.tracking import Tracker

        tracker = Tracker(cfg, stage=f"eval-{mode}")
        tracker.set_tags({"zs_ray.job": "eval", "eval.mode": mode, "eval.search_backend": backend,
                          "eval.search": searched["label"], "eval.search_real": str(searched["real"]).lower()})
        tracker.log_metrics({**flat_metrics(summary), "eval/elapsed_s": elapsed}, step=0)
        for p in files.values():
            tracker.log_artifact(p, f"eval_{mode}")
        tracker.finish()
        track_msg, run_id = tracker.summary(), tracker.run_id
    if own_engine:
        _release(engine)
    return {"summary": summary, "records": records, "markdown": md, "out_dir": out_dir, "files": files,
            "tracking": track_msg, "run_id": run_id, "elapsed_s": elapsed, "search": searched}


def _release(engine) -> None:
    """Let an in-process engine go (frees its KV cache before the caller's next engine starts)."""
    ex = getattr(engine, "_executor", None)
    if ex is not None:
        ex.shutdown(wait=False)
    import gc
    del engine
    gc.collect()
