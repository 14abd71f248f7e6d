"""The evaluation's report: per-source and averaged scores of scored records, as a markdown table, a CSV, a
JSONL, a PNG bar chart and flat MLflow metrics; and the progress line. Pure (matplotlib optional)."""
from __future__ import annotations

import csv
import json
import sys
import textwrap
import time
from collections import OrderedDict
from typing import Sequence

METRIC_NAMES = ("em", "cover_em", "f1")
AVERAGE = "average"  # macro mean over data sources, the paper's "Avg." column


def aggregate(records: Sequence[dict]) -> "OrderedDict[str, dict]":
    """Per data source (in first-seen order), then AVERAGE = the macro mean over sources.

    Each entry: n, em, cover_em, f1 (means), searches (mean per question), invalid_rate (share of
    questions with at least one invalid action), answered (share with an <answer>), errors (count).
    """
    by_source: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in records:
        by_source.setdefault(r["data_source"], []).append(r)
    out: "OrderedDict[str, dict]" = OrderedDict()
    for ds, rs in by_source.items():
        n = len(rs)
        out[ds] = {"n": n, **{m: sum(float(r[m]) for r in rs) / n for m in METRIC_NAMES},
                   "searches": sum(int(r.get("searches", 0)) for r in rs) / n,
                   "invalid_rate": sum(int(r.get("invalid_actions", 0)) > 0 for r in rs) / n,
                   "answered": sum(r.get("answer") is not None for r in rs) / n,
                   "errors": sum(bool(r.get("error")) for r in rs)}
    if out:
        keys = [k for k in next(iter(out.values())) if k not in ("n", "errors")]
        out[AVERAGE] = {"n": sum(v["n"] for v in out.values()),
                        **{k: sum(v[k] for v in out.values()) / len(out) for k in keys},
                        "errors": sum(v["errors"] for v in out.values())}
    return out


def eval_title(mode: str, policy: str, search: str, topk: int, max_turns: int, n: int, elapsed_s: float) -> str:
    """The table's header line; `search` names the search the answers came from (a simulator says so)."""
    where = search if mode == "direct" else f"{search} (top-{topk})"
    return f"{mode} | policy {policy} | search: {where} | max_turns {max_turns} | {n} questions, {elapsed_s:.0f}s"


COLUMNS = ("n", "em", "cover_em", "f1", "searches", "invalid_rate", "answered", "errors")


def markdown_table(summary: dict, title: str = "") -> str:
    """Scores ×100 (as papers report them), searches per question as is."""
    head = "| data source | " + " | ".join(COLUMNS) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for ds, v in summary.items():
        cells = []
        for c in COLUMNS:
            x = v[c]
            if c in ("n", "errors"):
                cells.append(str(int(x)))
            elif c == "searches":
                cells.append(f"{x:.2f}")
            else:
                cells.append(f"{100 * x:.2f}")
        name = f"**{ds}**" if ds == AVERAGE else ds
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(summary: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("data_source",) + COLUMNS)
        for ds, v in summary.items():
            w.writerow((ds,) + tuple(v[c] for c in COLUMNS))


def write_jsonl(records: Sequence[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def plot_summary(summary: dict, path: str, title: str = "") -> bool:
    """Grouped bars of EM / cover-EM / F1 per data source; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on these machines
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(summary)
    width = 0.8 / len(METRIC_NAMES)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(names) + 1), 3.6))
    for i, m in enumerate(METRIC_NAMES):
        xs = [j + (i - (len(METRIC_NAMES) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [100 * summary[n][m] for n in names], width, label=m)
    ax.set_xticks(range(len(names)), names, rotation=20)
    top = max([100 * summary[n][m] for n in names for m in METRIC_NAMES] + [0.0])
    ax.set_ylim(0, max(5.0, min(100.0, top * 1.15)))  # an all-zero run still gets a sane axis
    ax.set_ylabel("score ×100")
    ax.set_title(textwrap.fill(title, 70), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """`eval/<source>/<metric>` for MLflow (names keep only characters MLflow accepts)."""
    out = {}
    for ds, v in summary.items():
        safe = "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in ds)
        for k, x in v.items():
            out[f"{prefix}/{safe}/{k}"] = float(x)
    return out


class Progress:
    """One status line with the running EM: tqdm when installed, else a carriage-return line."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.n, self.em_sum, self.t0 = 0, 0.0, time.time()
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, rec: dict) -> None:
        self.n += 1
        self.em_sum += float(rec.get("em", 0.0))
        if not self.enabled:
            return
        em = self.em_sum / self.n
        if self._bar is not None:
            self._bar.set_postfix(em=f"{em:.3f}", refresh=False)
            self._bar.update(1)
        else:
            rate = self.n / max(time.time() - self.t0, 1e-9)
            self.stream.write(f"\r{self.desc}: {self.n}/{self.total}  em {em:.3f}  {rate:.1f} q/s")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self.stream.write("\n")
