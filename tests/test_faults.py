"""Fault injection on the real stack (CPU, tiny models): what a run does when a piece of it dies.

Covered (docs/reliability.md has the table): a rollout worker killed mid-step, a simulator replica
killed or hanging, a policy worker killed, the driver SIGKILLed between checkpoints, a checkpoint
write interrupted halfway, MLflow unreachable / its store unwritable / its server down and back. All of them
in one run: tests/test_chaos.py (zs-ray chaos).
"""
import asyncio
import json
import logging
import os
import time

import pytest
from test_trainer import make_cfg, small_world  # noqa: F401  (module-scoped fixture: one small world here)

from zs_ray.bench.chaos import expected_consumed
from zs_ray.runtime import free_port


def _fingerprint(sd: dict) -> dict:
    return {k: float(v.double().sum()) for k, v in sd.items()}


# ---------------------------------------------------------------- 1. rollout worker killed mid-step
@pytest.mark.integration
def test_rollout_worker_killed_mid_step_restarted_resynced_rerun(ray_session, small_world, tmp_path):  # noqa: F811
    from zs_ray.train.trainer import Trainer

    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=3")
    msgs, trained = [], []
    tr = Trainer(cfg, progress=msgs.append)
    launch, train_step = tr.launch_rollouts, tr.train_step
    killed = {}

    def launch_then_kill(gen_step):
        out = launch(gen_step)
        if gen_step == 1:  # step 1's rollout call is in flight on worker 0: kill it
            killed["handle"] = tr.rollout[0]
            ray_session.kill(tr.rollout[0])
        return out

    def record(trajs, t_gen):
        trained.append({"step": tr.step, "version": tr.version, "ids": [t["prompt_id"] for t in trajs],
                        "versions": [t["policy_version"] for t in trajs]})
        return train_step(trajs, t_gen)

    tr.launch_rollouts, tr.train_step = launch_then_kill, record
    try:
        last = tr.train()
        assert tr.rollout[0] is not killed["handle"]  # replaced
        assert ray_session.get(tr.rollout[0].version.remote()) == tr.version == 3  # and kept in sync
    finally:
        tr.tracker.finish()
        tr.shutdown()
    faults = [m for m in msgs if m.startswith("[fault]")]
    assert len(faults) == 1 and "rollout worker 0 died" in faults[0] and "policy version 1" in faults[0], faults
    assert last["faults/rollout_restarts"] == 1
    n = cfg.trainer.prompts_per_step * cfg.rollout.n_samples
    for rec in trained:  # a full batch every step, every sample from the current weights (nothing stale)
        assert len(rec["ids"]) == n and set(rec["versions"]) == {rec["version"]} == {rec["step"]}, rec
    # the lost part was re-run with the same prompts: step 1 trained exactly its scheduled prompts
    exp = expected_consumed(cfg, 3)
    per = cfg.trainer.prompts_per_step
    assert sorted(set(trained[1]["ids"])) == exp[per:2 * per]
    assert "staleness/0" in last and not any(k.startswith("staleness/") and k != "staleness/0" for k in last)


# ---------------------------------------------------------------- 2. simulator replica killed / hanging
def _sim_deployment():
    """A light simulator deployment (no LLM: the client's fault handling is under test), defined in a
    function so Ray pickles it by value. `hang_marker`: the first replica to create it hangs forever. Its
    health check is the simulator's (a step running past `stall_s` fails it: StepClock)."""
    from ray import serve

    from zs_ray.engines.engine import StepClock

    @serve.deployment(max_ongoing_requests=1, graceful_shutdown_timeout_s=1, health_check_period_s=1,
                      ray_actor_options={"num_cpus": 0.01})
    class FaultySimulator:
        def __init__(self, hang_marker=None, always_hang=False, busy_s=0.0, stall_s=None):
            self.hang, self.busy_s, self.stall_s, self.pid = always_hang, busy_s, stall_s, os.getpid()
            self.clock = StepClock()
            if hang_marker:
                try:
                    os.close(os.open(hang_marker, os.O_CREAT | os.O_EXCL))
                    self.hang = True
                except FileExistsError:
                    pass

        def simulate(self, query, question, answer, noisy, k=5, mode="simulate_sft", confidence=False):
            with self.clock.running():  # a sync sleep: a hung request cannot be cancelled
                time.sleep(15 if self.hang else self.busy_s)
            return {"docs": [f"{answer} is the answer to {query} (replica {self.pid})"][:k], "mean_logprob": -0.5,
                    "dropped_chars": 0, "noisy": bool(noisy)}

        def check_health(self):
            self.clock.check(self.stall_s, f"replica {self.pid}")

    return FaultySimulator


@pytest.fixture(scope="module")
def serve_apps(ray_session):
    from ray import serve

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    except Exception:  # already running in this Ray session
        pass
    names = []

    def deploy(name, replicas, **kw):
        names.append(name)
        return serve.run(_sim_deployment().options(num_replicas=replicas).bind(**kw), name=name, route_prefix=None)

    yield deploy
    for n in names:
        try:
            serve.delete(n)
        except Exception:
            pass


def _gather(coros):
    async def main():
        return await asyncio.gather(*coros)
    return asyncio.run(main())


def _replica_names(app, ray_session) -> set:
    return {a["name"] for a in ray_session.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"] and app in a["name"]}


@pytest.mark.integration
def test_simulator_replica_killed_calls_retry_on_the_other(ray_session, serve_apps):
    from zs_ray.search.clients import SimulatorSearch

    handle = serve_apps("zs_fault_two", 2)
    s = SimulatorSearch(handle, topk=2, timeout_s=5, max_retries=3, backoff_s=0.2)
    assert not any(r.failed for r in _gather([s.search(f"q{i}", "Q", ["gold"], call_key=str(i)) for i in range(4)]))
    replicas = [a for a in ray_session.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and "zs_fault_two" in a["name"]]
    assert len(replicas) == 2, replicas
    victim = ray_session.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    ray_session.kill(victim, no_restart=True)
    t = time.perf_counter()
    res = _gather([s.search(f"k{i}", "Q", ["gold"], call_key=f"k{i}") for i in range(8)])
    m = s.metrics()
    print(f"after kill: {time.perf_counter() - t:.2f}s, retries {m['search/simulator/retries']}")
    assert all(not r.failed and r.docs for r in res), [r.meta for r in res]
    assert m["search/simulator/failures"] == 0


@pytest.mark.integration
def test_simulator_hang_times_out_retries_healthy_replica_then_falls_back(ray_session, serve_apps, tmp_path,
                                                                         tiny_assets):
    from test_rollout import ScriptedEngine, make_row
    from transformers import AutoTokenizer

    from zs_ray.config import RolloutConfig
    from zs_ray.core.protocol import NO_INFORMATION
    from zs_ray.core.rollout import run_trajectory
    from zs_ray.search.base import SearchError
    from zs_ray.search.clients import SimulatorSearch
    from zs_ray.train.step_metrics import search_call_metrics

    # one of two replicas hangs: its calls time out, are cancelled and retried (with backoff). A cancelled call
    # frees its slot, so to Serve's router the hung replica looks idle and it takes retries too (more often than
    # one in two, measured). What ends it is the replica's health check (StepClock: a step running past
    # stall_s): Serve replaces the hung replica, and the retries reach a healthy one.
    handle = serve_apps("zs_fault_half", 2, hang_marker=str(tmp_path / "hang"), busy_s=0.1, stall_s=1.5)
    before = _replica_names("zs_fault_half", ray_session)
    s = SimulatorSearch(handle, topk=2, timeout_s=2.0, max_retries=8, backoff_s=0.05)
    res = _gather([s.search(f"q{i}", "Q", ["gold"], call_key=str(i)) for i in range(4)])
    m = s.metrics()
    assert all(not r.failed and r.docs for r in res) and m["search/simulator/failures"] == 0, m
    assert m["search/simulator/retries"] >= 1, m
    for _ in range(40):  # the hung replica was replaced (by now, or within seconds)
        after = _replica_names("zs_fault_half", ray_session)
        if len(after) == 2 and len(before & after) == 1:
            break
        time.sleep(0.5)
    assert len(before) == 2 and len(before & after) == 1 and len(after) == 2, (before, after)

    # every replica hangs: bounded time, then the configured fallback (no-information text, counted)
    hung = serve_apps("zs_fault_hung", 1, always_hang=True)
    s = SimulatorSearch(hung, topk=2, timeout_s=0.5, max_retries=1, backoff_s=0.05)
    t = time.perf_counter()
    r = asyncio.run(s.search("q", "Q", ["gold"]))
    assert r.failed and r.docs == [] and r.text == NO_INFORMATION and "timed out" in r.meta["error"]
    assert time.perf_counter() - t < 5 and s.metrics()["search/simulator/failures"] == 1
    with pytest.raises(SearchError, match="attempts failed"):
        asyncio.run(SimulatorSearch(hung, timeout_s=0.3, max_retries=0, on_failure="error").search("q", "Q", ["a"]))

    # ... and the rollout goes on: the policy reads "No information available." and answers; the step's
    # metrics count the failed call
    tok = AutoTokenizer.from_pretrained(tiny_assets["tokenizer"])
    eng = ScriptedEngine(tok, ["<search> capital of zorland </search>", "<answer> Karova </answer>"])
    traj = asyncio.run(run_trajectory(eng, s, make_row(0), sample_index=0, rollout_cfg=RolloutConfig(max_turns=2),
                                      step=0, seed=1))
    assert traj.answer == "Karova" and traj.search_calls[0]["failed"]
    assert NO_INFORMATION in tok.decode([t for t, mk in zip(traj.response_ids, traj.loss_mask) if mk == 0])
    assert search_call_metrics([traj.to_dict()])["search/failed_fraction"] == 1.0


# ---------------------------------------------------------------- 3. policy worker killed
@pytest.mark.integration
def test_policy_worker_killed_stops_clearly_then_resumes(ray_session, small_world, tmp_path):  # noqa: F811
    from zs_ray.train import checkpoint as ckpt
    from zs_ray.train.trainer import PolicyWorkerError, Trainer

    extra = ("trainer.steps=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=5")
    cfg = make_cfg(small_world, str(tmp_path), *extra)
    holder = {}

    def progress(m):
        if m.startswith("[ckpt]") and m.endswith("step_000001"):  # the run is past checkpoint 1: kill rank 0
            ray_session.kill(holder["tr"].policy.workers[0])

    tr = holder["tr"] = Trainer(cfg, progress=progress)
    try:
        with pytest.raises(PolicyWorkerError) as e:
            tr.train()
    finally:
        tr.shutdown()
    msg = str(e.value)
    assert "policy worker (role actor, rank 0)" in msg and "trainer.resume=auto" in msg and "step 1" in msg, msg
    root = os.path.join(str(tmp_path), "run", "checkpoints")
    assert ckpt.latest(root).endswith("step_000001")

    msgs = []
    again = Trainer(make_cfg(small_world, str(tmp_path), *extra, "trainer.resume=auto"), progress=msgs.append)
    try:
        assert again.step == 1  # lost: only the step after the last checkpoint
        last = again.train()
    finally:
        again.tracker.finish()
        again.shutdown()
    assert any("resumed from" in m and "next step 1" in m for m in msgs)
    assert last["policy/version"] == 3
    assert ckpt.load_driver_state(ckpt.latest(root))["consumed"] == expected_consumed(cfg, 3)


@pytest.mark.integration
def test_policy_worker_dead_at_weight_sync_is_reported_as_the_policy(ray_session, small_world, tmp_path):  # noqa: F811
    """The policy worker dies as a sync starts (measured: a native crash in full_state_dict): the rollout worker's
    update_weights fails on its argument. That is the policy's death, not the rollout worker's: no restart."""
    from zs_ray.train.trainer import PolicyWorkerError, Trainer

    tr = Trainer(make_cfg(small_world, str(tmp_path), "trainer.steps=3", "trainer.checkpoint_every=0"))
    sync = tr.rollout.sync

    def kill_then_sync(version):
        if version == 2:
            ray_session.kill(tr.policy.workers[0])
        return sync(version)

    tr.rollout.sync = kill_then_sync
    try:
        with pytest.raises(PolicyWorkerError) as e:
            tr.train()
        assert tr.rollout.restarts == 0
    finally:
        tr.shutdown()
    assert "policy worker (role actor, rank 0)" in str(e.value) and "step 1" in str(e.value), str(e.value)


# ---------------------------------------------------------------- 4. driver SIGKILLed between checkpoints
# tests/test_chaos.py: the driver and its Ray are SIGKILLed after a checkpoint, the run resumes, and it consumes
# exactly an unfaulted run's prompts


# ---------------------------------------------------------------- 5. checkpoint write interrupted halfway
@pytest.mark.integration
def test_interrupted_checkpoint_keeps_previous_and_resumes_from_it(ray_session, small_world, tmp_path):  # noqa: F811
    from zs_ray.train import checkpoint as ckpt
    from zs_ray.train.trainer import Trainer

    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=2", "trainer.checkpoint_every=1",
                   "trainer.keep_checkpoints=5")
    tr = Trainer(cfg, progress=lambda *_: None)
    save, saved = tr.policy.save_checkpoint, {}

    def half_written(path):
        saved[os.path.basename(os.path.dirname(path))] = _fingerprint(tr.policy.full_state_dict())
        save(path)  # the policy shards are on disk ...
        if "step_000002" in path:  # ... then the disk fills before the driver state is written
            raise OSError(28, "No space left on device (injected)")

    tr.policy.save_checkpoint = half_written
    root = tr.ckpt_root
    try:
        with pytest.raises(OSError, match="No space left"):
            tr.train()
        assert os.path.isdir(os.path.join(root, "step_000002.tmp")) and ckpt.latest(root).endswith("step_000001")
        # resume from the previous checkpoint through the real load path (same workers)
        tr.policy.save_checkpoint = save
        tr.cfg.trainer.resume = "auto"
        tr.resume()
        assert (tr.step, tr.version) == (1, 1)
        assert _fingerprint(tr.policy.full_state_dict()) == saved["step_000001.tmp"]
        assert ray_session.get(tr.rollout[0].version.remote()) == 1
        tr.train()
    finally:
        tr.tracker.finish()
        tr.shutdown()
    assert ckpt.latest(root).endswith("step_000002") and not os.path.exists(os.path.join(root, "step_000002.tmp"))
    assert ckpt.load_driver_state(ckpt.latest(root))["consumed"] == expected_consumed(cfg, 2)


# ---------------------------------------------------------------- 6. MLflow unreachable / store unwritable
@pytest.mark.integration
def test_mlflow_unreachable_training_goes_on(ray_session, small_world, tmp_path, caplog):  # noqa: F811
    from zs_ray.train.trainer import run

    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=2", f"tracking.uri=http://127.0.0.1:{free_port()}",
                   "tracking.finish_wait_s=3")
    msgs = []
    t = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="zs_ray.train.tracking"):
        last = run(cfg, progress=msgs.append)
    assert last["policy/version"] == 2 and time.perf_counter() - t < 240
    final = json.load(open(os.path.join(str(tmp_path), "run", "final_metrics.json")))
    assert final["tracking_failures"] > 0
    assert any("tracking call(s) FAILED" in m for m in msgs), msgs  # the final summary says so
    warned = [r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]
    assert len(warned) == 1  # logged once, then counted


@pytest.mark.integration
def test_mlflow_server_down_then_back_loses_no_metrics_and_a_resume_continues_the_run(tmp_path):
    """Metrics logged while the server is down wait and are sent, with their own steps, once it answers again;
    a resumed run (run_id from its checkpoint) logs on into the same run and keeps the params it started with."""
    import mlflow

    from zs_ray.bench.chaos import MlflowServer
    from zs_ray.config import load_config
    from zs_ray.train.tracking import Tracker

    srv = MlflowServer(str(tmp_path / "mlflow"))
    srv.start()
    try:
        base = ["model.policy_path=x", "search.backend=bm25", "search.corpus=c.jsonl",
                f"trainer.output_dir={tmp_path}/run", f"tracking.uri={srv.uri}", "tracking.experiment=outage"]
        t = Tracker(load_config(None, base))
        t.log_metrics({"x": 1.0}, step=1)
        srv.kill()
        t.log_metrics({"x": 2.0}, step=2)
        t.log_metrics({"x": 3.0}, step=3)
        assert len(t.pending) == 2 and t.failures >= 2 and t.run_id
        srv.start()
        t.log_metrics({"x": 4.0}, step=4)
        assert not t.pending
        t.finish()
        assert (t.lost, t.resent) == (0, 2) and "sent late" in t.summary() and "none lost" in t.summary()

        again = Tracker(load_config(None, base + ["trainer.resume=auto"]), run_id=t.run_id)
        again.log_metrics({"x": 5.0}, step=5)
        again.finish()
        assert again.run_id == t.run_id and again.failures == 0
        client = mlflow.MlflowClient(srv.uri)
        run = client.get_run(t.run_id)
        assert run.info.status == "FINISHED" and run.data.params["trainer.resume"] == "never"
        hist = sorted((m.step, m.value) for m in client.get_metric_history(t.run_id, "x"))
        assert hist == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0)], hist
    finally:
        srv.kill()


def test_tracking_store_unwritable_is_counted_not_raised(tmp_path, caplog):
    """Disk full / read-only store: the Tracker never raises; failures are counted and summarised."""
    from zs_ray.config import load_config
    from zs_ray.train.tracking import Tracker

    cfg = load_config(None, ["model.policy_path=x", "search.backend=bm25", "search.corpus=c.jsonl",
                             f"trainer.output_dir={tmp_path}/run",
                             "tracking.uri=sqlite:////proc/zs_ray_no_such_dir/mlflow.db", "tracking.finish_wait_s=0"])
    with caplog.at_level(logging.WARNING, logger="zs_ray.train.tracking"):
        t = Tracker(cfg)
        for step in range(3):
            t.log_metrics({"reward/mean": 0.1}, step=step)
        t.log_text("x", "samples/a.txt")
        t.finish()
    assert t.failures >= 4 and "FAILED" in t.summary()
    assert len([r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]) == 1
