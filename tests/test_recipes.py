"""configs/recipes: every file loads and validates; the paper's reference numbers are in them."""
import glob
import os

import pytest

from zs_ray.config import ALGORITHMS, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml")))
NAMES = [os.path.basename(p) for p in RECIPES]
SIM_MODELS = {"sunhaonlp/SearchSimulation_3B", "sunhaonlp/SearchSimulation_7B", "sunhaonlp/SearchSimulation_14B"}


def load(name):
    return load_config(os.path.join(ROOT, "configs", "recipes", name))


def test_there_are_recipes():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("path", RECIPES, ids=NAMES)
def test_loads_and_matches_the_paper(path):
    cfg = load_config(path)
    assert cfg.trainer.steps == 203 and cfg.trainer.prompts_per_step == 64
    assert cfg.rollout.n_samples == 5
    assert cfg.rollout.temperature == 1.0 and cfg.rollout.top_p == 0.95
    assert cfg.rollout.max_turn_tokens == 500 and cfg.rollout.max_context_tokens == 4096
    assert cfg.search.topk == 5 and cfg.search.temperature == 0.8 and cfg.search.max_tokens == 600
    assert cfg.curriculum.enabled and cfg.curriculum.end == 0.5 and cfg.curriculum.base == 4.0
    assert cfg.curriculum.total_steps in (None, cfg.trainer.steps)
    a = cfg.algorithm
    assert a.name in ALGORITHMS
    assert a.lr == 1e-6 and a.clip == 0.2 and a.entropy_coef == 0.001 and a.kl_estimator == "k3"
    assert a.weight_decay == 0.01 and a.grad_clip == 1.0 and a.reward == "f1"
    if a.name == "ppo":
        assert a.kl_in_reward_beta == 0.001 and a.critic_lr == 1e-5 and a.value_clip == 0.5
        assert a.gamma == 1.0 and a.lam == 1.0
    else:
        assert a.kl_coef == 0.001
    assert cfg.resources.device == "cuda"
    assert cfg.model.attn_implementation == "flash_attention_2" and cfg.model.dtype == "bfloat16"
    assert cfg.rollout.engine == "vllm" and cfg.rollout.tensor_parallel_size >= 1
    assert cfg.search.backend in ("simulate_sft", "simulate_prompt")
    if cfg.search.backend == "simulate_sft":
        assert cfg.search.simulator_model in SIM_MODELS
    else:
        assert cfg.search.simulator_model.startswith("Qwen/Qwen2.5-14B-Instruct")
    assert cfg.data.train_files[0].endswith("train.parquet") and cfg.data.test_files[0].endswith("test.parquet")


@pytest.mark.parametrize("path", RECIPES, ids=NAMES)
def test_gpu_layout_is_consistent(path):
    cfg = load_config(path)
    r = cfg.resources
    if r.gpus_per_rollout_worker >= 1:
        assert cfg.rollout.tensor_parallel_size == int(r.gpus_per_rollout_worker)
    if not cfg.search.urls:  # served by our Serve deployment
        assert r.gpus_per_simulator == cfg.search.tensor_parallel_size
        assert r.simulator_replicas * r.gpus_per_simulator <= 4, "fits one 4-GPU simulator node"
    assert r.policy_workers * r.gpus_per_policy_worker <= 8


def test_the_paper_grid_is_covered():
    cfgs = {n: load(n) for n in NAMES}
    policies = {c.model.policy_path for c in cfgs.values()}
    assert {"Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct",
            "meta-llama/Llama-3.2-3B"} <= policies
    assert SIM_MODELS <= {c.search.simulator_model for c in cfgs.values()}
    assert {"Qwen/Qwen2.5-14B-Instruct"} <= {c.search.simulator_model for c in cfgs.values()}
    assert set(ALGORITHMS) <= {c.algorithm.name for c in cfgs.values()}
    assert any(c.search.quantization == "awq" for c in cfgs.values())


def test_reference_and_seed_curricula():
    ref = load("qwen2.5-3b-base_sft14b_grpo.yaml")
    assert (ref.curriculum.start, ref.curriculum.end) == (0.0, 0.5)
    seed = load("llama3.2-3b-base_prompt14b_grpo.yaml")
    assert (seed.curriculum.start, seed.curriculum.end) == (0.25, 0.5)
    assert seed.search.backend == "simulate_prompt"


def test_simulator_like_the_seed_server():
    """The seed served the 14B simulator with sglang --tp 2 --dp 2."""
    cfg = load("qwen2.5-3b-base_sft14b_grpo.yaml")
    assert cfg.search.tensor_parallel_size == 2 and cfg.resources.simulator_replicas == 2
    assert cfg.resources.policy_workers == 4 and cfg.resources.gpus_per_policy_worker == 1


def test_data_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv("ZS_DATA_DIR", "/mnt/zs")
    cfg = load("qwen2.5-3b-base_sft14b_grpo.yaml")
    assert list(cfg.data.train_files) == ["/mnt/zs/ZeroSearch_dataset/train.parquet"]
    monkeypatch.delenv("ZS_DATA_DIR")
    assert load("qwen2.5-3b-base_sft14b_grpo.yaml").data.train_files[0] == "data/ZeroSearch_dataset/train.parquet"


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_seed_recipes_use_an_external_simulator(algo):
    cfg = load(f"seed_{algo}.yaml")
    assert cfg.algorithm.name == algo
    assert list(cfg.search.urls) == ["http://localhost:6001/v1"]
    r = cfg.resources
    assert r.gpus_per_policy_worker + r.gpus_per_rollout_worker <= 1.0, "colocated on one GPU each"
