"""Seed-compatible launch: the ZeroSearch seed's KEY VALUE command lines map onto zs-ray overrides."""
import os
import subprocess
import sys

import pytest

from zs_ray.config import ConfigError, load_config
from zs_ray.tools.seed_compat import SEED_KEYS, SeedArgError, build_command, main, seed_overrides, simulator_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CMD = ("NUM_GPUS_PER_NODE 4 MODEL_PATH Llama-3.2-3B DATA_PATH ZeroSearch_dataset TOTAL_STEPS 203 "
            "IP localhost SEARCH_MODE simulate_prompt SIMULATION_LLM Qwen2.5-14B-Instruct "
            "START_THRESHOLD 0.25 END_THRESHOLD 0.5").split()


@pytest.fixture(autouse=True)
def _in_empty_dir(tmp_path, monkeypatch):
    """Model names are resolved against local folders first: run where none exist."""
    monkeypatch.chdir(tmp_path)


def cfg_of(cmd):
    assert cmd[:2] == ["zs-ray", "train"]
    return load_config(cmd[2], cmd[3:])


@pytest.mark.parametrize("algo", ["grpo", "ppo", "reinforce"])
def test_the_seed_command(algo):
    cmd = build_command(algo, SEED_CMD)
    assert cmd[2].endswith(f"seed_{algo}.yaml")
    cfg = cfg_of(cmd)
    assert cfg.algorithm.name == algo
    r = cfg.resources
    assert r.device == "cuda" and r.policy_workers == 4 and r.rollout_workers == 4
    assert cfg.model.policy_path == "meta-llama/Llama-3.2-3B"
    assert list(cfg.data.train_files) == ["ZeroSearch_dataset/train.parquet"]
    assert list(cfg.data.test_files) == ["ZeroSearch_dataset/test.parquet"]
    assert cfg.trainer.steps == 203 and cfg.curriculum.total_steps == 203
    assert list(cfg.search.urls) == ["http://localhost:6001/v1"]
    assert cfg.search.backend == "simulate_prompt"
    assert cfg.search.model_name == "Qwen2.5-14B-Instruct"
    assert cfg.search.simulator_model == "Qwen/Qwen2.5-14B-Instruct"
    assert cfg.curriculum.start == 0.25 and cfg.curriculum.end == 0.5


def test_the_scripts_dry_run():
    for algo in ("grpo", "ppo", "reinforce"):
        script = os.path.join(ROOT, "scripts", f"train_{algo}.sh")
        out = subprocess.run(["bash", script, *SEED_CMD, "--dry-run"], capture_output=True, text=True,
                             env={**os.environ, "PYTHON": sys.executable}, timeout=120)
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip()
        assert line.startswith(f"zs-ray train configs/recipes/seed_{algo}.yaml algorithm.name={algo} ")
        assert "curriculum.start=0.25" in line and "model.policy_path=meta-llama/Llama-3.2-3B" in line


def test_the_scripts_pass_arguments_through_unchanged():
    for algo in ("grpo", "ppo", "reinforce"):
        with open(os.path.join(ROOT, "scripts", f"train_{algo}.sh")) as f:
            text = f.read()
        assert f'-m zs_ray.tools.seed_compat {algo} "$@"' in text


def test_sft_mode_and_local_folders(tmp_path):
    (tmp_path / "Qwen2.5-3B").mkdir()
    (tmp_path / "SearchSimulation_14B").mkdir()
    cfg = cfg_of(build_command("grpo", "MODEL_PATH Qwen2.5-3B SEARCH_MODE simulate_sft "
                                       "SIMULATION_LLM SearchSimulation_14B IP 10.1.2.3".split()))
    assert cfg.model.policy_path == "Qwen2.5-3B", "an existing local folder is used as is"
    assert cfg.search.simulator_model == "SearchSimulation_14B"
    assert cfg.search.model_name == "SearchSimulation_14B"
    assert list(cfg.search.urls) == ["http://10.1.2.3:6001/v1"]


def test_unknown_names_stay_verbatim():
    cfg = cfg_of(build_command("grpo", "MODEL_PATH /ckpt/my_policy SIMULATION_LLM my-sim DATA_PATH /d/".split()))
    assert cfg.model.policy_path == "/ckpt/my_policy"
    assert cfg.search.simulator_model == "my-sim" and cfg.search.model_name == "my-sim"
    assert list(cfg.data.train_files) == ["/d/train.parquet"]


def test_defaults_without_arguments():
    cfg = cfg_of(build_command("grpo", []))
    assert cfg.search.urls and cfg.trainer.steps == 203


@pytest.mark.parametrize("ip,url", [
    ("localhost", "http://localhost:6001/v1"),
    ("10.0.0.5", "http://10.0.0.5:6001/v1"),
    ("10.0.0.5:7000", "http://10.0.0.5:7000/v1"),
    ("http://sim.internal:8000", "http://sim.internal:8000/v1"),
    ("https://sim.internal/v1", "https://sim.internal/v1"),
    ("::1", "http://[::1]:6001/v1"),
])
def test_simulator_url(ip, url):
    assert simulator_url(ip) == url


def test_awkward_values_survive_the_override_syntax():
    cmd = build_command("grpo", ["MODEL_PATH", "/m/a,b", "DATA_PATH", "data/it's", "SIMULATION_LLM", "null"])
    cfg = cfg_of(cmd)
    assert cfg.model.policy_path == "/m/a,b"
    assert list(cfg.data.train_files) == ["data/it's/train.parquet"]
    assert cfg.search.model_name == "null"


def test_pass_through_overrides():
    ov = seed_overrides(["TOTAL_STEPS", "10", "trainer.prompts_per_step=8"])
    assert ov == ["trainer.steps=10", "curriculum.total_steps=10", "trainer.prompts_per_step=8"]
    cfg = cfg_of(build_command("grpo", ["TOTAL_STEPS", "10", "trainer.prompts_per_step=8"]))
    assert cfg.trainer.prompts_per_step == 8


@pytest.mark.parametrize("args,needle", [
    (["FOO", "1"], "unknown key 'FOO'"),
    (["num_gpus_per_node", "4"], "unknown key 'num_gpus_per_node'"),
    (["IP"], "missing value for IP"),
    (["IP", "MODEL_PATH", "x"], "missing value for IP"),
    (["TOTAL_STEPS", "many"], "TOTAL_STEPS must be an integer"),
    (["TOTAL_STEPS", "0"], "TOTAL_STEPS must be >= 1"),
    (["NUM_GPUS_PER_NODE", "four"], "NUM_GPUS_PER_NODE must be an integer"),
    (["START_THRESHOLD", "1.5"], "START_THRESHOLD must be in [0, 1]"),
    (["END_THRESHOLD", "half"], "END_THRESHOLD must be a number"),
    (["SEARCH_MODE", "google"], "SEARCH_MODE must be one of"),
    (["IP", "a", "IP", "b"], "IP is given twice"),
])
def test_errors_name_the_key(args, needle):
    with pytest.raises(SeedArgError) as e:
        build_command("grpo", args)
    assert needle in str(e.value)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(SeedArgError) as e:
        build_command("grpo", ["MODEL", "x"])
    for k in SEED_KEYS:
        assert k in str(e.value)


def test_bad_pass_through_override_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.stepz"):
        build_command("grpo", ["trainer.stepz=3"])


def test_main_exit_codes(capsys):
    assert main(["grpo", "--dry-run", *SEED_CMD]) == 0
    assert capsys.readouterr().out.startswith("zs-ray train ")
    assert main(["grpo", "--dry-run", "BOGUS", "1"]) == 2
    assert "unknown key 'BOGUS'" in capsys.readouterr().err
    # Without --dry-run the hardware preflight stops a GPU run on this CPU machine before training.
    import torch
    if not torch.cuda.is_available():
        assert main(["grpo", *SEED_CMD]) == 3
        err = capsys.readouterr().err
        assert "no CUDA GPU" in err


def _minimal_env(**extra):
    """A fresh shell's environment: no activated venv, no PYTHONPATH, nothing of this test run."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **extra}


def test_the_script_in_a_minimal_env_stops_at_preflight_without_traceback():
    """`bash scripts/train_grpo.sh ...` from a fresh shell (venv not activated): the preflight message alone."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the preflight passes here")
    out = subprocess.run(["bash", "scripts/train_grpo.sh", "NUM_GPUS_PER_NODE", "4", "MODEL_PATH", "Llama-3.2-3B"],
                         cwd=ROOT, capture_output=True, text=True, env=_minimal_env(PYTHON=sys.executable),
                         timeout=300)
    assert out.returncode != 0
    assert "preflight failed" in out.stderr and "no CUDA GPU" in out.stderr
    assert "Traceback" not in out.stderr and "ModuleNotFoundError" not in out.stderr


@pytest.mark.parametrize("algo", ["grpo", "ppo", "reinforce"])
def test_the_scripts_pick_the_project_venv(tmp_path, algo):
    """$PYTHON, else ./.venv/bin/python (scripts/install.sh's, not activated), else python3 on PATH."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in (f"train_{algo}.sh", "python.sh"):
        (repo / "scripts" / name).write_text(open(os.path.join(ROOT, "scripts", name)).read())

    def fake(path, label):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "{label} $*"\n')
        path.chmod(0o755)

    def run(**env):
        return subprocess.run(["bash", f"scripts/train_{algo}.sh", "TOTAL_STEPS", "3"], cwd=repo, capture_output=True,
                              text=True, env=_minimal_env(**env), timeout=60)
    fake(tmp_path / "bin" / "python3", "path-python3")
    path = f"{tmp_path}/bin:/usr/bin:/bin"
    assert run(PATH=path).stdout.strip() == f"path-python3 -m zs_ray.tools.seed_compat {algo} TOTAL_STEPS 3"
    fake(repo / ".venv" / "bin" / "python", "venv-python")
    assert run(PATH=path).stdout.strip() == f"venv-python -m zs_ray.tools.seed_compat {algo} TOTAL_STEPS 3"
    fake(tmp_path / "mine", "mine")
    assert run(PATH=path, PYTHON=str(tmp_path / "mine")).stdout.startswith("mine -m zs_ray.tools.seed_compat")
