"""`zs-ray serve` stops on a missing input before deploying anything (exit 3, the config key and path named), and
a replica whose constructor fails stops the deployment (deploy_problem) instead of Serve re-adding it."""
import os
import subprocess
import sys
from types import SimpleNamespace

from actors.agent_server import deploy_problem
from zs_ray.preflight import path_problems
from zs_ray.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "cpu_default.yaml")


def _serve_problems(cfg):
    return path_problems(cfg, "serve")


def test_missing_files_are_named_by_config_key(tmp_path):
    model = tmp_path / "policy"
    model.mkdir()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "1", "contents": "x"}\n')
    ok = load_config(DEFAULT, [f"model.policy_path={model}", "search.backend=bm25", f"search.corpus={corpus}"])
    assert _serve_problems(ok) == []
    bad = load_config(DEFAULT, [f"model.policy_path={tmp_path}/nope", "search.backend=bm25",
                                f"search.corpus={tmp_path}/none.jsonl"])
    probs = _serve_problems(bad)
    assert len(probs) == 2
    assert "model.policy_path" in probs[0] and f"{tmp_path}/nope" in probs[0]
    assert "search.corpus" in probs[1] and f"{tmp_path}/none.jsonl" in probs[1]
    sim = load_config(DEFAULT, [f"model.policy_path={model}", f"search.simulator_model={tmp_path}/sim"])
    assert [p for p in _serve_problems(sim) if "search.simulator_model" in p]
    # an external simulator server needs no local model; a hub id must be in the local HF cache (hub access is off)
    assert _serve_problems(load_config(DEFAULT, [f"model.policy_path={model}",
                                                "search.urls=[http://127.0.0.1:1/v1]"])) == []
    hub = _serve_problems(load_config(DEFAULT, ["model.policy_path=Qwen/Qwen2.5-3B-Instruct", "search.backend=bm25",
                                                f"search.corpus={corpus}"]))
    assert len(hub) == 1 and "Qwen/Qwen2.5-3B-Instruct" in hub[0] and "HF cache" in hub[0]


def test_serve_exits_nonzero_with_the_error_before_starting_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zs_ray.cli", "serve", DEFAULT, f"model.policy_path={tmp_path}/p",
                           f"search.corpus={tmp_path}/corpus.jsonl", "search.backend=bm25"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # a preflight refusal
    assert f"{tmp_path}/corpus.jsonl" in proc.stderr and "search.corpus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Started a local Ray" not in proc.stdout + proc.stderr


def _app(status, deployments):
    return SimpleNamespace(status=status, message="", deployments={
        name: SimpleNamespace(status=s, status_trigger=t, message=m) for name, (s, t, m) in deployments.items()})


def test_deploy_problem_stops_on_the_first_constructor_failure():
    assert deploy_problem(_app("DEPLOYING", {"AgentServer": ("UPDATING", "CONFIG_UPDATE_STARTED", "")})) is None
    assert deploy_problem(_app("RUNNING", {"AgentServer": ("HEALTHY", "CONFIG_UPDATE_COMPLETED", "")})) is None
    retrying = _app("DEPLOYING", {"AgentServer": (
        "UPDATING", "REPLICA_STARTUP_FAILED", "A replica failed to start. Retrying 2 more time(s). corpus file not found")})
    assert "corpus file not found" in deploy_problem(retrying)
    for status in ("DEPLOY_FAILED", "UNHEALTHY"):
        msg = deploy_problem(_app(status, {"AgentServer": (status, "HEALTH_CHECK_FAILED", "replica died")}))
        assert f"deployment AgentServer is {status}: replica died" in msg
