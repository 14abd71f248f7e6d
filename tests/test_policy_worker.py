"""PolicyWorker / WorkerGroup: real Ray actors, a real gloo process group, FSDP2 on CPU.

One 1-rank and one 2-rank actor group live for the whole module; every test that trains first
restores the initial weights from a checkpoint (which also exercises DCP resharding 2 -> 1 ranks).
"""
import time

import pytest
import ray
import torch

from zs_ray.core.algorithms import gae, grpo_advantages, ppo_token_rewards, reinforce_advantages
from zs_ray.core.batch import collate

pytestmark = pytest.mark.integration

ALGO = dict(lr=1e-3, micro_batch_size=2, warmup_steps=3, kl_coef=0.001, entropy_coef=0.001, grad_clip=1.0,
            clip=0.2, kl_estimator="k3", weight_decay=0.01, critic_lr=1e-3, value_clip=0.5)
MODEL = dict(attn_implementation="sdpa", dtype="float32")


def make_batch(vocab, n=5, seed=0, pad_id=0, advantages=None):
    """n trajectories of different lengths; responses contain an environment block (mask 0)."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for i in range(n):
        P, R = 4 + i % 3, 7 + (3 * i) % 6
        mask = [1] * R
        mask[2:4] = [0, 0]  # an <information> block inside the response
        trajs.append(dict(prompt_ids=torch.randint(3, vocab, (P,), generator=g).tolist(),
                          response_ids=torch.randint(3, vocab, (R,), generator=g).tolist(),
                          loss_mask=mask, rollout_logprobs=[-1.0] * R, reward=float(i % 2)))
    if advantages is None:
        advantages = torch.randn(n, generator=g)
    return collate(trajs, pad_id, advantages=advantages)


def response_mask(batch) -> torch.Tensor:
    """1 on the response tokens, where the workers' log-probs are exact (prompt columns may hold 0)."""
    m = batch["attention_mask"].float()
    for r, p in enumerate(batch["prompt_lens"].tolist()):
        m[r, :p] = 0
    return m


def seq_logprob(lp, batch):
    return (lp * batch["loss_mask"]).sum(1)


def params_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def hf_ref(tiny_assets):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32,
                                                attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def groups(ray_session, tiny_assets, tmp_path_factory):
    from actors.worker_group import WorkerGroup

    t0 = time.time()
    # g2 also holds the frozen KL reference in its own processes (the trainer's default, colocate_reference)
    g2 = WorkerGroup(2, tiny_assets["model"], ALGO, MODEL, role="actor", resources={"cpus": 0.5},
                     ref_path=tiny_assets["model"])
    g1 = WorkerGroup(1, tiny_assets["model"], ALGO, MODEL, role="actor", resources={"cpus": 0.5})
    print(f"\n[setup] 1+2 workers ready in {time.time() - t0:.1f}s")
    init = str(tmp_path_factory.mktemp("ckpt") / "init")
    g2.save_checkpoint(init)
    yield {"g1": g1, "g2": g2, "init": init}
    g1.shutdown()
    g2.shutdown()


@pytest.fixture(scope="module")
def vocab(hf_ref):
    return hf_ref.config.vocab_size


def test_logprobs_match_single_process_hf(groups, hf_ref, vocab):
    from zs_ray.core.algorithms import token_entropy, token_logprobs
    from zs_ray.core.batch import response_window

    groups["g2"].load_checkpoint(groups["init"])
    b = make_batch(vocab, n=5)
    out = groups["g2"].compute_logprobs(b, with_entropy=True)
    with torch.no_grad():
        logits = hf_ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    # exact on every response token; the output layer skips the columns that only predict prompt tokens
    # (from the shortest prompt of each micro-batch on, zs_ray.core.batch.response_window), which hold 0
    m = response_mask(b)
    assert out["logprobs"].shape == b["input_ids"].shape
    torch.testing.assert_close(out["logprobs"] * m, token_logprobs(logits, b["input_ids"]) * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["entropy"] * m, token_entropy(logits) * m, atol=1e-5, rtol=0)
    start = response_window(b)
    assert 0 < start < int(b["prompt_lens"].min())
    assert (out["logprobs"][:, :start + 1] == 0).all() and (out["entropy"][:, :start + 1] == 0).all()
    # position t is log p(x_t | x_<t): check one entry by hand
    p = int(b["prompt_lens"][0])
    manual = torch.log_softmax(logits[0, p - 1], -1)[b["input_ids"][0, p]]
    assert abs(out["logprobs"][0, p].item() - manual.item()) < 1e-5


def test_update_2_workers_equals_1_worker(groups, vocab):
    g1, g2 = groups["g1"], groups["g2"]
    g1.load_checkpoint(groups["init"])  # saved by 2 ranks, loaded by 1 (DCP reshards)
    g2.load_checkpoint(groups["init"])
    b = make_batch(vocab, n=5, seed=1)  # 5 rows: the 2-rank split needs a dummy row
    b["ref_logprobs"] = g2.compute_logprobs(b)
    b["old_logprobs"] = b["ref_logprobs"].clone()
    t = {}
    for name, g in (("1", g1), ("2", g2)):
        stats = [g.update(b) for _ in range(3)]
        t0 = time.time()
        stats.append(g.update(b))
        t[name] = time.time() - t0
        groups[f"stats{name}"] = stats
    print(f"\n[step time] 5 rows x {b['input_ids'].shape[1]} tokens: 1 worker {t['1']:.3f}s, 2 workers {t['2']:.3f}s")
    s1, s2 = groups["stats1"], groups["stats2"]
    for a, c in zip(s1, s2):
        for k in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "grad_norm", "lr"):
            assert a[k] == pytest.approx(c[k], rel=1e-4, abs=1e-6), k
        assert a["tokens"] == c["tokens"] == int(b["loss_mask"].sum())
    assert s1[0]["lr"] == pytest.approx(ALGO["lr"] / 3) and s1[2]["lr"] == pytest.approx(ALGO["lr"])  # warm-up
    assert s1[-1]["kl"] > 0 and s1[-1]["clip_frac"] > 0  # the policy moved away from old/ref
    sd1, sd2 = g1.full_state_dict(), g2.full_state_dict()
    assert params_diff(sd1, sd2) < 1e-5
    groups["g1"].load_checkpoint(groups["init"])
    assert params_diff(g1.full_state_dict(), sd1) > 1e-4  # ...and the parameters did move


def test_grpo_update_moves_logprobs_in_the_advantage_direction(groups, vocab):
    g2 = groups["g2"]
    g2.load_checkpoint(groups["init"])
    b = make_batch(vocab, n=4, seed=2)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    b["advantages"] = grpo_advantages(rewards, ["q0", "q0", "q1", "q1"])
    before = g2.compute_logprobs(b)
    b["ref_logprobs"] = before
    for _ in range(5):
        b["old_logprobs"] = g2.compute_logprobs(b)
        stats = g2.update(b)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values() if isinstance(v, float))
    delta = seq_logprob(g2.compute_logprobs(b), b) - seq_logprob(before, b)
    assert (delta[b["advantages"] > 0] > 0).all(), delta
    assert (delta[b["advantages"] < 0] < 0).all(), delta


def test_colocated_reference_stays_frozen_while_the_policy_trains(groups, vocab):
    g1, g2 = groups["g1"], groups["g2"]
    g2.load_checkpoint(groups["init"])
    b = make_batch(vocab, n=4, seed=3)
    ref0 = g2.compute_logprobs(b, reference=True)
    torch.testing.assert_close(ref0, g2.compute_logprobs(b), atol=1e-6, rtol=0)  # same initial weights
    b["ref_logprobs"], b["old_logprobs"] = ref0, ref0.clone()
    for _ in range(3):
        g2.update(b)
    m = b["attention_mask"].float()
    assert ((g2.compute_logprobs(b) - ref0) * m).abs().max() > 1e-4  # the policy moved...
    torch.testing.assert_close(g2.compute_logprobs(b, reference=True), ref0, atol=0, rtol=0)  # ...its reference not
    g2.load_checkpoint(groups["init"])  # checkpoints hold the policy only; the reference is untouched by loads
    torch.testing.assert_close(g2.compute_logprobs(b, reference=True), ref0, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no reference model"):
        g1.compute_logprobs(b, reference=True)


def test_masked_tokens_get_exactly_zero_gradient_in_the_loss(hf_ref, vocab):
    """The worker's own loss code path: d loss / d logits is exactly 0 wherever the target token is masked."""
    from actors.policy_worker import ALGO_DEFAULTS
    from zs_ray.core.algorithms import actor_microbatch_loss

    b = make_batch(vocab, n=3, seed=3)
    g = torch.Generator().manual_seed(0)
    b["old_logprobs"] = -torch.rand(b["input_ids"].shape, generator=g) * 5
    b["ref_logprobs"] = -torch.rand(b["input_ids"].shape, generator=g) * 5
    logits = hf_ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logits.retain_grad()
    loss, _ = actor_microbatch_loss(logits, b, int(b["loss_mask"].sum()),
                                    {**ALGO_DEFAULTS, **ALGO, "entropy_coef": 0.01})
    loss.backward()
    row_grad = logits.grad.abs().sum(-1)  # [B, T]: logits at t-1 produce token t
    target_mask = torch.nn.functional.pad(b["loss_mask"][:, 1:], (0, 1))
    assert (row_grad[target_mask == 0] == 0).all()  # prompt, environment block, padding, last position
    assert (row_grad[target_mask == 1] > 0).all()
    hf_ref.zero_grad(set_to_none=True)


def test_behaviour_correction_in_the_worker_loss(hf_ref, vocab):
    """algorithm.behaviour_correction: on-policy samples change nothing; stale ones are weighted, masked stay 0."""
    from actors.policy_worker import ALGO_DEFAULTS
    from zs_ray.core.algorithms import actor_microbatch_loss, token_logprobs

    b = make_batch(vocab, n=3, seed=6)
    n = int(b["loss_mask"].sum())
    algo = {**ALGO_DEFAULTS, **ALGO}
    with torch.no_grad():
        logits = hf_ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    b["old_logprobs"] = token_logprobs(logits, b["input_ids"])
    plain, s0 = actor_microbatch_loss(logits, b, n, algo)
    on = dict(b, rollout_logprobs=b["old_logprobs"].clone())
    same, s1 = actor_microbatch_loss(logits, on, n, {**algo, "behaviour_correction": "truncate"})
    assert same.item() == pytest.approx(plain.item(), abs=1e-6) and "behav_weight" not in s0
    assert s1["behav_weight"].item() == pytest.approx(1.0) and s1["behav_over_cap"].item() == 0.0
    stale = dict(b, rollout_logprobs=b["old_logprobs"] - 1.0)  # the engine gave every token e^-1 less: w = e
    _, s2 = actor_microbatch_loss(logits, stale, n, {**algo, "behaviour_correction": "truncate"})
    assert s2["behav_weight"].item() == pytest.approx(2.0) and s2["behav_over_cap"].item() == pytest.approx(1.0)
    _, s3 = actor_microbatch_loss(logits, stale, n, {**algo, "behaviour_correction": "mask"})
    assert s3["behav_weight"].item() == 0.0  # every token over the cap is dropped
    logits = hf_ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logits.retain_grad()
    half = dict(b, rollout_logprobs=b["old_logprobs"] - 0.5 * torch.rand(b["input_ids"].shape))
    actor_microbatch_loss(logits, half, n, {**algo, "behaviour_correction": "truncate"})[0].backward()
    target_mask = torch.nn.functional.pad(b["loss_mask"][:, 1:], (0, 1))
    assert (logits.grad.abs().sum(-1)[target_mask == 0] == 0).all()
    hf_ref.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="rollout_logprobs"):
        actor_microbatch_loss(logits, {k: v for k, v in b.items() if k != "rollout_logprobs"}, n,
                              {**algo, "behaviour_correction": "truncate"})


def test_loss_without_old_logprobs_is_the_on_policy_loss(hf_ref, vocab):
    """The trainer sends no old_logprobs with one optimiser step per batch: the loss then equals, in value and
    gradient, the loss with old_logprobs = this model's own log-probs, and still reports the engine gap."""
    from actors.policy_worker import ALGO_DEFAULTS
    from zs_ray.core.algorithms import actor_microbatch_loss, token_logprobs

    b = make_batch(vocab, n=3, seed=7)
    n = int(b["loss_mask"].sum())
    b["ref_logprobs"] = -torch.rand(b["input_ids"].shape, generator=torch.Generator().manual_seed(1)) * 5
    algo = {**ALGO_DEFAULTS, **ALGO}
    grads, stats = [], []
    for with_old in (True, False):
        logits = hf_ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits.retain_grad()
        mb = dict(b, old_logprobs=token_logprobs(logits, b["input_ids"]).detach()) if with_old else dict(b)
        loss, s = actor_microbatch_loss(logits, mb, n, algo)
        loss.backward()
        grads.append(logits.grad.clone())
        stats.append(s)
        hf_ref.zero_grad(set_to_none=True)
    assert torch.allclose(grads[0], grads[1], atol=1e-7) and grads[0].abs().sum() > 0
    assert stats[0]["loss"].item() == pytest.approx(stats[1]["loss"].item(), abs=1e-7)
    with torch.no_grad():
        own = token_logprobs(hf_ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                             b["input_ids"])
    gap = ((b["rollout_logprobs"] - own).abs() * b["loss_mask"]).sum() / n
    assert stats[1]["logprob_gap"].item() == pytest.approx(gap.item(), rel=1e-5) and gap > 0


def test_masked_positions_do_not_change_the_update(groups, vocab):
    """End to end through Ray + FSDP: garbage at masked positions leaves the trained weights bit-identical."""
    g2 = groups["g2"]
    b = make_batch(vocab, n=5, seed=4)
    g2.load_checkpoint(groups["init"])
    b["old_logprobs"] = g2.compute_logprobs(b)
    b["ref_logprobs"] = b["old_logprobs"] - 0.1
    b["advantages"] = b["advantages"][:, None].expand_as(b["loss_mask"]).clone()  # per-token form
    g2.update(b)
    clean = g2.full_state_dict()
    junk = {k: v.clone() for k, v in b.items()}
    off = junk["loss_mask"] == 0
    g = torch.Generator().manual_seed(5)
    for k in ("old_logprobs", "ref_logprobs", "advantages", "rollout_logprobs"):
        junk[k][off] = torch.randn(int(off.sum()), generator=g) * 1e4
    g2.load_checkpoint(groups["init"])
    g2.update(junk)
    dirty = g2.full_state_dict()
    assert all(torch.equal(clean[k], dirty[k]) for k in clean)


def test_several_epochs_fix_old_logprobs_before_the_first(ray_session, groups, tiny_assets, vocab):
    """algorithm.epochs = 2 without old_logprobs (as the trainer sends a GRPO batch): the workers compute them
    before the first epoch (not again before the second), so the update is the one given them explicitly."""
    from actors.worker_group import WorkerGroup

    g = WorkerGroup(2, tiny_assets["model"], {**ALGO, "epochs": 2, "warmup_steps": 0}, MODEL, role="actor",
                    resources={"cpus": 0.5})
    try:
        b = make_batch(vocab, n=5, seed=8)
        g.load_checkpoint(groups["init"])
        given = g.update(dict(b, old_logprobs=g.compute_logprobs(b)))
        after_given = g.full_state_dict()
        g.load_checkpoint(groups["init"])
        own = g.update(b)
        after_own = g.full_state_dict()
    finally:
        g.shutdown()
    assert all(torch.equal(after_given[k], after_own[k]) for k in after_given)
    assert own["step"] == 2 and own["pg_loss"] == pytest.approx(given["pg_loss"], abs=1e-7)
    assert own["logprob_gap"] > 0  # the engine's (fixed -1.0) against the fixed pre-update log-probs


def test_ppo_critic_and_reinforce_updates_are_finite(ray_session, groups, tiny_assets, vocab):
    from actors.worker_group import WorkerGroup

    g2 = groups["g2"]
    g2.load_checkpoint(groups["init"])
    b = make_batch(vocab, n=5, seed=6)
    critic = WorkerGroup(2, tiny_assets["model"], ALGO, MODEL, role="critic", resources={"cpus": 0.5})
    try:
        lp = g2.compute_logprobs(b)
        ref = lp - 0.05
        values = critic.compute_values(b)
        assert values.shape == b["input_ids"].shape and torch.isfinite(values).all()
        rewards = ppo_token_rewards(b["scores"], lp, ref, b["loss_mask"], beta=0.001)
        adv, returns = gae(rewards, values, b["loss_mask"], gamma=1.0, lam=1.0)
        losses = []
        for _ in range(4):
            cb = {**b, "values": critic.compute_values(b), "returns": returns}
            s = critic.update_critic(cb)
            assert all(torch.isfinite(torch.tensor(float(v))) for v in s.values()), s
            losses.append(s["vf_loss"])
        assert losses[-1] < losses[0], losses  # the critic fits the returns
        s = g2.update({**b, "advantages": adv, "old_logprobs": lp, "ref_logprobs": ref})  # PPO actor step
        assert all(torch.isfinite(torch.tensor(float(v))) for v in s.values()), s
        sd = critic.full_state_dict()
        assert "value_head.weight" in sd and "model.layers.0.mlp.up_proj.weight" in sd
    finally:
        critic.shutdown()
    s = g2.update({**b, "advantages": reinforce_advantages(b["scores"]), "old_logprobs": lp, "ref_logprobs": ref})
    assert all(torch.isfinite(torch.tensor(float(v))) for v in s.values()), s
    assert s["pg_loss"] != 0


def test_checkpoint_restores_exact_training_state(groups, vocab, tmp_path):
    g1, g2 = groups["g1"], groups["g2"]
    a, b = make_batch(vocab, n=5, seed=7), make_batch(vocab, n=5, seed=8)
    g2.load_checkpoint(groups["init"])
    g2.update(a)
    g2.save_checkpoint(str(tmp_path / "ck"))
    s1 = g2.update(b)
    p1 = g2.full_state_dict()
    g2.update(a)  # move weights, optimiser moments, scheduler and step count on
    g2.update(b)
    meta = g2.load_checkpoint(str(tmp_path / "ck"))
    assert meta["steps"] == 1 and meta["with_optim"]
    s2 = g2.update(b)
    p2 = g2.full_state_dict()
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert s1 == s2  # same loss, grad norm, lr (warm-up position) and step number
    g1.load_checkpoint(str(tmp_path / "ck"))  # another world size: DCP reshards the optimiser too
    s3 = g1.update(b)
    assert params_diff(g1.full_state_dict(), p1) < 1e-5 and s3["lr"] == s1["lr"] and s3["step"] == s1["step"]


def test_full_state_dict_and_export_load_into_transformers(groups, tiny_assets, hf_ref, vocab, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from zs_ray.core.algorithms import token_logprobs

    g2 = groups["g2"]
    g2.load_checkpoint(groups["init"])
    b = make_batch(vocab, n=5, seed=9)
    g2.update(b)  # weights differ from the initial ones
    ref = g2.state_dict_ref()
    assert isinstance(ref, ray.ObjectRef)  # can be handed to rollout workers as is
    sd = ray.get(ref)
    fresh = LlamaForCausalLM(hf_ref.config).eval()
    fresh.load_state_dict(sd, strict=True)
    m = response_mask(b)
    with torch.no_grad():
        logits = fresh(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(token_logprobs(logits, b["input_ids"]) * m, g2.compute_logprobs(b) * m,
                               atol=1e-5, rtol=0)
    out = g2.export_hf(str(tmp_path / "hf"))
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(out).pad_token_id == AutoTokenizer.from_pretrained(tiny_assets["tokenizer"]).pad_token_id
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                   logits, atol=1e-6, rtol=0)



def test_trainable_layers_train_only_the_top_and_sync_only_what_trains(ray_session, tiny_assets, hf_ref, vocab):
    """model.trainable_layers=1: one update moves the top decoder layer (and the final norm) only, and the
    weight sync carries exactly those tensors, on 2 FSDP2 ranks."""
    from actors.worker_group import WorkerGroup

    n_layers = hf_ref.config.num_hidden_layers
    g = WorkerGroup(2, tiny_assets["model"], ALGO, {**MODEL, "trainable_layers": 1}, role="actor",
                    resources={"cpus": 0.5})
    try:
        before = g.full_state_dict()
        g.update(make_batch(vocab, n=4, seed=11))
        after = g.full_state_dict()
        top = f"model.layers.{n_layers - 1}."
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert moved and all(k.startswith(top) or k == "model.norm.weight" for k in moved), sorted(moved)[:5]
        synced = ray.get(g.state_dict_ref())
        assert set(synced) == {k for k in before if k.startswith(top) or k == "model.norm.weight"}
        for k, v in synced.items():
            assert torch.equal(v, after[k])
    finally:
        g.shutdown()
