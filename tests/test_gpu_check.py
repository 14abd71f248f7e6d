"""scripts/gpu_check.sh: the GPU check's syntax, its refusal on a machine without a GPU (at once, before
anything is installed) and its --dry-run plan. The check itself needs an NVIDIA GPU (docs/cluster.md §12)."""
import os
import shutil
import subprocess
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SCRIPT = os.path.join("scripts", "gpu_check.sh")


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    r = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU " in r.stdout


def _state(path):
    """What the check must leave alone: whether the path exists, and its mtime."""
    return os.path.exists(path), (os.stat(path).st_mtime_ns if os.path.exists(path) else None)


def test_syntax():
    r = subprocess.run(["bash", "-n", SCRIPT], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(_has_gpu(), reason="nvidia-smi lists a GPU here: the check would run, not refuse")
def test_refuses_at_once_without_a_gpu_and_installs_nothing():
    venv, out = os.path.join(REPO, ".venv"), os.path.join(REPO, "runs", "gpu_check")
    before = (_state(venv), _state(out))
    t = time.perf_counter()
    r = subprocess.run(["bash", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=30)
    took = time.perf_counter() - t
    assert r.returncode != 0, r.stdout + r.stderr
    assert took < 5, f"the refusal took {took:.1f} s"
    assert "refused" in r.stderr and "no GPU" in r.stderr and "nvidia-smi" in r.stderr, r.stderr
    assert "nothing was installed" in r.stderr, r.stderr
    assert (_state(venv), _state(out)) == before, ".venv or runs/gpu_check changed"


def test_refuses_when_nvidia_smi_lists_no_gpu(tmp_path):
    """A driver without a device (nvidia-smi present, no GPU line) is refused the same way."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    smi.chmod(0o755)
    venv = os.path.join(REPO, ".venv")
    before = _state(venv)
    r = subprocess.run(["bash", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env={**os.environ, "NVIDIA_SMI": str(smi)})
    assert r.returncode != 0
    assert "no GPU seen by nvidia-smi" in r.stderr and "No devices were found" in r.stderr, r.stderr
    assert _state(venv) == before


def test_dry_run_lists_the_four_steps_and_changes_nothing():
    venv = os.path.join(REPO, ".venv")
    before = _state(venv)
    r = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    steps = {ln.split(".", 1)[0].strip() for ln in lines if ln[:3].strip().rstrip(".").isdigit()}
    assert {"1", "2", "3", "4"} <= steps, r.stdout
    text = r.stdout
    assert "bash scripts/install.sh gpu,dev" in text
    assert "tests/test_weight_sync.py -k nccl" in text
    assert "zs-ray models import --out runs/models/smollm2-135m-instruct" in text
    for key in ("resources.device=cuda", "model.dtype=bfloat16", "rollout.engine=vllm",
                "search.backend=simulate_prompt", "search.simulator_model=runs/models/smollm2-135m-instruct",
                "trainer.steps=5"):
        assert key in text, key
    bench = next(ln for ln in lines if "zs-ray bench" in ln)
    assert "resources.device=cuda" in bench and "--skip '5. quickstart'" in bench, bench
    assert _state(venv) == before


def test_dry_run_train_command_is_a_valid_config():
    """The overrides the check passes to `zs-ray train` load against the schema (no unknown key, no bad value)."""
    from zs_ray.config import load_config

    r = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=30)
    line = next(ln for ln in r.stdout.splitlines() if "zs-ray train " in ln)
    args = line.split("zs-ray train ", 1)[1].replace("=ATTN", "=sdpa").split()
    cfg = load_config(os.path.join(REPO, args[0]), args[1:])
    assert cfg.resources.device == "cuda" and cfg.model.dtype == "bfloat16" and cfg.trainer.steps == 5
    assert cfg.search.simulator_model == cfg.model.policy_path == "runs/models/smollm2-135m-instruct"
    r = cfg.resources
    assert r.policy_workers * r.gpus_per_policy_worker + r.gpus_per_rollout_worker + r.gpus_per_simulator <= 1


def test_unknown_argument_is_refused():
    r = subprocess.run(["bash", SCRIPT, "--bogus"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--bogus" in r.stderr
