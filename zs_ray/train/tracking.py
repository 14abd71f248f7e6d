"""MLflow tracking that never stops training.

Params are the flattened, redacted config; metrics per step; artifacts (config, samples, tables,
checkpoints). The default store is a local sqlite file; any tracking URI works. Under
`ray job submit` a run named by MLFLOW_RUN_ID is attached to. A tracking failure (disk full, server
unreachable) is logged once, counted, and training goes on; `summary()` says so at the end.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from zs_ray.redaction import redacted

log = logging.getLogger("zs_ray.train.tracking")


def default_uri(output_dir: str) -> str:
    root = os.path.abspath(os.path.join(output_dir, os.pardir))
    return f"sqlite:///{os.path.join(root, 'mlflow.db')}"


def set_experiment(uri: str, name: str) -> None:
    """Point MLflow at `uri` and select experiment `name`. A new experiment in a sqlite store keeps its
    artifacts in mlartifacts/ next to the store, not in ./mlruns of whatever cwd we run from; the folder is
    made absolute because "sqlite:///runs/x.db" is relative to the cwd and MLflow rejects "file://runs/..."."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(name) is None:
        art = Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
        mlflow.create_experiment(name, artifact_location=art.as_uri())
    mlflow.set_experiment(name)


def run_identity(cfg, stage: str = "train") -> tuple[str, dict[str, str]]:
    """(run name, tags) saying what a run is, so runs read and filter by it in the MLflow UI rather than by a
    random name: `<stage>-<algorithm>-<search backend>-s<seed>` unless tracking.run_name is set, and the tags
    zs_ray.stage / algorithm / search / seed / model (the policy folder's name)."""
    algo, search, seed = cfg.algorithm.name, cfg.search.backend, cfg.trainer.seed
    tags = {"zs_ray.stage": stage, "zs_ray.algorithm": algo, "zs_ray.search": search, "zs_ray.seed": str(seed),
            "zs_ray.model": os.path.basename(str(cfg.model.policy_path).rstrip("/"))}
    return cfg.tracking.run_name or f"{stage}-{algo}-{search}-s{seed}", tags


class Tracker:
    def __init__(self, cfg, enabled: bool = True, stage: str = "train"):
        """`stage`: what the run is (train, eval-agent, table, ...), in its name and tags (`run_identity`)."""
        self.stage = stage
        self.failures = 0
        self._warned = False
        self.run_id: Optional[str] = None
        self.enabled = enabled and bool(cfg.tracking.enabled)
        self.uri = cfg.tracking.uri or default_uri(cfg.trainer.output_dir)
        if not self.enabled:
            return
        if self.uri.startswith(("http://", "https://")):
            # an unreachable server must cost seconds, not minutes of MLflow's own HTTP retries
            for k, v in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                         ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
                os.environ.setdefault(k, v)
        self._call(self._start, cfg)

    def _start(self, cfg):
        import mlflow

        set_experiment(self.uri, cfg.tracking.experiment)
        run_id = os.environ.get("MLFLOW_RUN_ID")
        name, tags = run_identity(cfg, self.stage)
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
        self.run_id = run.info.run_id
        mlflow.set_tags(tags)  # an attached run (MLFLOW_RUN_ID) keeps its name but gets the tags
        params = {k: ("" if v is None else str(v))[:500] for k, v in flatten(redacted(cfg)).items()}
        items = list(params.items())
        for i in range(0, len(items), 90):  # MLflow caps params per batch call
            mlflow.log_params(dict(items[i:i + 90]))
        mlflow.log_dict(redacted(cfg), "config.yaml")

    def _call(self, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tracking must never stop training
            self.failures += 1
            if not self._warned:
                log.warning("MLflow tracking failed (%s: %s); training goes on, further errors are counted",
                            type(e).__name__, e)
                self._warned = True
            return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import math

        import mlflow

        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self._call(mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        import mlflow

        self._call(mlflow.log_artifact, path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow

        self._call(mlflow.log_text, text, artifact_file)

    def set_tags(self, tags: dict) -> None:
        import mlflow

        self._call(mlflow.set_tags, tags)

    def finish(self, status: str = "FINISHED") -> None:
        import mlflow

        self._call(mlflow.end_run, status=status)

    def summary(self) -> str:
        if not self.enabled:
            return "tracking disabled"
        if self.failures:
            return f"MLflow: {self.failures} tracking call(s) FAILED (see the first warning); run {self.run_id} is incomplete"
        return f"MLflow: run {self.run_id} at {self.uri} (open with: mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1)"


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {'a.b.c': value} (MLflow params are flat)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
