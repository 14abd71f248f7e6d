"""Security properties, checked on the source and the defaults (fast, no Ray).

- no remote code unless the config asks for it: every `trust_remote_code=` is False or the config value;
- model weights load from safetensors (`use_safetensors=True`), never a pickle;
- `torch.load` only with `weights_only=True`;
- Serve, Ray, vLLM and the MLflow hint bind 127.0.0.1 by default;
- no secret in the saved run config (MLflow params: tests/test_tracking.py).
"""
import ast
import os

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SOURCE_DIRS = ("zs_ray", "actors", "jobs", "scripts")


def _sources():
    for d in SOURCE_DIRS:
        for root, _, files in os.walk(os.path.join(REPO, d)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    yield os.path.relpath(path, REPO), ast.parse(open(path).read(), filename=path)


def _calls(pred):
    """(file:line, Call node) for every call whose function satisfies pred(name, owner)."""
    out = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
            if pred(name, owner):
                out.append((f"{rel}:{node.lineno}", node))
    return out


def _kw(node, name):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_sources_were_found():
    assert len(list(_sources())) > 20


def test_trust_remote_code_is_false_or_the_config_value():
    from zs_ray.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    bad = []
    for where, node in _calls(lambda n, o: True):
        v = _kw(node, "trust_remote_code")
        if v is None:
            continue  # transformers' default: False
        src = ast.unparse(v)
        if not (src == "False" or "trust_remote_code" in src):  # a literal True, or anything not from config
            bad.append(f"{where}: trust_remote_code={src}")
    assert not bad, bad


def _model_loads():
    return _calls(lambda n, o: n == "from_pretrained" and o.startswith("AutoModel"))


def test_policy_weights_load_from_safetensors():
    """The training path (FSDP policy / reference / critic workers) loads safetensors only."""
    loads = [(w, n) for w, n in _model_loads() if w.startswith("actors/policy_worker.py")]
    assert loads and all(ast.unparse(_kw(n, "use_safetensors") or ast.Constant(None)) == "True" for _, n in loads)


def test_every_model_load_uses_safetensors():
    # a GGUF file (`zs-ray models import`) is a plain tensor format too: no pickle, no code
    missing = [w for w, n in _model_loads() if ast.unparse(_kw(n, "use_safetensors") or ast.Constant(None)) != "True"
               and _kw(n, "gguf_file") is None]
    assert not missing, f"AutoModel*.from_pretrained without use_safetensors=True: {missing}"


def test_torch_load_only_with_weights_only():
    loads = _calls(lambda n, o: n == "load" and o == "torch")
    assert loads, "expected the checkpoint extras loader"
    bad = [w for w, n in loads if ast.unparse(_kw(n, "weights_only") or ast.Constant(None)) != "True"]
    assert not bad, bad
    # and nothing unpickles otherwise
    assert not _calls(lambda n, o: n in ("load", "loads") and o in ("pickle", "cloudpickle", "dill"))


def test_network_defaults_bind_loopback():
    from actors.simulator import DEFAULTS
    from zs_ray.config import SearchConfig, TrackingConfig
    from zs_ray.runtime import LOOPBACK, local_env

    assert LOOPBACK == "127.0.0.1"
    assert SearchConfig().http_host == "127.0.0.1" and DEFAULTS["http_host"] == "127.0.0.1"  # Serve (simulator, agent)
    env = local_env("/tmp/x")
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["MASTER_ADDR"] == "127.0.0.1"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert TrackingConfig().uri is None  # local sqlite store by default, no server at all
    from zs_ray.train.tracking import Tracker

    class _Cfg:  # the summary's `mlflow ui` hint binds loopback
        class tracking:
            enabled, uri = False, None

        class trainer:
            output_dir = "/tmp/x/run"
    t = Tracker(_Cfg())
    t.enabled, t.run_id = True, "r"
    assert "--host 127.0.0.1" in t.summary()
    # no source binds every interface by default
    wild = [w for w, n in _calls(lambda n, o: True)
            for k in n.keywords if k.arg in ("host", "_node_ip_address", "http_host")
            and isinstance(k.value, ast.Constant) and k.value.value in ("0.0.0.0", "::")]
    assert not wild, wild


def test_saved_run_config_has_no_secret(tmp_path, monkeypatch):
    """The config.yaml the Trainer writes into the run folder has the api key redacted."""
    import zs_ray.runtime
    from zs_ray.config import load_config
    from zs_ray.data.qa import DataError
    from zs_ray.train.trainer import Trainer

    monkeypatch.setattr(zs_ray.runtime, "init_ray", lambda *a, **k: pytest.fail("no Ray needed"))
    cfg = load_config(None, ["model.policy_path=/nonexistent", "search.backend=http", "search.urls=[http://h:1]",
                             "search.api_key=sk-live-SECRET-123", f"trainer.output_dir={tmp_path}/run",
                             f"data.train_files=[{tmp_path}/missing.parquet]"])
    with pytest.raises(DataError):  # stops before any actor; the config was saved first
        Trainer(cfg, progress=lambda *_: None)
    text = open(os.path.join(str(tmp_path), "run", "config.yaml")).read()
    assert "sk-live-SECRET-123" not in text and "api_key: '***'" in text
    assert cfg.search.api_key == "sk-live-SECRET-123"  # the clients still get the real key
