"""MLflow tracking that never stops training.

Params are the flattened, redacted config; metrics per step; artifacts (config, samples, tables,
checkpoints). The default store is a local sqlite file; any tracking URI works. Under
`ray job submit` a run named by MLFLOW_RUN_ID is attached to; a resumed training run attaches to the run
its checkpoint names, so one run holds every step. A tracking failure (disk full, server unreachable) is
logged once, counted, and training goes on: metrics wait in memory and are sent, with their own step and
time, once the store answers again (a restarted server loses nothing); `summary()` says what was lost.
"""
from __future__ import annotations

import logging
import math
import os
import time
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


def policy_label(path: str) -> str:
    """The policy folder's name, with its parent where the name is a generic export (runs/a/policy_hf ->
    a/policy_hf), so evaluations of different runs' policies have different names."""
    parts = [x for x in str(path).rstrip("/").split("/") if x]
    if len(parts) > 1 and parts[-1] in ("policy_hf", "final", "model"):
        return "/".join(parts[-2:])
    return parts[-1] if parts else str(path)


def run_identity(cfg, stage: str = "train") -> tuple[str, dict[str, str]]:
    """(run name, tags) saying what a run is, so runs read and filter by it in the MLflow UI rather than by a
    random name, unless tracking.run_name is set: `<stage>-<algorithm>-<search backend>-s<seed>` for training,
    `<stage>-<policy>` for an evaluation (what it measures is the policy; its search is in its params and header),
    and the tags zs_ray.stage / algorithm / search / seed / model (`policy_label`)."""
    algo, search, seed = cfg.algorithm.name, cfg.search.backend, cfg.trainer.seed
    model = policy_label(cfg.model.policy_path)
    tags = {"zs_ray.stage": stage, "zs_ray.algorithm": algo, "zs_ray.search": search, "zs_ray.seed": str(seed),
            "zs_ray.model": model}
    name = f"{stage}-{model}" if stage.startswith("eval") else f"{stage}-{algo}-{search}-s{seed}"
    return cfg.tracking.run_name or name, tags


class Tracker:
    MAX_PENDING = 100_000  # metric steps held while the store is down; older ones are dropped (and counted lost)

    def __init__(self, cfg, enabled: bool = True, stage: str = "train", run_id: Optional[str] = None,
                 pending: Optional[list] = None):
        """`stage`: what the run is (train, eval-agent, table, ...), in its name and tags (`run_identity`).
        `run_id`, `pending`: continue that run, and send what it had not sent yet (a resumed training run; both
        come from its checkpoint). MLFLOW_RUN_ID, when set, wins."""
        self.stage, self.cfg, self.resume_id = stage, cfg, run_id
        self.failures = self.lost = self.resent = 0  # failed calls; data never delivered; steps sent late
        self.pending: list[list] = [list(e) for e in pending or []]  # [metrics, step, time ms, late], oldest first
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
        self._ready()

    def _start(self, cfg) -> str:
        import mlflow

        set_experiment(self.uri, cfg.tracking.experiment)
        run_id = os.environ.get("MLFLOW_RUN_ID") or self.resume_id
        name, tags = run_identity(cfg, self.stage)
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
        self.run_id = run.info.run_id  # open from here: a failure below is counted, not retried as a second start
        mlflow.set_tags(tags)  # an attached run (MLFLOW_RUN_ID) keeps its name but gets the tags
        params = {k: ("" if v is None else str(v))[:500] for k, v in flatten(redacted(cfg)).items()}
        # MLflow params are write-once: an attached run keeps the values it started with (a resumed run's
        # trainer.resume differs) and gets only the keys it lacks
        first = not run.data.params  # a new run, or one a job submitter made for us: it needs the config
        params = {k: v for k, v in params.items() if k not in run.data.params}
        items = list(params.items())
        for i in range(0, len(items), 90):  # MLflow caps params per batch call
            mlflow.log_params(dict(items[i:i + 90]))
        if first:
            mlflow.log_dict(redacted(cfg), "config.yaml")
        return self.run_id

    def _ready(self) -> bool:
        """Whether the run is open; starts it (again) if the store was down at the first try."""
        return self.enabled and (self.run_id is not None or self._call(self._start, self.cfg) is not None)

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

    def _write(self, fn, *args, **kwargs) -> None:
        """A call that is not retried (artifacts, tags): if it fails, what it carried is lost."""
        if not self._ready() or self._call(lambda: fn(*args, **kwargs) or True) is None:
            self.lost += 1 if self.enabled else 0

    def _send(self, metrics: dict, step: int, ts: int) -> bool:
        import mlflow

        mlflow.log_metrics(metrics, step=step, timestamp=ts, run_id=self.run_id)
        return True

    def flush(self) -> None:
        """Send the waiting metrics, oldest first, until the store fails again."""
        while self.pending:
            if not self._ready() or self._call(self._send, *self.pending[0][:3]) is None:
                for entry in self.pending:
                    entry[3] = 1  # late: it missed the call that queued it
                return
            self.resent += self.pending.pop(0)[3]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self.pending.append([clean, step, int(time.time() * 1000), 0])
        if len(self.pending) > self.MAX_PENDING:
            self.pending.pop(0)
            self.lost += 1
        self.flush()

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        import mlflow

        self._write(mlflow.log_artifact, path, artifact_path, run_id=self.run_id)

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow

        self._write(mlflow.log_text, text, artifact_file, run_id=self.run_id)

    def set_tags(self, tags: dict) -> None:
        import mlflow

        self._write(mlflow.set_tags, tags)

    def finish(self, status: str = "FINISHED") -> None:
        """Send what waits (retrying for up to tracking.finish_wait_s), then close the run; metrics still
        undelivered are counted lost."""
        import mlflow

        self.flush()
        deadline = time.monotonic() + float(self.cfg.tracking.finish_wait_s) if self.enabled else 0
        if self.pending and time.monotonic() < deadline:
            log.warning("MLflow: %d metric step(s) not sent yet; retrying for up to %.0f s (tracking.finish_wait_s)",
                        len(self.pending), deadline - time.monotonic())
        while self.pending and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            self.flush()
        self.lost += len(self.pending)
        self.pending.clear()
        if self.run_id is not None:
            self._call(mlflow.end_run, status=status)

    def summary(self) -> str:
        if not self.enabled:
            return "tracking disabled"
        if self.lost or self.run_id is None:
            return (f"MLflow: {self.failures} tracking call(s) FAILED (see the first warning); run {self.run_id} is "
                    f"incomplete ({self.lost} metric step(s) or artifact(s) lost)")
        late = (f"; {self.resent} metric step(s) sent late after {self.failures} failed call(s), none lost"
                if self.failures else "")
        if self.uri.startswith(("http://", "https://")):  # a tracking server: its own UI is at that address
            return f"MLflow: run {self.run_id} at {self.uri}{late} (open {self.uri} in a browser)"
        return (f"MLflow: run {self.run_id} at {self.uri}{late} (open with: mlflow ui --backend-store-uri {self.uri} "
                f"--host 127.0.0.1)")


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
