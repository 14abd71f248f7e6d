"""`zs-ray experiment collect`: the paper's table columns from evaluation folders (pure file logic)."""
import json
import math

import pytest

from zs_ray.eval.real_table import average_em_se, table


def _eval_dir(path, ems: dict, n=50, label="real BM25 over corpus.jsonl (top-3)"):
    path.mkdir(parents=True)
    summary = {s: {"n": n, "em": em, "cover_em": em, "f1": em + 0.05, "searches": 1.0, "invalid_rate": 0.02,
                   "answered": 0.98, "errors": 0} for s, em in ems.items()}
    summary["average"] = {"n": n * len(ems), **{k: sum(v[k] for v in summary.values()) / len(ems)
                                                 for k in ("em", "cover_em", "f1", "searches", "invalid_rate")}}
    (path / "summary.json").write_text(json.dumps({"mode": "agent", "backend": "bm25", "summary": summary,
                                                   "search": {"label": label}}))
    return str(path)


def test_rows_in_points_with_the_standard_error_of_the_macro_average(tmp_path):
    a = _eval_dir(tmp_path / "a", {"nq": 0.10, "popqa": 0.20})
    b = _eval_dir(tmp_path / "b", {"nq": 0.30, "bamboogle": 0.0}, n=25)
    md, csv_text = table({"warm start": a, "GRPO": b})
    lines = md.splitlines()
    assert lines[0].split(" | ")[1:4] == ["nq", "popqa", "bamboogle"]
    warm = [c.strip() for c in lines[2].strip("|").split("|")]
    assert warm[:4] == ["warm start", "10.0", "20.0", "–"] and warm[4] == "15.0"  # a source a row lacks: "–"
    se = 100 * math.sqrt(0.1 * 0.9 / 50 + 0.2 * 0.8 / 50) / 2
    assert warm[5] == f"{se:.1f}" and warm[6] == "15.0" and warm[-1] == "real BM25 over corpus.jsonl (top-3)"
    assert csv_text.splitlines()[0].startswith("row,nq,popqa,bamboogle,avg EM,se")
    assert average_em_se({"average": {}, "x": {"n": 100, "em": 0.5}}) == pytest.approx(5.0)


def test_a_folder_without_a_summary_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an evaluation folder"):
        table({"row": str(tmp_path)})
