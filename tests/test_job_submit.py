"""`ray job submit` against a real local head (loopback only): a 2-step training job runs inside the
cluster and leaves an MLflow run with params and per-step metrics.

The head has its own temp dir (RAY_TMPDIR too, so its `ray_current_cluster` file is private) and its
own ports; it is stopped by killing exactly the processes whose command line names that temp dir,
never with `ray stop` (which would stop every Ray on the machine).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from zs_ray.runtime import free_port

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
EXCLUDES = [".venv", "runs", "mlruns", "data", "models", ".git", "**/__pycache__", ".pytest_cache"]



def train_overrides(world: str, out: str, steps: int = 2) -> list[str]:
    """tests/test_trainer.py's make_cfg as `key=value` CLI overrides (absolute paths: the job runs elsewhere)."""
    return [f"data.train_files=[{world}/world/train.parquet]", f"data.test_files=[{world}/world/test.parquet]",
            f"model.policy_path={world}/policy", "search.backend=bm25", f"search.corpus={world}/world/corpus.jsonl",
            f"search.index_dir={out}/bm25", "search.topk=2", "rollout.n_samples=2", "rollout.max_turns=1",
            "rollout.max_turn_tokens=16", "rollout.max_obs_tokens=96", "rollout.max_context_tokens=512",
            "rollout.kv_cache_gb=0.25", "trainer.prompts_per_step=3", f"trainer.output_dir={out}/run",
            f"trainer.steps={steps}", "trainer.staleness=0", "trainer.checkpoint_every=0", "trainer.sample_every=1",
            "algorithm.lr=1e-3", "algorithm.micro_batch_size=4", "resources.policy_workers=1",
            "resources.rollout_workers=1", "resources.num_cpus=4", f"tracking.uri=sqlite:///{out}/mlflow.db",
            "tracking.experiment=zs-job-submit", "tracking.run_name=job-submit-test"]


def pids_with(marker: str) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(p))
            except OSError:
                pass
    return out


def kill_by_marker(marker: str, grace_s: float = 10.0) -> None:
    """Stop the processes this test started: those whose command line names its private temp dir."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_with(marker):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        t = time.time()
        while pids_with(marker) and time.time() - t < grace_s:
            time.sleep(0.5)


@pytest.fixture
def head():
    """A real `ray start --head` on 127.0.0.1 with a private temp dir and free ports."""
    from zs_ray.runtime import local_env

    tmp = tempfile.mkdtemp(prefix="zsjob_", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    env = {**os.environ, **local_env(tmp), "RAY_TMPDIR": tmp, "ZS_RAY_HOME": tmp,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=4", "--num-gpus=0",
           f"--temp-dir={tmp}/ray", "--disable-usage-stats"]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        yield {"tmp": tmp, "env": env, "address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}"}
    finally:
        kill_by_marker(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def test_job_submit_trains_and_logs_to_mlflow(head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from zs_ray.world.files import build_world_assets

    tmp, env = head["tmp"], head["env"]
    world, out = os.path.join(tmp, "world"), os.path.join(tmp, "out")
    build_world_assets(world, seed=0, n_entities=40, n_test_entities=8, n_pretrain=0)
    runtime_env = {"working_dir": ROOT, "excludes": EXCLUDES, "env_vars": {"ZS_RAY_HOME": tmp}}
    sid = f"zs-test-{os.getpid()}-{int(time.time())}"
    cmd = [RAY, "job", "submit", "--address", head["address"], "--submission-id", sid, "--no-wait",
           "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "jobs/train.py", "configs/cpu_default.yaml", *train_overrides(world, out)]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    client = JobSubmissionClient(head["address"])
    status, deadline = None, time.time() + 240
    while time.time() < deadline:
        status = client.get_job_status(sid)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(2)
    logs = client.get_job_logs(sid)
    if status != JobStatus.SUCCEEDED:
        client.stop_job(sid)
    assert status == JobStatus.SUCCEEDED, f"job {sid} is {status} after {time.time() - t0:.0f}s:\n{logs[-4000:]}"
    assert "[train] step 2/2" in logs
    info = client.get_job_info(sid)
    assert info.runtime_env.get("working_dir", "").startswith("gcs://")  # the repo was uploaded, not read in place

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["zs-job-submit"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("mlflow.runName") == "job-submit-test"
    params = run.data.params
    assert params["trainer.steps"] == "2" and params["search.backend"] == "bm25"
    assert params["model.policy_path"] == f"{world}/policy"
    hist = MlflowClient(f"sqlite:///{out}/mlflow.db").get_metric_history(run.info.run_id, "reward/mean")
    assert sorted(m.step for m in hist) == [1, 2]
    assert os.path.exists(os.path.join(out, "run", "policy_hf", "model.safetensors"))
