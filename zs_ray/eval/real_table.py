"""The paper's table from evaluation folders: EM per test source, the average (the paper's "Avg."), its
standard error, cover-EM (ZeroSearch's reported "EM": the gold answer inside the prediction) and F1, as
markdown and CSV (`zs-ray experiment collect ROW=EVAL_DIR ...`).

Each row is one `zs-ray eval` output folder (its summary.json); the rows are compared as the paper does:
the macro mean over sources of EM (exact match after SQuAD normalisation). The standard error of that mean
treats each source's EM as a binomial share: se = sqrt(sum_s p_s (1 - p_s) / n_s) / S.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os

from zs_ray.eval.report import AVERAGE


def load_row(eval_dir: str) -> dict:
    path = os.path.join(eval_dir, "summary.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not an evaluation folder (run `zs-ray eval ... --out {eval_dir}`)")
    with open(path) as f:
        return json.load(f)


def average_em_se(summary: dict) -> float:
    """Standard error (in EM points) of the macro-average EM over the sources of one evaluation."""
    sources = [v for k, v in summary.items() if k != AVERAGE]
    var = sum(v["em"] * (1 - v["em"]) / max(1, v["n"]) for v in sources)  # summary.json holds shares (0..1)
    return 100 * math.sqrt(var) / max(1, len(sources))


def table(rows: dict[str, str]) -> tuple[str, str]:
    """(markdown, csv) of `rows` = {row name: eval folder}, one column of EM per source, then the average
    EM +- its standard error, the average F1, searches per question and the invalid-action share."""
    loaded = {name: load_row(d) for name, d in rows.items()}
    sources = []
    for r in loaded.values():
        sources += [k for k in r["summary"] if k != AVERAGE and k not in sources]
    head = ["row", *sources, "avg EM", "se", "avg cover-EM", "avg F1", "searches", "invalid %", "search at test time"]
    out = []
    for name, r in loaded.items():
        s, avg = r["summary"], r["summary"][AVERAGE]
        out.append([name, *[f"{100 * s[k]['em']:.1f}" if k in s else "–" for k in sources], f"{100 * avg['em']:.1f}",
                    f"{average_em_se(s):.1f}", f"{100 * avg['cover_em']:.1f}", f"{100 * avg['f1']:.1f}", f"{avg['searches']:.2f}",
                    f"{100 * avg['invalid_rate']:.1f}", r.get("search", {}).get("label", r.get("backend", ""))])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in out]
    buf = io.StringIO()
    csv.writer(buf).writerows([head, *out])
    return "\n".join(md), buf.getvalue()
