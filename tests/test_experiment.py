"""The experiment table's pure parts: row output folders and the written md/csv/png."""
import csv

import pytest

from jobs.experiment import main as experiment_main
from zs_ray.world.experiment import RL_ROWS, row_slug, run_table, write_table


def test_row_folders_are_distinct_and_the_no_search_row_finds_the_zerosearch_policy():
    slugs = [row_slug(n) for n in RL_ROWS]
    assert len(set(slugs)) == len(slugs)
    # run_table evaluates this row's policy without search: the name must be an RL row, slugged the same way
    assert "GRPO + simulate_sft + curriculum" in RL_ROWS and row_slug("GRPO + simulate_sft + curriculum") in slugs


def test_write_table_writes_markdown_csv_and_plot(tmp_path):
    res = {"prior + warm start": {"em": 0.1, "cover_em": 0.2, "f1": 0.3, "searches": 1.0},
           "GRPO + real BM25 search": {"em": 0.25, "cover_em": 0.3, "f1": 0.4, "searches": 1.2}}
    paths = write_table(res, {"GRPO + real BM25 search": {"em": [(0, 0.1), (5, 0.2)], "f1": [(0, 0.3), (5, 0.4)]}}, str(tmp_path), 120.0, "full")
    md = open(paths["markdown"]).read()
    assert "| GRPO + real BM25 search | 25.0 | 30.0 | 40.0 | 1.20 |" in md and "preset `full`, 2 min" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["row"] for r in rows] == list(res) and float(rows[1]["em"]) == 0.25
    assert open(paths["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_write_table_names_a_non_default_rl_budget(tmp_path):
    res = {"prior + warm start": {"em": 0.1, "cover_em": 0.2, "f1": 0.3, "searches": 1.0}}
    md = open(write_table(res, {}, str(tmp_path), 60.0, "long", 240)["markdown"]).read()
    assert "preset `long`, 240 RL steps, 1 min" in md
    md = open(write_table(res, {}, str(tmp_path), 60.0, "long", 60, 60, ["PPO + x"])["markdown"]).read()
    assert "preset `long`, 60 RL steps, a 60-step warm start, 1 min, " in md
    assert "; trained in an earlier run, evaluated again: PPO + x." in md


def test_an_rl_budget_below_one_step_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="rl_steps must be >= 1"):
        run_table(str(tmp_path), "smoke", rl_steps=0)
    with pytest.raises(SystemExit):
        experiment_main(["table", "--out", str(tmp_path), "--rl-steps", "0"])
    assert "--rl-steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="warm_steps must be >= 1"):
        run_table(str(tmp_path), "smoke", warm_steps=0)
    with pytest.raises(SystemExit):
        experiment_main(["table", "--out", str(tmp_path), "--warm-steps", "-2"])
    assert "--warm-steps must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written
