"""The console shows progress, results and errors; the logs of vLLM, Ray actors and Serve replicas go to files in
the run folder (zs_ray.runtime.quiet_logs, which the quickstart applies), unless ZS_RAY_VERBOSE=1. A real local
Ray in a subprocess: one actor logs a WARNING through the `vllm` logger (as vLLM's arg_utils does at every engine
start) and prints; the driver's captured output must not show either, the run folder's log files must."""
import glob
import json
import logging.config
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import os, sys, time
from zs_ray.runtime import init_ray, quiet_logs

print("LOG DIR", quiet_logs(sys.argv[1]), flush=True)
import ray

init_ray(num_cpus=1, temp_dir=sys.argv[2])


@ray.remote(num_cpus=0)
class Noisy:
    def speak(self):
        import logging
        logging.getLogger("vllm.engine.arg_utils").warning("QUIET-TEST vllm warning")
        print("QUIET-TEST actor print", flush=True)
        return os.environ.get("VLLM_LOGGING_CONFIG_PATH")


conf = ray.get(Noisy.remote().speak.remote())
time.sleep(2)  # the log monitor streams worker output to a log_to_driver driver within ~1 s
print("ACTOR VLLM CONFIG", conf, flush=True)
ray.shutdown()
print("DRIVER DONE", flush=True)
"""


@pytest.fixture
def ray_tmp():
    d = tempfile.mkdtemp(prefix="zsq", dir="/tmp")  # short: Ray's socket paths live under it
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run(run_dir: str, ray_tmp: str, verbose: bool):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ZS_RAY_LOG_DIR", "ZS_RAY_VERBOSE",
                                                              "VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if verbose:
        env["ZS_RAY_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", DRIVER, os.path.join(run_dir, "logs"), ray_tmp], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "DRIVER DONE" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_quiet_console_keeps_actor_logs_in_the_run_folder(tmp_path, ray_tmp):
    out = _run(str(tmp_path), ray_tmp, verbose=False)
    logs = tmp_path / "logs"
    assert f"LOG DIR {logs}" in out
    assert "QUIET-TEST" not in out  # neither the actor's vllm WARNING nor its print reached the console
    assert f"ACTOR VLLM CONFIG {logs}/vllm_logging.json" in out  # the vLLM log config travels to actors
    assert os.path.islink(logs / "ray")  # Ray's per-worker log files, linked from the run folder
    worker_logs = "".join(open(p, errors="replace").read() for p in glob.glob(str(logs / "ray" / "worker-*")))
    assert "QUIET-TEST vllm warning" in worker_logs and "QUIET-TEST actor print" in worker_logs


def test_vllm_log_config_writes_vllm_lines_to_the_run_folder(tmp_path, monkeypatch):
    """The file vLLM loads (VLLM_LOGGING_CONFIG_PATH) at import, in every process: its `vllm` lines go to vllm.log."""
    from zs_ray.runtime import quiet_logs

    for k in ("ZS_RAY_VERBOSE", "ZS_RAY_LOG_DIR", "VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING"):
        monkeypatch.setenv(k, "")  # recorded, so what quiet_logs sets is undone after the test
        monkeypatch.delenv(k)
    log_dir = quiet_logs(str(tmp_path / "logs"))
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == f"{log_dir}/vllm_logging.json"
    with open(os.environ["VLLM_LOGGING_CONFIG_PATH"]) as f:
        logging.config.dictConfig(json.load(f))
    try:
        logging.getLogger("vllm.engine.arg_utils").warning("QUIET-TEST to the file")
        for h in logging.getLogger("vllm").handlers:
            h.flush()
        assert "QUIET-TEST to the file" in open(f"{log_dir}/vllm.log").read()
        assert logging.getLogger("vllm").propagate is False  # not also on the console through the root logger
    finally:
        for h in logging.getLogger("vllm").handlers[:]:
            h.close()
            logging.getLogger("vllm").removeHandler(h)
    monkeypatch.setenv("ZS_RAY_VERBOSE", "1")
    assert quiet_logs(str(tmp_path / "other")) is None and not (tmp_path / "other").exists()


def test_verbose_puts_the_actor_output_on_the_console(tmp_path, ray_tmp):
    out = _run(str(tmp_path), ray_tmp, verbose=True)
    assert "LOG DIR None" in out
    assert "QUIET-TEST vllm warning" in out and "QUIET-TEST actor print" in out
