import subprocess
import sys

import pytest

from zs_ray.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for c in ("train", "quickstart", "eval", "world", "simulator"):
        assert c in out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "zs_ray.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "zs-ray" in r.stdout


def test_unknown_key_is_a_clear_error(capsys):
    rc = main(["config", "configs/cpu_default.yaml", "trainer.stpes=3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "trainer.stpes" in err and "trainer.steps" in err


def test_config_shows_resolved(capsys):
    assert main(["config", "configs/cpu_default.yaml", "trainer.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


def test_unknown_command():
    with pytest.raises(SystemExit):
        main(["nope"])


def test_missing_policy_path_is_refused_before_anything_starts(capsys, tmp_path):
    """A wrong path names its key and the path (no hub error from transformers, no traceback, no Ray)."""
    import ray

    world = tmp_path / "world"
    world.mkdir()
    (world / "train.jsonl").write_text("{}\n")
    rc = main(["train", "configs/cpu_default.yaml", "model.policy_path=runs/x/does_not_exist",
               f"data.train_files=[{world}/train.jsonl]", f"data.test_files=[{world}/gone.jsonl]",
               f"trainer.output_dir={tmp_path}/out", "trainer.eval_every=5", "tracking.enabled=false"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "Repo id" not in err
    assert "model.policy_path: no such model folder: runs/x/does_not_exist" in err
    assert f"data.test_files[0]: no such file or folder: {world}/gone.jsonl" in err  # all of them, in one error
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_gpu_recipe_on_a_cpu_machine_prints_the_preflight_alone(capsys):
    import glob

    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the preflight passes here")
    recipe = sorted(glob.glob("configs/recipes/qwen2.5-3b-base_sft14b_grpo.yaml"))[0]
    rc = main(["train", recipe])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert err.startswith("zs-ray train: preflight failed") and "no CUDA GPU" in err
