"""The reporting half of `zs-ray bench` (the measurements are in zs_ray/bench/runner.py): a figure's `Row` (ours,
baseline, ratio, target, met?), `paired` medians of alternately measured variants, the markdown table and its
section of BENCHMARKS.md (`markdown`, `write_section`), the machine's description (`machine`) and the MLflow
record (`log_mlflow`, experiment `zs-ray-bench`)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional


@dataclass
class Row:
    figure: str
    ours: Optional[float]
    baseline: Optional[float]
    ratio: Optional[float]
    target: str  # ">= 3" / "<= 0.7"
    unit: str = ""
    note: str = ""
    failed: bool = False  # the measured thing itself failed (e.g. the quickstart did not finish): not met

    @property
    def met(self) -> Optional[bool]:
        if self.failed:
            return False
        if self.ratio is None or not self.target:
            return None
        op, v = self.target.split()
        return self.ratio >= float(v) if op == ">=" else self.ratio <= float(v)


def paired(ours: list[float], base: list[float], ratio: Callable[[float, float], float] = lambda a, b: a / b):
    """Medians of both sides and the median of the per-repetition ratios."""
    rs = [ratio(a, b) for a, b in zip(ours, base)]
    return statistics.median(ours), statistics.median(base), statistics.median(rs)


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(rows: list[Row]) -> str:
    lines = ["| figure | ours | baseline | ratio | target | met? | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "–"}[r.met]
        unit = f" {r.unit}" if r.unit else ""
        ratio = f"{r.ratio:.3g}x" if r.ratio is not None else "–"
        lines.append(f"| {r.figure} | {_fmt(r.ours)}{unit if r.ours is not None else ''} | "
                     f"{_fmt(r.baseline)}{unit if r.baseline is not None else ''} | {ratio} | "
                     f"{r.target.replace('>=', '≥').replace('<=', '≤') + 'x' if r.target else '–'} | {met} | {r.note} |")
    return "\n".join(lines)


def machine() -> dict:
    import psutil

    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    info = {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001
        info["gpu"] = "?"
    return info


def markdown(rows: list[Row], mode: str, info: dict, command: str, details: dict) -> str:
    head = (f"### `{command}` — {info['date']}\n\n"
            f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, GPU: {info['gpu']}, "
            f"Python {info['python']}. Preset `{mode}`. Each ratio is the median of per-repetition ratios of two "
            f"variants run alternately in the same process (shared, noisy machine: absolute numbers are "
            f"indicative only).\n\n")
    extra = "\n".join(f"- {k}: {json.dumps(v, default=str)}" for k, v in details.items())
    return head + table(rows) + ("\n\nDetails:\n\n" + extra if extra else "") + "\n"


def write_section(path: str, mode: str, text: str) -> None:
    """Replace (or append) this mode's generated section of BENCHMARKS.md; the rest is left as it is."""
    begin, end = f"<!-- BEGIN generated: {mode} -->", f"<!-- END generated: {mode} -->"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def log_mlflow(rows: list[Row], mode: str, info: dict, text: str, root: str, log=print) -> None:
    """Experiment `zs-ray-bench` in a sqlite store under runs/bench/."""
    import re

    try:
        import mlflow

        from zs_ray.train.tracking import set_experiment

        os.makedirs(root, exist_ok=True)
        set_experiment(f"sqlite:///{os.path.join(root, 'mlflow.db')}", "zs-ray-bench")
        with mlflow.start_run(run_name=f"bench-{mode}", tags={"zs_ray.stage": "bench", "zs_ray.bench_mode": mode}):
            mlflow.log_params({"mode": mode, **{k: str(v) for k, v in info.items()}})
            for r in rows:
                key = re.sub(r"[^0-9a-zA-Z_]+", "_", r.figure).strip("_")[:200]
                mlflow.log_metrics({f"{key}/{k}": v for k, v in (("ours", r.ours), ("baseline", r.baseline),
                                                                ("ratio", r.ratio)) if v is not None})
            mlflow.log_text(text, "BENCHMARKS_section.md")
            mlflow.log_dict([asdict(r) | {"met": r.met} for r in rows], "rows.json")
    except Exception as e:  # noqa: BLE001 - the table is already printed and written
        log(f"[bench] MLflow logging failed: {e!r}")
