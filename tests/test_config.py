"""config.py: one typed schema; errors name the key; the defaults live only in the schema."""
import pytest
import yaml

from zs_ray.config import ConfigError, load_config, save_config, to_dict
from zs_ray.redaction import redacted
from zs_ray.train.tracking import flatten

REQ = ["model.policy_path=x", "search.simulator_model=sim"]


def test_schema_defaults_are_the_reference_recipe():
    c = load_config(None, REQ)
    assert c.model.policy_path == "x"
    assert c.search.backend == "simulate_sft" and c.search.topk == 5
    assert c.search.temperature == 0.8 and c.search.max_tokens == 600
    assert (c.curriculum.start, c.curriculum.end, c.curriculum.base) == (0.0, 0.5, 4.0)
    assert c.rollout.n_samples == 5 and c.rollout.temperature == 1.0 and c.rollout.top_p == 0.95
    assert c.rollout.max_turns == 5 and c.rollout.max_turn_tokens == 500
    assert c.rollout.max_obs_tokens == 2048 and c.rollout.max_context_tokens == 4096
    a = c.algorithm
    assert (a.name, a.reward, a.clip, a.kl_estimator, a.kl_coef, a.entropy_coef) == ("grpo", "f1", 0.2, "k3", 0.001, 0.001)
    assert (a.lr, a.weight_decay, a.grad_clip, a.adv_eps) == (1e-6, 0.01, 1.0, 1e-6)
    assert (a.critic_lr, a.value_clip, a.gamma, a.lam, a.kl_in_reward_beta) == (1e-5, 0.5, 1.0, 1.0, 0.001)
    assert c.trainer.steps == 203 and c.trainer.prompts_per_step == 64 and c.trainer.staleness == 0


def test_policy_path_is_required():
    with pytest.raises(ConfigError, match="model.policy_path"):
        load_config(None, ["search.simulator_model=sim"])


def test_overrides_are_typed():
    c = load_config(None, REQ + ["trainer.steps=7", "curriculum.start=0.25", "data.train_files=[a.parquet,b.parquet]"])
    assert c.trainer.steps == 7 and isinstance(c.trainer.steps, int)
    assert c.curriculum.start == 0.25 and list(c.data.train_files) == ["a.parquet", "b.parquet"]


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ConfigError) as e:
        load_config(None, REQ + ["trainer.stpes=3"])
    assert "trainer.stpes" in str(e.value) and "trainer.steps" in str(e.value)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  stpes: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p), REQ)
    assert str(p) in str(e.value) and "trainer.stpes" in str(e.value) and "trainer.steps" in str(e.value)


@pytest.mark.parametrize("ov,key,typ", [("trainer.steps=abc", "trainer.steps", "int"),
                                        ("curriculum.start=high", "curriculum.start", "float"),
                                        ("search.topk=1.5", "search.topk", "int")])
def test_wrong_type_names_key_and_type(ov, key, typ):
    with pytest.raises(ConfigError) as e:
        load_config(None, REQ + [ov])
    assert f"'{key}'" in str(e.value) and f"expected {typ}" in str(e.value)


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, REQ + ["trainer.steps"])


@pytest.mark.parametrize("ov,key", [
    (["trainer.staleness=-1"], "trainer.staleness"),
    (["algorithm.critic_warmup=-1"], "algorithm.critic_warmup"),
    (["trainer.steps=0"], "trainer.steps"),
    (["algorithm.name=dpo"], "algorithm.name"),
    (["algorithm.reward=format"], "algorithm.reward"),
    (["algorithm.kl_estimator=k2"], "algorithm.kl_estimator"),
    (["algorithm.lr_schedule=linear"], "algorithm.lr_schedule"),
    (["algorithm.min_lr_ratio=1.5"], "algorithm.min_lr_ratio"),
    (["algorithm.behaviour_correction=is"], "algorithm.behaviour_correction"),
    (["algorithm.behaviour_weight_cap=0.5"], "algorithm.behaviour_weight_cap"),
    (["algorithm.filter_groups=true", "algorithm.name=reinforce"], "algorithm.filter_groups"),
    (["search.backend=google"], "search.backend"),
    (["search.topk=0"], "search.topk"),
    (["curriculum.end=1.5"], "curriculum.end"),
    (["search.backend=bm25"], "search.corpus"),
    (["search.backend=http"], "search.urls"),
    (["resources.device=tpu"], "resources.device"),
    (["model.quantization=awq", "rollout.engine=hf"], "model.quantization"),
    (["search.hybrid_fallback=google"], "search.hybrid_fallback"),
    (["search.backend=hybrid", "search.urls=[http://h:1]", "search.hybrid_fallback=retriever"], "search.retriever_urls"),
    (["resources.num_cpus=2", "resources.rollout_workers=4"], "resources.num_cpus"),
])
def test_impossible_values_name_the_key(ov, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, REQ + ov)


@pytest.mark.parametrize("backend", ["simulate_sft", "simulate_prompt", "hybrid"])
def test_simulator_backend_needs_a_model(backend):
    with pytest.raises(ConfigError, match=r"search\.simulator_model"):
        load_config(None, ["model.policy_path=x", f"search.backend={backend}"])
    # an external OpenAI-compatible server is an alternative
    c = load_config(None, ["model.policy_path=x", f"search.backend={backend}", "search.urls=[http://h:1]",
                           "search.corpus=c.jsonl"])
    assert c.search.backend == backend


def test_workers_within_num_cpus_is_fine():
    c = load_config(None, REQ + ["resources.num_cpus=2"])  # 3 x 0.5 = 1.5 <= 2
    assert c.resources.num_cpus == 2


def test_missing_config_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(str(p), REQ)


@pytest.mark.parametrize("text", ["trainer: {steps: [1,\n", "- a\n- b\n"])
def test_invalid_yaml(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(str(p), REQ)


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  policy_path: from_file\nsearch:\n  simulator_model: s\ntrainer:\n  steps: 9\n")
    c = load_config(str(p), ["trainer.steps=11"])
    assert c.model.policy_path == "from_file" and c.trainer.steps == 11


def test_redacted_hides_secrets_only():
    c = load_config(None, REQ + ["search.api_key=sk-secret-123"])
    r = redacted(c)
    assert r["search"]["api_key"] == "***"
    assert "sk-secret-123" not in str(r)
    # keys that merely contain "token" are settings, not secrets
    assert r["search"]["max_tokens"] == 600 and r["rollout"]["max_turn_tokens"] == 500
    assert r["rollout"]["max_obs_tokens"] == 2048 and r["rollout"]["max_context_tokens"] == 4096
    assert redacted({"hf_token": "abc", "db_password": "p", "n": {"secret": "s", "max_tokens": 3}}) == \
        {"hf_token": "***", "db_password": "***", "n": {"secret": "***", "max_tokens": 3}}
    assert redacted(load_config(None, REQ))["search"]["api_key"] is None  # nothing to hide
    assert c.search.api_key == "sk-secret-123"  # the config itself is untouched


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    flat = flatten(to_dict(load_config(None, REQ)))
    assert flat["trainer.steps"] == 203 and flat["search.topk"] == 5 and flat["model.policy_path"] == "x"


def test_save_config_without_secrets_round_trips(tmp_path):
    c = load_config(None, REQ + ["search.api_key=sk-secret-123", "trainer.steps=17"])
    path = tmp_path / "sub" / "config.yaml"
    save_config(c, str(path))
    text = path.read_text()
    assert "sk-secret-123" not in text
    data = yaml.safe_load(text)
    assert data["search"]["api_key"] == "***" and data["trainer"]["steps"] == 17
    back = load_config(str(path))
    assert back.trainer.steps == 17 and back.search.max_tokens == 600
    assert to_dict(back)["rollout"] == to_dict(c)["rollout"]


def test_hybrid_retriever_fallback_has_its_own_urls():
    """search.urls are the hybrid backend's simulator servers; its retriever fallback reads search.retriever_urls."""
    c = load_config(None, REQ + ["search.backend=hybrid", "search.urls=[http://h:1]", "search.hybrid_fallback=retriever",
                                 "search.retriever_urls=[http://r:2]"])
    assert list(c.search.urls) == ["http://h:1"] and list(c.search.retriever_urls) == ["http://r:2"]


def test_resume_path_is_checked_by_preflight_not_at_load():
    """A missing trainer.resume folder is listed with every other missing path (zs_ray.preflight.path_problems);
    the config itself loads, e.g. to be shown with `zs-ray config`."""
    assert load_config(None, REQ + ["trainer.resume=/no/such/checkpoint"]).trainer.resume == "/no/such/checkpoint"
