"""engines.engine.engine_kwargs: every engine of one config gets its settings from one function (pure unit tests),
and a real rollout worker's engine gets the model section's dtype and trust_remote_code (integration)."""
import json
import os
import shutil

import pytest

from zs_ray.config import load_config
from zs_ray.engines.engine import engine_kwargs

REQ = ["model.policy_path=x", "search.simulator_model=sim"]


def test_policy_kwargs_come_from_model_rollout_and_resources():
    cfg = load_config(None, REQ + ["model.dtype=bfloat16", "model.trust_remote_code=true", "model.quantization=awq",
                                   "rollout.max_context_tokens=1234", "rollout.kv_cache_gb=0.5", "rollout.seed=7",
                                   "rollout.max_num_seqs=9", "rollout.tensor_parallel_size=2",
                                   "rollout.gpu_memory_utilization=0.7", "rollout.enforce_eager=false",
                                   "resources.device=cuda"])
    assert engine_kwargs(cfg) == dict(
        dtype="bfloat16", trust_remote_code=True, quantization="awq", max_model_len=1234, seed=7, max_num_seqs=9,
        kv_cache_gb=0.5, enforce_eager=False, tensor_parallel_size=2, gpu_memory_utilization=0.7, device="cuda")
    # the plain sections an actor receives give the same; override wins (a rollout worker's own seed and device)
    plain = {k: dict(cfg[k]) for k in ("model", "rollout", "resources")}
    assert engine_kwargs(plain) == engine_kwargs(cfg)
    assert engine_kwargs(cfg, seed=3, device="cpu") == {**engine_kwargs(cfg), "seed": 3, "device": "cpu"}


def test_partial_sections_take_the_schema_defaults():
    from zs_ray.config import ModelConfig, RolloutConfig

    kw = engine_kwargs({"model": None, "rollout": {"max_context_tokens": 512}})
    assert kw["max_model_len"] == 512 and kw["device"] == "cpu"
    assert (kw["dtype"], kw["trust_remote_code"], kw["quantization"]) == (
        ModelConfig.dtype, ModelConfig.trust_remote_code, ModelConfig.quantization)
    assert kw["kv_cache_gb"] == RolloutConfig.kv_cache_gb and kw["max_num_seqs"] == RolloutConfig.max_num_seqs


def test_simulator_kwargs_come_from_the_search_section():
    cfg = load_config(None, REQ + ["search.max_batch_size=4", "search.max_model_len=999", "search.kv_cache_gb=0.25",
                                   "search.quantization=awq", "search.tensor_parallel_size=2",
                                   "search.gpu_memory_utilization=0.6", "model.dtype=bfloat16"])
    gpu = engine_kwargs(cfg, "simulator", device="cuda", seed=5)
    assert gpu == dict(dtype="auto", max_model_len=999, seed=5, max_num_seqs=4, kv_cache_gb=0.25,
                       tensor_parallel_size=2, quantization="awq", gpu_memory_utilization=0.6, device="cuda")
    assert engine_kwargs({"search": dict(cfg.search)}, "simulator")["dtype"] == "float32"  # CPU: fp32
    with pytest.raises(ValueError, match="role"):
        engine_kwargs(cfg, "critic")


# ---------------------------------------------------------------- a real rollout worker
CUSTOM_CODE = '''from transformers import LlamaConfig, LlamaForCausalLM


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny_custom"


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.fixture(scope="module")
def custom_code_model(tiny_assets, tmp_path_factory):
    """The tiny Llama declared as a custom-code model: transformers loads it only with trust_remote_code=True."""
    out = str(tmp_path_factory.mktemp("custom") / "model")
    shutil.copytree(tiny_assets["model"], out)
    with open(os.path.join(out, "custom_llama.py"), "w") as f:
        f.write(CUSTOM_CODE)
    path = os.path.join(out, "config.json")
    with open(path) as f:
        c = json.load(f)
    c.update(model_type="tiny_custom", architectures=["TinyCustomForCausalLM"],
             auto_map={"AutoConfig": "custom_llama.TinyCustomConfig",
                       "AutoModelForCausalLM": "custom_llama.TinyCustomForCausalLM"})
    with open(path, "w") as f:
        json.dump(c, f)
    return out


@pytest.mark.integration
def test_rollout_worker_engine_gets_model_dtype_and_trust_remote_code(ray_session, custom_code_model):
    from actors.rollout_worker import RolloutWorker

    rollout = {"engine": "hf", "max_context_tokens": 256}
    w = RolloutWorker.options(num_cpus=0.5).remote(custom_code_model, rollout, {"backend": "none"}, 0, 0, "cpu",
                                                   model_cfg={"dtype": "bfloat16", "trust_remote_code": True})
    try:
        ray_session.get(w.ready.remote(), timeout=300)
        dtype, cls = ray_session.get(w.__ray_call__.remote(
            lambda self: (str(self.engine.model.dtype), type(self.engine.model).__name__)), timeout=60)
        assert (dtype, cls) == ("torch.bfloat16", "TinyCustomForCausalLM")
    finally:
        ray_session.kill(w)


def test_evaluation_engine_gets_the_same_settings(custom_code_model):
    """build_engine (evaluation, the served agent) builds its engine from engine_kwargs(cfg) too."""
    from zs_ray.eval.evaluation import build_engine

    cfg = load_config(None, [f"model.policy_path={custom_code_model}", "search.simulator_model=sim",
                             "rollout.engine=hf", "model.dtype=bfloat16", "model.trust_remote_code=true"])
    engine = build_engine(cfg)
    assert (str(engine.model.dtype), type(engine.model).__name__) == ("torch.bfloat16", "TinyCustomForCausalLM")
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_engine(load_config(None, [f"model.policy_path={custom_code_model}", "search.simulator_model=sim",
                                        "rollout.engine=hf"]))


def test_the_simulators_sampling_settings_come_from_the_search_section():
    """search.temperature / top_p / max_tokens / repetition_penalty reach every simulator request's sampling (the
    Serve deployment's `_params`; its engine is not started here)."""
    from actors.simulator import SimulatorServer

    cfg = load_config(None, REQ + ["search.temperature=0.6", "search.top_p=0.9", "search.max_tokens=77",
                                   "search.repetition_penalty=1.3", "search.max_model_len=512"])
    server = object.__new__(SimulatorServer.func_or_class)
    server.cfg = {**dict(cfg.search)}
    p = server._params(n_prompt=100)
    assert (p["temperature"], p["top_p"], p["max_tokens"], p["repetition_penalty"]) == (0.6, 0.9, 77, 1.3)
    assert server._params(n_prompt=500)["max_tokens"] == 12  # what max_model_len leaves
