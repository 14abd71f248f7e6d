"""Evaluation: scoring/aggregation on scripted records, the full path with a scripted engine over
real BM25 pools, and (integration) the tiny random policy on Bamboogle and an NQ slice.

Accuracy is not the point with a random policy: every row must be evaluated and scored, the outputs
must exist and parse, and the counts must match.
"""
import asyncio
import csv
import json
import os

import pytest
from conftest import shared_path

from zs_ray.core.protocol import STOP_STRINGS, normalize_question
from zs_ray.engines.engine import Generation
from zs_ray.eval.evaluation import baseline_row, evaluate_rows, run_evaluation, score_record, select_rows
from zs_ray.eval.report import AVERAGE, aggregate, markdown_table, write_csv

BAMBOOGLE = ("qa", "flashrag_format", "bamboogle_test.jsonl")
NQ = ("searchr1_format", "nq_search_test.parquet")
POOL = ("derived", "wiki18_e5top3_pool_{}.jsonl")


# ---- scoring and aggregation -----------------------------------------------------------------

def _rec(ds, response, golds, **kw):
    return score_record({"data_source": ds, "response": response, "golden_answers": golds, **kw})


def test_aggregate_scripted_responses():
    recs = [
        _rec("nq", "<think>x</think> <answer> The Beatles </answer>", ["Beatles"], searches=2),  # em 1
        _rec("nq", "<answer> paris, france </answer>", ["Paris"], searches=1, invalid_actions=1),  # cover 1, f1 2/3
        _rec("nq", "no answer at all", ["x"], searches=0),  # all 0, not answered
        _rec("hotpot", "<answer> a </answer> <answer> yes </answer>", ["yes"], searches=3),  # last answer
    ]
    assert [r["answer"] for r in recs] == ["The Beatles", "paris, france", None, "yes"]
    s = aggregate(recs)
    assert list(s) == ["nq", "hotpot", AVERAGE]
    nq = s["nq"]
    assert nq["n"] == 3
    assert nq["em"] == pytest.approx(1 / 3)
    assert nq["cover_em"] == pytest.approx(2 / 3)
    assert nq["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert nq["searches"] == pytest.approx(1.0)
    assert nq["invalid_rate"] == pytest.approx(1 / 3)
    assert nq["answered"] == pytest.approx(2 / 3)
    assert s["hotpot"]["em"] == 1.0
    # the average is the macro mean over sources (the papers' "Avg."), n the total
    assert s[AVERAGE]["em"] == pytest.approx((1 / 3 + 1) / 2)
    assert s[AVERAGE]["n"] == 4


def test_answer_is_never_read_from_the_prompt():
    r = _rec("nq", "I do not know", ["Beijing"], prompt="... For example, <answer> Beijing </answer>.")
    assert r["answer"] is None and r["em"] == 0.0


def test_table_and_csv_parse(tmp_path):
    s = aggregate([_rec("nq", "<answer> x </answer>", ["x"]), _rec("tq", "<answer> y </answer>", ["z"])])
    md = markdown_table(s, "t")
    assert "| nq | 1 | 100.00 |" in md and "| **average** | 2 | 50.00 |" in md
    write_csv(s, str(tmp_path / "s.csv"))
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["data_source"] for r in rows] == ["nq", "tq", AVERAGE]
    assert float(rows[2]["em"]) == 0.5


def test_select_rows_is_per_source_and_keeps_order():
    rows = [{"data_source": d, "i": i} for i, d in enumerate("aabbbac")]
    assert [r["i"] for r in select_rows(rows, 2)] == [0, 1, 2, 3, 6]
    assert select_rows(rows, None) == rows


def test_baseline_prompts():
    row = {"question": "who is x", "golden_answers": ["y"], "data_source": "nq", "prompt_id": "p"}
    d = baseline_row(row, "direct")["prompt"][0]["content"]
    assert "<search>" not in d and "<answer>" in d and d.endswith("Question: who is x?\n")
    r = baseline_row(row, "rag", ["T: one", "U: two"])["prompt"][0]["content"]
    assert "Doc 1: T: one\nDoc 2: U: two" in r and "<search>" not in r


# ---- the whole path with a scripted engine (no model): search, documents, counts ----------------

class ScriptedEngine:
    """Searches the question once, then answers: the gold for even rows, 'nothing' for odd ones."""

    version = 0

    def __init__(self, tokenizer, golds_by_question):
        self.tokenizer, self.golds, self.calls = tokenizer, golds_by_question, 0

    async def generate(self, prompt_ids, *, max_tokens, temperature, top_p=1.0, stop=None, seed=None):
        assert temperature == 0.0 and list(stop) == STOP_STRINGS  # greedy, stop strings
        self.calls += 1
        text = self.tokenizer.decode(prompt_ids)
        q = text.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        gold, even = self.golds[q]
        prompt, _, response = text.rpartition("<|im_start|>assistant\n")
        if "<information>" in response or "<search>" not in prompt:  # searched already, or a baseline
            out = f"<answer> {gold if even else 'nothing'} </answer>"
        else:
            out = f"<think> look it up </think> <search> {q} </search>"
        ids = self.tokenizer.encode(out, add_special_tokens=False)
        return Generation(ids, [0.0] * len(ids), "stop", out[-9:])


@pytest.fixture(scope="module")
def rows_and_search(tmp_path_factory):
    from zs_ray.core.search import BM25Search
    from zs_ray.data.qa import load_dataset_files, question_of
    from zs_ray.search.retrieval import BM25Index

    files = [shared_path(*BAMBOOGLE), shared_path(*NQ)]
    rows = select_rows(load_dataset_files(files), 125)  # all of Bamboogle, 125 NQ rows
    corpus = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with open(corpus, "w") as f:  # both matching pools in one corpus (their ids do not collide)
        for ds in ("bamboogle", "nq"):
            f.write(open(shared_path(POOL[0], POOL[1].format(ds))).read())
    golds = {}
    for i, r in enumerate(rows):
        golds[question_of(r).strip().rstrip("?") + "?"] = (r["golden_answers"][0], i % 2 == 0)
    return rows, BM25Search(BM25Index.build(str(corpus)), topk=3), golds


def _tok(tiny_assets):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_assets["tokenizer"])


@pytest.mark.parametrize("mode", ["agent", "rag", "direct"])
def test_scripted_engine_every_row_scored(mode, rows_and_search, tiny_assets):
    from zs_ray.config import RolloutConfig

    rows, search, golds = rows_and_search
    engine = ScriptedEngine(_tok(tiny_assets), golds)
    seen = []
    recs = asyncio.run(evaluate_rows(engine, search if mode != "direct" else None, rows, mode=mode,
                                     rollout_cfg=RolloutConfig(max_turns=2, max_context_tokens=100_000),
                                     on_record=seen.append))
    assert len(recs) == len(seen) == len(rows) == 250
    assert [r["prompt_id"] for r in recs] == [r["prompt_id"] for r in rows]  # row order, nothing dropped
    assert not any(r.get("error") for r in recs)
    s = aggregate(recs)
    assert s["bamboogle"]["n"] == s["nq"]["n"] == 125
    # even rows answer their gold: EM is exactly the share of even rows in each source
    for ds in ("bamboogle", "nq"):
        rs = [r for r in recs if r["data_source"] == ds]
        expect = sum(golds[r["question"].rstrip("?") + "?"][1] for r in rs) / len(rs)
        assert s[ds]["em"] == pytest.approx(expect)
        assert s[ds]["cover_em"] >= s[ds]["em"]
    for r in recs:
        assert r["answer"]  # parsed from the response
        assert r["finish_reason"] == "answer" and r["invalid_actions"] == 0
        if mode == "agent":
            assert r["searches"] == 1 and len(r["search_calls"]) == 1
            call = r["search_calls"][0]
            assert call["query"] == normalize_question(r["question"])
            assert "<information>Doc 1:" in r["response"] or "No information available." in r["response"]
        elif mode == "rag":
            assert r["searches"] == 1 and len(r["search_calls"]) == 1 and "<information>" not in r["response"]
        else:
            assert r["searches"] == 0 and r["search_calls"] == []
    # the pools hold real retriever hits for these questions: BM25 finds documents for nearly all
    if mode != "direct":
        assert sum(bool(r["search_calls"][0]["documents"]) for r in recs) >= 0.9 * len(recs)


def test_failed_rows_are_kept_and_counted(rows_and_search, tiny_assets):
    rows, search, golds = rows_and_search

    class Broken(ScriptedEngine):
        async def generate(self, prompt_ids, **kw):
            if self.tokenizer.decode(prompt_ids).count("Who") % 2:
                raise RuntimeError("prompt too long")
            return await super().generate(prompt_ids, **kw)

    recs = asyncio.run(evaluate_rows(Broken(_tok(tiny_assets), golds), search, rows[:40], mode="agent"))
    assert len(recs) == 40
    errs = [r for r in recs if r.get("error")]
    assert errs and all(r["em"] == 0.0 and r["finish_reason"] == "error" for r in errs)
    assert aggregate(recs)[AVERAGE]["errors"] == len(errs)


# ---- integration: the tiny random policy, real files, MLflow ---------------------------------

def _write_cfg(tmp_path, tiny_assets, test_files, corpus, **extra):
    from omegaconf import OmegaConf
    cfg = {"data": {"test_files": test_files}, "model": {"policy_path": tiny_assets["model"]},
           "search": {"backend": "bm25", "corpus": corpus, "index_dir": str(tmp_path / "bm25"), "topk": 3},
           "rollout": {"engine": "hf", "max_turns": 2, "max_turn_tokens": 16, "max_obs_tokens": 200,
                       "max_context_tokens": 1024},
           "trainer": {"output_dir": str(tmp_path / "run")},
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "zs-eval-test"}}
    for k, v in extra.items():
        cfg.setdefault(k.split(".")[0], {})[k.split(".")[1]] = v
    path = tmp_path / "eval.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return str(path)


def _check_outputs(out_dir, n_rows, sources):
    recs = [json.loads(line) for line in open(os.path.join(out_dir, "trajectories.jsonl"))]
    assert len(recs) == n_rows
    for r in recs:
        assert {"question", "golden_answers", "response", "answer", "em", "cover_em", "f1"} <= set(r)
        assert r["finish_reason"] in ("answer", "max_turns", "context_limit") and not r.get("error")
    summary = json.load(open(os.path.join(out_dir, "summary.json")))["summary"]
    assert [k for k in summary if k != AVERAGE] == sources
    assert sum(summary[s]["n"] for s in sources) == n_rows == summary[AVERAGE]["n"]
    rows = list(csv.DictReader(open(os.path.join(out_dir, "summary.csv"))))
    assert [r["data_source"] for r in rows] == sources + [AVERAGE]
    assert open(os.path.join(out_dir, "summary.md")).read().count("\n| ") == len(sources) + 2
    with open(os.path.join(out_dir, "summary.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return recs, summary


@pytest.mark.integration
def test_tiny_policy_bamboogle_all_rows(tmp_path, tiny_assets):
    from zs_ray.config import load_config

    path = _write_cfg(tmp_path, tiny_assets, [shared_path(*BAMBOOGLE)],
                      shared_path(POOL[0], POOL[1].format("bamboogle")))
    res = run_evaluation(load_config(path), mode="agent", out_dir=str(tmp_path / "out"), progress=False)
    recs, summary = _check_outputs(res["out_dir"], 125, ["bamboogle"])
    assert [r["id"] for r in recs] == [f"test_{i}" for i in range(125)]
    # logged to MLflow: metrics per source and every output file
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(res["run_id"])
    assert run.data.metrics["eval/bamboogle/n"] == 125
    assert run.data.tags["eval.mode"] == "agent"
    arts = {os.path.basename(a.path) for a in client.list_artifacts(res["run_id"], "eval_agent")}
    assert {"summary.md", "summary.csv", "trajectories.jsonl", "summary.png"} <= arts


@pytest.mark.integration
def test_cli_nq_slice_rag(tmp_path, tiny_assets, capsys):
    from jobs.evaluate import main

    path = _write_cfg(tmp_path, tiny_assets, [shared_path(*NQ)], shared_path(POOL[0], POOL[1].format("nq")))
    out = str(tmp_path / "out")
    assert main([path, "--max-rows", "30", "--out", out, "--no-progress", "eval_mode=rag",
                 "rollout.max_turn_tokens=8"]) == 0
    assert "| nq | 30 |" in capsys.readouterr().out
    recs, summary = _check_outputs(out, 30, ["nq"])
    assert all(r["mode"] == "rag" and len(r["search_calls"]) == 1 for r in recs)
    assert summary["nq"]["searches"] == 1.0
