"""Smoke test of the bench's table / markdown code on fake numbers and of its CLI parsing (no timing)."""
from zs_ray.bench.report import Row, markdown, paired, table, write_section


def test_rows_table_and_markdown_on_fake_numbers(tmp_path):
    o, b, r = paired([30.0, 40.0, 50.0], [10.0, 10.0, 20.0])
    assert (o, b, r) == (40.0, 10.0, 3.0)  # medians, and the median of per-pair ratios
    rows = [Row("1. rollout", o, b, r, ">= 3", "tok/s"), Row("2. step", 1.0, 1.0, 1.0, "<= 0.7", "s"),
            Row("x: FAILED", None, None, None, "", note="boom"), Row("5. wall", 9.0, 15.0, 0.6, "<= 1", failed=True)]
    assert [x.met for x in rows] == [True, False, None, False]
    t = table(rows)
    assert "| 1. rollout | 40 tok/s | 10 tok/s | 3x | ≥ 3x | yes |" in t and "**no**" in t and "boom" in t
    info = {"cpu": "Fake CPU", "cores": 2, "ram_gib": 24.0, "gpu": "none", "python": "3.11", "date": "today"}
    md = markdown(rows, "quick", info, "zs-ray bench --quick", {"k": [1, 2]})
    assert "Fake CPU, 2 cores, 24.0 GiB" in md and "- k: [1, 2]" in md
    path = tmp_path / "B.md"
    path.write_text("# Benchmarks\n\nhand-written GPU estimates\n")
    write_section(str(path), "quick", md)
    write_section(str(path), "quick", md.replace("today", "tomorrow"))  # replaced in place, not appended
    text = path.read_text()
    assert "hand-written GPU estimates" in text and text.count("BEGIN generated: quick") == 1 and "tomorrow" in text


def test_quick_flag_parsing():
    from jobs.bench import parse_args

    a = parse_args(["--quick", "rollout.max_turn_tokens=32"])
    assert a.quick and a.overrides == ["rollout.max_turn_tokens=32"] and a.config is None
    assert not parse_args([]).quick


def test_cpu_busy_counts_a_busy_loop():
    """Figure 2's floor divides the machine's busy core-seconds by the cores: a busy loop must show up in them
    (other jobs on the machine only add to it, so the check is one-sided)."""
    import time

    from zs_ray.bench.assets import cpu_busy_s

    b0, t0 = cpu_busy_s(), time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        pass
    assert cpu_busy_s() - b0 >= 0.25


def test_cpu_by_process_names_whose_work_it_is():
    """Figure 2's per-process split: this process's busy loop lands on `driver`, a child's on its kind."""
    import subprocess
    import sys
    import time

    from zs_ray.bench.assets import cpu_by_process

    code = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 30: pass  # RolloutWorker"
    a = cpu_by_process()
    child = subprocess.Popen([sys.executable, "-c", code])
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        pass
    time.sleep(1.0)
    b = cpu_by_process()  # while the child runs: an exited process's CPU time is not counted
    child.kill()
    child.wait()
    assert b["driver"] - a.get("driver", 0.0) >= 0.2
    assert b.get("RolloutWorker", 0.0) - a.get("RolloutWorker", 0.0) >= 0.2


def test_models_from_a_quickstart_output(tmp_path):
    """`--models DIR` runs the figures on a quickstart's models; an unfinished output is refused by name."""
    import pytest

    from jobs.bench import parse_args
    from zs_ray.bench.assets import QUICKSTART_MODELS, prepare

    assert parse_args(["--models", "runs/qs/out"]).models == "runs/qs/out" and parse_args([]).models is None
    for f in list(QUICKSTART_MODELS.values())[:2]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    with pytest.raises(FileNotFoundError, match="simulator_sft/model.safetensors"):
        prepare(str(tmp_path / "work"), {}, models=str(tmp_path))
    (tmp_path / "simulator_sft").mkdir()
    (tmp_path / "simulator_sft" / "model.safetensors").write_text("")
    paths = prepare(str(tmp_path / "work"), {}, models=str(tmp_path))
    assert paths["policy"] == f"{tmp_path}/policy_warm" and paths["world"] == f"{tmp_path}/world"
    assert "quickstart" in paths["source"] and not (tmp_path / "work").exists()  # builds nothing of its own
