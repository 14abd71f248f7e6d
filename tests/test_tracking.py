import os

from zs_ray.config import load_config
from zs_ray.train.tracking import Tracker


def _cfg(tmp_path, uri):
    return load_config(None, ["model.policy_path=x", "search.backend=bm25", "search.corpus=c.jsonl",
                              f"trainer.output_dir={tmp_path}/run", f"tracking.uri={uri}",
                              "search.api_key=sk-secret-123"])


def test_tracker_logs_params_metrics_and_redacts(tmp_path):
    import mlflow

    cfg = _cfg(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    t = Tracker(cfg)
    t.log_metrics({"reward/mean": 0.5, "nan": float("nan")}, step=1)
    t.log_text("hello", "samples/a.txt")
    t.finish()
    assert t.failures == 0
    run = mlflow.get_run(t.run_id)
    assert run.data.params["search.api_key"] == "***"
    assert run.data.params["trainer.steps"] == "203"
    assert run.data.metrics["reward/mean"] == 0.5
    assert "sk-secret-123" not in str(run.data.params)


def test_relative_sqlite_uri_keeps_artifacts_next_to_the_store(tmp_path, monkeypatch):
    # "sqlite:///runs/x/mlflow.db" is relative to the cwd; MLflow refused the "file://runs/x/..." location
    import mlflow

    monkeypatch.chdir(tmp_path)
    t = Tracker(_cfg(tmp_path, "sqlite:///rel/mlflow.db"))
    t.log_text("hello", "samples/a.txt")
    t.finish()
    assert t.failures == 0
    assert (tmp_path / "rel" / "mlartifacts").is_dir()
    assert mlflow.get_run(t.run_id).info.artifact_uri.startswith((tmp_path / "rel" / "mlartifacts").as_uri())


def test_tracker_failure_is_counted_not_raised(tmp_path):
    # an unreachable tracking server: training goes on, the failure is counted and reported
    cfg = _cfg(tmp_path, "http://127.0.0.1:9")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    t = Tracker(cfg)
    t.log_metrics({"a": 1.0}, step=1)
    t.finish()
    assert t.failures >= 1
    assert "FAILED" in t.summary()


def test_runs_are_named_and_tagged_by_what_they_are(tmp_path):
    """Not MLflow's random "aged-cat-18": stage-algorithm-search-seed, and tags the UI filters on."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(None, ["model.policy_path=runs/q/policy_warm/", "search.simulator_model=sim",
                             "trainer.seed=3", f"trainer.output_dir={tmp_path}/run", f"tracking.uri={uri}"])
    other = load_config(None, ["model.policy_path=x", "search.backend=bm25", "search.corpus=c.jsonl",
                               "algorithm.name=ppo", f"tracking.uri={uri}", "tracking.run_name=my-run"])
    trained = load_config(None, ["model.policy_path=runs/q/grpo_a/policy_hf", "search.simulator_model=sim",
                                 "trainer.seed=3", f"tracking.uri={uri}"])
    for c, stage in ((cfg, "train"), (cfg, "eval-agent"), (trained, "eval-agent"), (other, "train")):
        t = Tracker(c, stage=stage)
        t.finish()
        assert t.failures == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.`zs_ray.seed` = '3'")
    by_name = {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}
    # an evaluation is named by the policy it measures; a generic export folder keeps its run's name
    assert set(by_name) == {"train-grpo-simulate_sft-s3", "eval-agent-policy_warm", "eval-agent-grpo_a/policy_hf"}
    r = by_name["train-grpo-simulate_sft-s3"]
    assert (r["tags.zs_ray.stage"], r["tags.zs_ray.algorithm"], r["tags.zs_ray.search"], r["tags.zs_ray.model"]) == (
        "train", "grpo", "simulate_sft", "policy_warm")
    assert by_name["eval-agent-policy_warm"]["tags.zs_ray.stage"] == "eval-agent"
    ppo = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string="tags.`zs_ray.algorithm` = 'ppo'")
    assert list(ppo["tags.mlflow.runName"]) == ["my-run"] and list(ppo["tags.zs_ray.search"]) == ["bm25"]
