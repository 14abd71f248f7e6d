"""algorithms.py: GRPO / REINFORCE / GAE advantages, KL estimators and the actor loss (docs/method.md)."""
import math

import pytest
import torch

from zs_ray.core.algorithms import (actor_loss, behaviour_weights, entropy_from_logits, gae, group_spread,
                                    grpo_advantages, kl_penalty, lr_factor, masked_sum_mean, masked_whiten, policy_loss,
                                    ppo_token_rewards, reinforce_advantages, tied_groups, value_loss)


# ---------------------------------------------------------------- advantages
def test_grpo_groups_by_id_across_interleaved_order():
    rewards = torch.tensor([1.0, 0.0, 0.0, 5.0, 1.0, 7.0])
    ids = ["a", "b", "a", "b", "a", "b"]
    adv = grpo_advantages(rewards, ids)
    for g in ("a", "b"):
        idx = [i for i, x in enumerate(ids) if x == g]
        r = rewards[idx]
        assert torch.allclose(adv[idx], (r - r.mean()) / (r.std(unbiased=True) + 1e-6))
    # group a = [1, 0, 1]: mean 2/3, unbiased std 1/sqrt(3)
    assert adv[0].item() == pytest.approx((1 - 2 / 3) / (1 / math.sqrt(3) + 1e-6), rel=1e-5)


def test_grpo_ids_are_keys_not_positions():
    # same rewards, permuted order: the per-sample advantages permute with them
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.1])
    ids = [("nq", 0), ("hotpotqa", 0), ("nq", 0), ("hotpotqa", 0)]  # unique ids, not a per-source index
    adv = grpo_advantages(rewards, ids)
    perm = [3, 2, 1, 0]
    adv_p = grpo_advantages(rewards[perm], [ids[i] for i in perm])
    assert torch.allclose(adv_p, adv[perm])


@pytest.mark.parametrize("v", [0.0, 1.0, 0.1, 2 / 3, 0.7, 0.2857143])
@pytest.mark.parametrize("n", [2, 5, 7])
def test_grpo_equal_rewards_give_exact_zero(v, n):
    adv = grpo_advantages(torch.full((n,), v), ["g"] * n)
    assert torch.equal(adv, torch.zeros(n))


def test_grpo_single_sample_group_is_zero():
    adv = grpo_advantages(torch.tensor([3.0, 1.0, 0.0]), ["solo", "g", "g"])
    assert adv[0].item() == 0.0 and not torch.isnan(adv).any()
    assert adv[1].item() > 0 > adv[2].item()


def test_grpo_eps_is_added_to_std():
    adv = grpo_advantages(torch.tensor([0.0, 1.0]), [0, 0], eps=1.0)
    std = torch.tensor([0.0, 1.0]).std().item()
    assert adv[1].item() == pytest.approx(0.5 / (std + 1.0))


def test_group_spread_marks_the_groups_grpo_learns_from():
    # a: all wrong, b: differ, c: the same partial F1 (still no spread), d: one sample, e: differ
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.3, 0.0, 0.25])
    ids = ["a", "b", "a", "b", "c", "c", "d", "e", "e"]
    spread = group_spread(rewards, ids)
    assert spread.tolist() == [False, True, False, True, False, False, False, True, True]
    # exactly the samples whose group gets a non-zero GRPO advantage somewhere
    adv = grpo_advantages(rewards, ids)
    for g in set(ids):
        idx = [i for i, x in enumerate(ids) if x == g]
        assert bool(spread[idx[0]]) == bool(adv[idx].abs().sum() > 0)


def test_tied_groups_split_ties_into_solved_failed_and_partial():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 1.0])
    ids = ["right", "right", "wrong", "wrong", "half", "half", "mixed", "mixed"]
    assert tied_groups(rewards, ids, group_spread(rewards, ids)) == {
        "reward/zero_var_groups": 0.75, "reward/solved_groups": 0.25, "reward/failed_groups": 0.25}


def test_reinforce_is_raw_reward():
    r = torch.tensor([0.0, 0.5, 1.0])
    adv = reinforce_advantages(r)
    assert torch.equal(adv, r) and adv.data_ptr() != r.data_ptr()


def test_gae_gamma_lambda_one_zero_values_is_reward_to_go():
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 3.0]])
    mask = torch.tensor([[0, 1, 1, 0, 1, 1]]).float()  # index 3 is an env token (reward ignored: masked)
    values = torch.zeros_like(rewards)
    adv, ret = gae(rewards * mask, values, mask)
    assert torch.allclose(adv, torch.tensor([[0.0, 4.0, 3.0, 0.0, 3.0, 3.0]]))
    assert torch.allclose(ret, adv)


def test_gae_skips_env_tokens_for_bootstrapping():
    # values on policy tokens only; env token value 100 must never be bootstrapped from
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 100.0, 0.25]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    adv, ret = gae(rewards, values, mask)
    # t=2: delta = 1 - 0.25 = 0.75; t=0: delta = 0 + 0.25 - 0.5 = -0.25, adv = -0.25 + 0.75 = 0.5
    assert torch.allclose(adv, torch.tensor([[0.5, 0.0, 0.75]]))
    assert torch.allclose(ret, torch.tensor([[1.0, 0.0, 1.0]]))


def test_gae_discounting():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    mask = torch.ones(1, 3)
    adv, _ = gae(rewards, torch.zeros(1, 3), mask, gamma=0.5, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.25, 0.5, 1.0]]))


def test_masked_whiten_uses_only_policy_tokens():
    x = torch.tensor([[1.0, 50.0, 3.0], [5.0, 7.0, -9.0]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])  # 50 and -9 are env / padding tokens
    w = masked_whiten(x, mask)
    kept = torch.tensor([1.0, 3.0, 5.0, 7.0])
    expect = (kept - kept.mean()) / kept.std()
    assert torch.allclose(w[mask.bool()], expect, atol=1e-5)
    assert w[0, 1] == 0 and w[1, 2] == 0
    assert torch.allclose(masked_whiten(x * 10 + 3, mask), w, atol=1e-5)  # scale- and shift-free


def test_ppo_token_rewards_score_on_last_policy_token():
    logp = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    r = ppo_token_rewards(torch.tensor([2.0]), logp, logp, mask, beta=0.1)
    assert torch.allclose(r, torch.tensor([[0.0, 2.0, 0.0, 0.0]]))
    r2 = ppo_token_rewards(torch.tensor([0.0]), torch.full((1, 4), -1.0), torch.full((1, 4), -2.0), mask, 0.1, "k1")
    assert torch.allclose(r2, torch.tensor([[-0.1, -0.1, 0.0, 0.0]]))


# ---------------------------------------------------------------- KL
def test_kl_k1_and_k3():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -2.0, -0.1])
    assert torch.allclose(kl_penalty(logp, ref, "k1"), logp - ref)
    k3 = kl_penalty(logp, ref, "k3")
    d = ref - logp
    assert torch.allclose(k3, torch.exp(d) - d - 1)
    assert (k3 >= 0).all() and k3[1].item() == 0.0


def test_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(1000, generator=g) * 10, -torch.rand(1000, generator=g) * 10
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(1000))


def test_kl_unknown_kind():
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k2")


# ---------------------------------------------------------------- losses
def _batch(seed=0, B=4, T=6, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.35).float()
    mask[:, 0] = 1.0
    mask[:, 1] = 0.0
    old = torch.log_softmax(logits + 0.3 * torch.randn(B, T, V, generator=g), -1).gather(-1, tokens[..., None])[..., 0]
    ref = torch.log_softmax(logits + 0.5 * torch.randn(B, T, V, generator=g), -1).gather(-1, tokens[..., None])[..., 0]
    adv = torch.randn(B, generator=g)
    return logits, tokens, mask, old, ref, adv


def _loss(logits, tokens, mask, old, ref, adv, n_tokens, **kw):
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    return actor_loss(logp, old, ref, adv, mask, n_tokens, entropy_from_logits(logits), **kw)


def test_masked_tokens_get_exactly_zero_gradient():
    logits, tokens, mask, old, ref, adv = _batch()
    logits = logits.clone().requires_grad_(True)
    loss, _ = _loss(logits, tokens, mask, old, ref, adv, mask.sum(), kl_coef=0.1, entropy_coef=0.01)
    loss.backward()
    g = logits.grad
    assert (g[mask == 0] == 0).all()
    assert (g[mask == 1].abs().sum(-1) > 0).all()


def test_env_token_values_do_not_change_the_loss():
    logits, tokens, mask, old, ref, adv = _batch(1)
    base, _ = _loss(logits, tokens, mask, old, ref, adv, mask.sum())
    logits2, old2, ref2 = logits.clone(), old.clone(), ref.clone()
    logits2[mask == 0] = 50.0 * torch.randn_like(logits2[mask == 0])
    old2[mask == 0] = -30.0
    ref2[mask == 0] = 0.0
    other, _ = _loss(logits2, tokens, mask, old2, ref2, adv, mask.sum())
    assert torch.allclose(base, other)


def test_microbatch_token_mean_equals_full_batch():
    logits, tokens, mask, old, ref, adv = _batch(2)
    n = mask.sum()
    full, _ = _loss(logits, tokens, mask, old, ref, adv, n)
    parts = sum(_loss(logits[s], tokens[s], mask[s], old[s], ref[s], adv[s], n)[0]
                for s in (slice(0, 1), slice(1, 4)))
    assert torch.allclose(full, parts, atol=1e-6)
    # and the per-micro-batch mean would differ (which is why n_tokens is global)
    local = sum(_loss(logits[s], tokens[s], mask[s], old[s], ref[s], adv[s], mask[s].sum())[0]
                for s in (slice(0, 1), slice(1, 4)))
    assert not torch.allclose(full, local)


def test_token_mean_divides_by_unmasked_count():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert masked_sum_mean(x, m, m.sum()).item() == pytest.approx(10 / 3)
    assert masked_sum_mean(x, torch.zeros_like(m), 0).item() == 0.0


def test_kl_is_added_and_entropy_subtracted():
    logits, tokens, mask, old, ref, adv = _batch(3)
    n = mask.sum()
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    ent = entropy_from_logits(logits)
    pg, _ = policy_loss(logp, old, adv, mask, n)
    kl = masked_sum_mean(kl_penalty(logp, ref, "k3"), mask, n)
    e = masked_sum_mean(ent, mask, n)
    loss, stats = actor_loss(logp, old, ref, adv, mask, n, ent, kl_coef=0.5, entropy_coef=0.25)
    assert kl.item() > 0 and e.item() > 0
    assert loss.item() == pytest.approx((pg + 0.5 * kl - 0.25 * e).item(), rel=1e-6)
    assert stats["kl"].item() == pytest.approx(kl.item()) and stats["entropy"].item() == pytest.approx(e.item())
    # the loss grows with the KL to the reference
    far_ref = ref - 3.0
    loss_far, _ = actor_loss(logp, old, far_ref, adv, mask, n, ent, kl_coef=0.5, entropy_coef=0.25)
    assert loss_far.item() > loss.item()
    no_kl, s2 = actor_loss(logp, old, ref, adv, mask, n, ent, kl_coef=0.0, entropy_coef=0.25)
    assert no_kl.item() < loss.item() and "kl" not in s2


def test_kl_gradient_pulls_towards_reference():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -0.5]])
    mask = torch.ones(1, 2)
    loss, _ = actor_loss(logp, logp.detach(), ref, torch.zeros(1), mask, 2, kl_coef=1.0)
    loss.backward()
    # gradient descent moves logp towards ref: d/dlogp > 0 where logp > ref, < 0 where logp < ref
    assert logp.grad[0, 0] > 0 and logp.grad[0, 1] < 0


def test_defaults_are_the_reference_recipe():
    import inspect
    sig = inspect.signature(actor_loss).parameters
    assert sig["clip"].default == 0.2 and sig["kl_coef"].default == 0.001
    assert sig["kl_estimator"].default == "k3" and sig["entropy_coef"].default == 0.001


def test_policy_loss_clipping_and_clip_fraction():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.0]]))  # ratios 1.5, 0.5, 1.1, 1.0
    mask = torch.ones(1, 4)
    loss, frac = policy_loss(logp, old, torch.tensor([1.0]), mask, 4, clip=0.2)
    # A > 0: min(r, clip(r)) = [1.2, 0.5, 1.1, 1.0]; only the 1.5 token is clipped
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1 + 1.0) / 4, rel=1e-6)
    assert frac.item() == pytest.approx(0.25)
    loss_n, frac_n = policy_loss(logp, old, torch.tensor([-1.0]), mask, 4, clip=0.2)
    # A < 0: min(-r, -clip(r)) = [-1.5, -0.8, -1.1, -1.0]; only the 0.5 token is clipped
    assert loss_n.item() == pytest.approx((1.5 + 0.8 + 1.1 + 1.0) / 4, rel=1e-6)
    assert frac_n.item() == pytest.approx(0.25)
    # masked tokens are not counted in the clip fraction
    _, frac_m = policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[0.0, 1.0, 1.0, 1.0]]), 3)
    assert frac_m.item() == 0.0


def test_policy_loss_per_token_advantages():
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -6.0]])
    loss, _ = policy_loss(logp, logp, adv, torch.ones(2, 3), 6)
    assert loss.item() == pytest.approx(0.0)


def test_behaviour_weights_truncate_and_mask():
    prox = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3]]))
    behav = torch.log(torch.tensor([[0.5, 0.3, 0.4, 0.9]]))  # w = 1, 3, 0.5, 1/3
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, over = behaviour_weights(prox, behav, mask, cap=2.0, mode="truncate")
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 0.5, 0.0]]))
    assert over.item() == pytest.approx(1 / 3)  # of the 3 policy tokens
    w_m, over_m = behaviour_weights(prox, behav, mask, cap=2.0, mode="mask")
    assert torch.allclose(w_m, torch.tensor([[1.0, 0.0, 0.5, 0.0]])) and over_m.item() == pytest.approx(1 / 3)
    # on-policy samples (prox == behav) get weight exactly 1: the correction changes nothing
    w1, over1 = behaviour_weights(prox, prox, mask)
    assert torch.equal(w1, mask) and over1.item() == 0.0
    with pytest.raises(ValueError, match="behaviour_correction"):
        behaviour_weights(prox, behav, mask, mode="clip")


def test_behaviour_weights_scale_the_policy_gradient_only():
    logits, tokens, mask, old, ref, adv = _batch(4)
    n = mask.sum()
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    behav = old - 0.4 * torch.randn_like(old)
    w, _ = behaviour_weights(old, behav, mask, cap=2.0)
    pg, _ = policy_loss(logp, old, adv, mask, n)
    pg_w, _ = policy_loss(logp, old, adv, mask, n, weights=w)
    ratio = torch.exp(logp - old)
    r_c = torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
    assert pg_w.item() == pytest.approx((-(r_c * w * mask).sum() / n).item(), rel=1e-5)
    assert pg_w.item() != pytest.approx(pg.item())
    # KL and entropy are unweighted: the difference of the totals is the difference of the pg terms
    ent = entropy_from_logits(logits)
    tot, _ = actor_loss(logp, old, ref, adv, mask, n, ent, kl_coef=0.5)
    tot_w, _ = actor_loss(logp, old, ref, adv, mask, n, ent, kl_coef=0.5, weights=w)
    assert (tot_w - tot).item() == pytest.approx((pg_w - pg).item(), abs=1e-6)
    # weights carry no gradient; the gradient of a token is w times the unweighted one
    lp = logp.detach().clone().requires_grad_(True)
    policy_loss(lp, lp.detach(), adv, mask, n, weights=w)[0].backward()
    g_w = lp.grad.clone()
    lp.grad = None
    policy_loss(lp, lp.detach(), adv, mask, n)[0].backward()
    assert torch.allclose(g_w, lp.grad * w, atol=1e-7)


def test_value_loss_clipped():
    v_old = torch.zeros(1, 2)
    v = torch.tensor([[1.0, 0.2]])
    ret = torch.tensor([[2.0, 0.0]])
    loss = value_loss(v, v_old, ret, torch.ones(1, 2), 2, clip=0.5)
    # token 0: max((1-2)^2, (0.5-2)^2) = 2.25; token 1: max(0.04, 0.04) = 0.04
    assert loss.item() == pytest.approx(0.5 * (2.25 + 0.04) / 2)


def test_entropy_from_logits():
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 4)), torch.full((2,), math.log(4)))
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- lr schedule

def test_lr_factor_warmup_constant_and_cosine():
    assert [lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # warm-up, then constant
    assert lr_factor(1000, 0, 10) == 1.0  # constant ignores the total
    cos = [lr_factor(s, 0, 100, "cosine", 0.1) for s in (0, 50, 100, 150)]
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(0.55) and cos[2:] == pytest.approx([0.1, 0.1])
    assert lr_factor(2, 4, 100, "cosine") == 0.75 and lr_factor(4, 4, 104, "cosine") == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(*[[lr_factor(s, 0, 50, "cosine") for s in r] for r in (range(0, 60),
                                                                                           range(1, 61))]))
    with pytest.raises(ValueError, match="algorithm.lr_schedule"):
        lr_factor(10, 0, 100, "linear")
