"""The real stack end to end: FSDP2 policy workers + vLLM rollout workers + search, driven by Trainer."""
import os

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from zs_ray.world.files import build_world_assets

    out = str(tmp_path_factory.mktemp("world"))
    build_world_assets(out, seed=0, n_entities=40, n_test_entities=8, n_pretrain=0)
    return out


def make_cfg(world, out, *extra):
    from zs_ray.config import load_config

    base = [f"data.train_files=[{world}/world/train.parquet]", f"data.test_files=[{world}/world/test.parquet]",
            f"model.policy_path={world}/policy", "search.backend=bm25", f"search.corpus={world}/world/corpus.jsonl",
            f"search.index_dir={out}/bm25", "search.topk=2", "rollout.n_samples=2", "rollout.max_turns=1",
            "rollout.max_turn_tokens=16", "rollout.max_obs_tokens=96", "rollout.max_context_tokens=512",
            "rollout.kv_cache_gb=0.25", "trainer.prompts_per_step=3", f"trainer.output_dir={out}/run",
            "trainer.checkpoint_every=0", "trainer.sample_every=1", "algorithm.lr=1e-3", "algorithm.micro_batch_size=4",
            "resources.policy_workers=1", "resources.num_cpus=8", f"tracking.uri=sqlite:///{out}/mlflow.db"]
    return load_config(None, base + list(extra))


def test_grpo_two_policy_workers_three_steps_weights_synced(ray_session, small_world, tmp_path):
    from zs_ray.train.trainer import Trainer

    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=3", "resources.policy_workers=2")
    tr = Trainer(cfg, progress=lambda *_: None)
    try:
        seen = []

        def compare():
            engine = ray_session.get(tr.rollout[0].weights_checksum.remote())
            sd = tr.policy.full_state_dict()
            common = [k for k in engine if k in sd]
            assert "model.embed_tokens.weight" in common and len(common) >= 5
            for k in common:
                assert engine[k] == pytest.approx(float(sd[k].double().sum()), rel=1e-9, abs=1e-6), k
            return tuple(engine[k] for k in sorted(common))

        before = compare()
        for _ in range(3):
            trajs = tr.rollout_step()
            m = tr.train_step(trajs, 0.0)
            for k in ("actor/loss", "actor/kl", "actor/entropy", "reward/mean", "actor/grad_norm"):
                assert k in m and torch.isfinite(torch.tensor(m[k])), (k, m.get(k))
            engine = compare()  # the engine holds exactly the trainer's new weights
            assert engine != before
            assert ray_session.get(tr.rollout[0].version.remote()) == tr.version
            seen.append(engine)
        assert len(set(seen)) == 3  # the rollout engine's weights changed after every step
        assert m["policy/version"] == 3
    finally:
        tr.tracker.finish()
        tr.shutdown()


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_ppo_and_reinforce_run_two_steps(ray_session, small_world, tmp_path, algo):
    from zs_ray.train.trainer import run

    warmup = ["algorithm.critic_warmup=1"] if algo == "ppo" else []  # step 1 trains only the critic
    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=2", f"algorithm.name={algo}", *warmup)
    last = run(cfg, progress=lambda *_: None)
    assert last["policy/version"] == 2
    assert all(v == v for v in last.values() if isinstance(v, float))  # no NaN
    if algo == "ppo":
        assert "actor/critic/vf_loss" in last and "actor/pg_loss" in last
        import mlflow

        client = mlflow.MlflowClient(cfg.tracking.uri)
        run_id = client.search_runs([e.experiment_id for e in client.search_experiments()])[0].info.run_id
        steps = lambda key: sorted(m.step for m in client.get_metric_history(run_id, key))  # noqa: E731
        assert steps("actor/critic/vf_loss") == [1, 2] and steps("actor/pg_loss") == [2]
    assert os.path.exists(os.path.join(str(tmp_path), "run", "policy_hf", "model.safetensors"))


def _consumed_by_step(run_dir):
    from zs_ray.train import checkpoint as ckpt

    return ckpt.load_driver_state(ckpt.latest(os.path.join(run_dir, "checkpoints")))


def test_resume_replays_the_same_prompts_and_noise(ray_session, small_world, tmp_path):
    """A run stopped after step 2 of 4 and resumed sees exactly the prompts and noise of an uninterrupted run."""
    from zs_ray.train.trainer import run

    full = make_cfg(small_world, str(tmp_path / "full"), "trainer.steps=4", "trainer.checkpoint_every=1",
                    "trainer.keep_checkpoints=10")
    run(full, progress=lambda *_: None)
    straight = _consumed_by_step(str(tmp_path / "full" / "run"))

    part = make_cfg(small_world, str(tmp_path / "part"), "trainer.steps=2", "trainer.checkpoint_every=1")
    run(part, progress=lambda *_: None)  # "killed" after step 2: its last checkpoint is step 2
    resumed_cfg = make_cfg(small_world, str(tmp_path / "part"), "trainer.steps=4", "trainer.checkpoint_every=1",
                           "trainer.resume=auto")
    msgs = []
    run(resumed_cfg, progress=msgs.append)
    assert any("resumed from" in m and "next step 2" in m for m in msgs)
    resumed = _consumed_by_step(str(tmp_path / "part" / "run"))
    assert resumed["consumed"] == straight["consumed"]  # same prompts, none twice, none skipped
    assert len(resumed["consumed"]) == len(set(resumed["consumed"])) or len(straight["consumed"]) > 0
    assert resumed["noise_p"] == straight["noise_p"] and resumed["step"] == straight["step"] == 4


def test_staleness_one_runs_and_never_trains_older_samples(ray_session, small_world, tmp_path):
    from zs_ray.train.trainer import run

    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=3", "trainer.staleness=1")
    last = run(cfg, progress=lambda *_: None)
    assert last["policy/version"] == 3
    assert not any(k.startswith("staleness/") and int(k.split("/")[1]) > 1 for k in last)


def test_filter_groups_trains_only_groups_whose_rewards_differ(ray_session, small_world, tmp_path):
    """algorithm.filter_groups: an all-equal group leaves the batch; a step with no other group keeps the weights."""
    from zs_ray.train.trainer import Trainer

    cfg = make_cfg(small_world, str(tmp_path), "trainer.steps=2", "algorithm.filter_groups=true")
    tr = Trainer(cfg, progress=lambda *_: None)
    try:
        trajs = tr.rollout_step()
        ids = sorted({t["prompt_id"] for t in trajs})
        assert len(ids) == 3 and len(trajs) == 6
        for t in trajs:  # the first prompt's samples tie; the others' differ
            t["reward"] = 0.5 if t["prompt_id"] == ids[0] else float(t["sample_index"] % 2)
        m = tr.train_step(trajs, 0.0)
        assert m["batch/trained"] == 4 and m["reward/zero_var_groups"] == pytest.approx(1 / 3)
        assert m["reward/solved_groups"] == m["reward/failed_groups"] == 0.0  # the tie is at 0.5
        assert "actor/skipped" not in m and torch.isfinite(torch.tensor(m["actor/loss"]))

        before = tr.policy.full_state_dict()
        trajs = tr.rollout_step()
        for t in trajs:
            t["reward"] = 0.0
        m = tr.train_step(trajs, 0.0)
        assert m["batch/trained"] == 0 and m["actor/skipped"] == 1.0
        assert m["reward/zero_var_groups"] == m["reward/failed_groups"] == 1.0 and m["reward/solved_groups"] == 0.0
        after = tr.policy.full_state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # no update, but the step and version advance
        assert m["policy/version"] == 2 and tr.step == 2
    finally:
        tr.tracker.finish()
        tr.shutdown()
