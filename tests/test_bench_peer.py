"""`zs-ray bench peer` at a tiny size: both sides (zs-ray's Trainer, TRL's GRPOTrainer) really train, each in its
own process, on the same questions with the settings taken from one config; both final policies are evaluated
by the same code; the markdown shows the figures and both sides' settings. Sizes and timings here mean nothing:
the test keeps the harness from rotting (the real comparison: BENCHMARKS.md, section `peer`)."""
import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    from zs_ray.world.files import build_world_assets

    root = tmp_path_factory.mktemp("peer")
    w = str(root / "world")
    build_world_assets(w, seed=0, n_entities=40, n_test_entities=8, n_pretrain=0)
    path = root / "tiny.yaml"
    # rollout.engine=hf: the harness, not vLLM's start (tested elsewhere), is what this test is about
    path.write_text(f"""
data: {{train_files: [{w}/world/train.parquet], test_files: [{w}/world/test.parquet]}}
model: {{policy_path: {w}/policy, trainable_layers: 1}}
search: {{backend: bm25, corpus: {w}/world/corpus.jsonl, index_dir: {root}/bm25}}
rollout: {{engine: hf, n_samples: 2, max_turn_tokens: 16, max_context_tokens: 512}}
algorithm: {{lr: 1.0e-3, micro_batch_size: 4, kl_coef: 0.0}}
trainer: {{prompts_per_step: 2}}
resources: {{policy_workers: 1, num_cpus: 8}}
""")
    return str(path), root


def test_trl_and_zs_ray_side_by_side_on_the_same_task(tiny_config):
    pytest.importorskip("trl", reason="TRL is the bench extra: bash scripts/install.sh installs it")
    config, root = tiny_config
    work, md_path = root / "work", root / "B.md"
    md_path.write_text("# Benchmarks\n\nkept as it is\n")
    r = subprocess.run([sys.executable, "-m", "zs_ray.cli", "bench", "peer", "--config", config, "--steps", "3",
                        "--eval-rows", "4", "--format-steps", "2", "--work", str(work), "--out", str(md_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.load(open(work / "result.json"))

    from zs_ray.data.qa import load_rows

    questions = [row["question"] for row in load_rows(str(work / "train.parquet"))]
    assert len(questions) == 3 * 2  # steps x prompts_per_step, each asked once
    start = str(work / "format_start")  # both sides start from the format start, which the task never saw
    assert res["start"] == start and os.path.exists(os.path.join(start, "model.safetensors"))
    assert res["settings"]["trl"]["model"] == start and f"model.policy_path={start}" in res["overrides"]
    assert res["start_eval"]["n"] == 4
    for side in ("zs", "trl"):
        steps = res[side]["steps"]
        assert len(steps) == 3, side
        for s in steps:
            assert s["wall_s"] > 0 and 0 <= s["reward"] <= 1 and s["sampled_tokens"] > 0, (side, s)
            assert 0 <= s["gen_s"] <= s["wall_s"], (side, s)
        assert os.path.exists(os.path.join(res[side]["policy"], "model.safetensors")), side
        assert res[side]["eval"]["n"] == 4 and 0 <= res[side]["eval"]["f1"] <= 1, side
        assert all(math.isfinite(v) for v in res[side]["figures"].values()), side
    assert res["zs"]["steps"][-1]["trained_trajectories"] >= 0
    trl_cfg = res["trl"]["config"]  # every shared setting came from the one config
    assert trl_cfg["num_generations"] == 2 and trl_cfg["learning_rate"] == 1e-3 and trl_cfg["beta"] == 0.0
    assert trl_cfg["max_completion_length"] == 16 and trl_cfg["use_vllm"] is False
    assert trl_cfg["per_device_train_batch_size"] * trl_cfg["gradient_accumulation_steps"] == 2 * 2
    zs_algo = res["settings"]["zs"]["algorithm"]
    assert zs_algo["entropy_coef"] == 0 and res["settings"]["zs"]["rollout"]["max_turns"] == 0

    text = md_path.read_text()
    assert text.startswith("# Benchmarks\n\nkept as it is\n")
    assert "<!-- BEGIN generated: peer -->" in text and "<!-- END generated: peer -->" in text
    for fig in ("peer 1. wall time per step", "peer 2. sampled tokens per second", "peer 3. training reward",
                "peer 4. held-out F1"):
        assert fig in text, fig
    assert f"TRL {res['trl']['version']}" in text and '"loss_type": "dapo"' in text and "algorithm.lr" in text


def test_refused_with_the_install_hint_when_trl_is_missing(tmp_path):
    """Without TRL the command says how to get it, and nothing runs."""
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda n, *a: None if n == 'trl' else real(n, *a); "
            "from zs_ray.cli import main; sys.exit(main(['bench', 'peer', '--work', %r]))" % str(tmp_path / "w"))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "TRL is not installed" in r.stderr and ".[bench]" in r.stderr
    assert not (tmp_path / "w").exists()
