"""A short GRPO run on an easy world must raise the training reward clearly.

This is the suite's guard on the learning signal: 20 steps, and the mean training reward of the last 5 steps
must exceed that of the first 5 by more than 0.13. Measured on 2026-12-07 with the pinned packages
(constraints.txt; per-step rewards identical on this machine and on CI's), each break made in the driver
(docs/experiments.md, "The learning test's breaks"): unbroken +0.183; the loss mask over every token +0.079;
GRPO advantages with the sign flipped, no weight sync, and an engine that takes the new policy version but
keeps its old weights all fall below +0.13. Ten steps do not learn with these packages (+0.04).
"""
import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_grpo_raises_training_reward_on_an_easy_world(ray_session, tmp_path):
    from transformers import AutoTokenizer

    from zs_ray.config import load_config
    from zs_ray.data.qa import load_rows, write_searchr1_parquet
    from zs_ray.sft.sft import encode_chat_example, sft_train
    from zs_ray.train.trainer import Trainer
    from zs_ray.world.files import build_world_assets

    out = str(tmp_path)
    build_world_assets(out, seed=1, n_entities=24, n_test_entities=4, n_pretrain=0, two_hop_per_place=0,
                       topk=5, policy_size="policy_4l")  # the world and policy it was verified on
    tok = AutoTokenizer.from_pretrained(f"{out}/tokenizer")
    demos = [json.loads(line) for line in open(f"{out}/world/warmstart.jsonl")]
    # a warm start that has the format and half-remembers answers: GRPO then sharpens what it sees rewarded
    sft_train(f"{out}/policy", [encode_chat_example(tok, d["prompt"], d["response"]) for d in demos], tokenizer=tok,
              steps=150, lr=2e-3, batch_size=8, warmup=10, threads=2, out_dir=f"{out}/warm", log_every=0)
    # an easy task: four one-hop prompts, eight samples each, every step
    rows = [r for r in load_rows(f"{out}/world/train.parquet") if r["data_source"] == "world_1hop"][:4]
    write_searchr1_parquet(rows, f"{out}/easy.parquet")
    cfg = load_config(None, [
        f"data.train_files=[{out}/easy.parquet]", f"model.policy_path={out}/warm", "search.backend=bm25",
        f"search.corpus={out}/world/corpus.jsonl", f"search.index_dir={out}/bm25", "search.topk=2",
        "rollout.n_samples=8", "rollout.max_turns=1", "rollout.max_turn_tokens=40", "rollout.max_obs_tokens=160",
        "rollout.max_context_tokens=512", "rollout.kv_cache_gb=0.25", "trainer.prompts_per_step=4",
        "trainer.steps=20", f"trainer.output_dir={out}/run", "trainer.checkpoint_every=0", "trainer.sample_every=0",
        "algorithm.lr=3e-4", "algorithm.kl_coef=0.05", "algorithm.entropy_coef=0", "algorithm.micro_batch_size=32",
        "algorithm.reward=f1", "resources.policy_workers=1", "resources.num_cpus=8",
        f"tracking.uri=sqlite:///{out}/mlflow.db"])
    tr = Trainer(cfg, progress=print)
    rewards = []
    try:
        for _ in range(cfg.trainer.steps):
            trajs = tr.rollout_step()
            rewards.append(tr.train_step(trajs, 0.0)["reward/mean"])
    finally:
        tr.tracker.finish()
        tr.shutdown()
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print("rewards per step:", [round(r, 3) for r in rewards])
    assert last > first + 0.13, f"GRPO did not raise the training reward: first {first:.3f}, last {last:.3f}"
