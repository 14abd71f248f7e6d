"""The README's first command, at smoke scale, as a user runs it: a subprocess of `zs-ray quickstart`
through every stage (world, prior with its copy probe, simulator SFT, warm-start eval, GRPO through
Ray/FSDP2/vLLM/Serve/MLflow, final eval) leaving its results table and MLflow store."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_smoke_runs_every_stage(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "zs_ray.cli", "quickstart", "--preset", "smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.load(open(out / "results.json"))
    assert set(res["stage_seconds"]) == {"world", "prior", "simulator", "eval warm start", "grpo", "eval grpo"}
    for stage in ("prior", "warm"):  # the copy probe ran on held-out questions
        acc = res["copy_accuracy"][stage]
        assert acc["n"] > 0 and 0.0 <= acc["all"] <= 1.0
    assert "| prior + warm start |" in res["table"] and "| GRPO + simulate_sft + curriculum |" in res["table"]
    assert res["grpo_last_step"] is not None
    assert (out / "mlflow.db").exists() and (out / "grpo" / "policy_hf" / "model.safetensors").exists()
    assert "held-out copy accuracy" in proc.stdout and "mlflow ui" in proc.stdout

    # the table on that output, one RL row, from a shorter warm start it builds: every row starts from it
    row = "GRPO + real BM25 search"
    proc = subprocess.run([sys.executable, "-m", "zs_ray.cli", "experiment", "table", "--preset", "smoke", "--out",
                           str(out), "--rl-steps", "1", "--warm-steps", "3", "--rows", row],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tdir = out / "table_rl1_warm3"
    md = (tdir / "table.md").read_text()
    assert "1 RL steps, a 3-step warm start" in md
    assert [ln.split("|")[1].strip() for ln in md.splitlines()[4:]] == [
        "prior + warm start", "warm start + more SFT, same compute as RL", row]
    assert (out / "policy_warm3" / "model.safetensors").exists()
    cfg = (tdir / "grpo___real_bm25_search" / "config.yaml").read_text()  # the row's folder: experiment.row_slug(row)
    assert f"policy_path: {out}/policy_warm3" in cfg


def test_stages_run_in_a_child_process_when_they_pickle():
    from zs_ray.world.quickstart import in_child_process

    assert in_child_process(os.getpid) != os.getpid()  # a spawned child; its memory goes when it exits
    assert in_child_process(lambda: os.getpid()) == os.getpid()  # a lambda does not pickle: runs here
    with pytest.raises(ZeroDivisionError):  # the child's exception reaches the caller
        in_child_process(divmod, 1, 0)
