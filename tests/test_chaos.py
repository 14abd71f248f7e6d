"""The chaos run's short version (`zs-ray chaos`, zs_ray/bench/chaos.py): in one training run a rollout worker,
a simulator replica, the MLflow server and the driver are each killed, and the run still ends as an unfaulted
one would: the same prompts consumed, nothing trained beyond the staleness bound, one complete MLflow run."""
import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_chaos_run_loses_nothing(tmp_path):
    from zs_ray.bench.chaos import run_chaos

    result = run_chaos(str(tmp_path), steps=6, seed=0, timeout_s=900)
    assert result["ok"], json.dumps(result["checks"], indent=1)
    assert "sent late" in (result["tracking"] or ""), result["tracking"]  # the MLflow outage really hit the run
