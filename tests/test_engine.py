"""Engines: vLLM (in-process v1 engine, continuous batching) and the transformers fallback agree token for token."""
import asyncio

import pytest
import torch

from zs_ray.engines.engine import HFEngine, VLLMEngine, make_engine

pytestmark = pytest.mark.integration
PROMPTS = ["the capital of zorland is", "Doc 1: milo tesh founded", "zorland"]


@pytest.fixture(scope="module")
def model_path(tiny_assets, tmp_path_factory):
    """The CPU default 'policy' size: vLLM's CPU attention needs head_dim >= 32 (the 'test' size has 16)."""
    from zs_ray.world.tiny_models import make_tiny_model

    return make_tiny_model(tiny_assets["tokenizer"], str(tmp_path_factory.mktemp("policy")), size="policy")


@pytest.fixture(scope="module")
def perturbed(model_path):
    """A state dict far from the (near-uniform) random init, so greedy outputs are varied."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_path)
    g = torch.Generator().manual_seed(3)
    return {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in m.state_dict().items()
            if k != "lm_head.weight"}  # tied to the embeddings


@pytest.fixture(scope="module")
def engines(model_path, perturbed):
    vl = VLLMEngine(model_path, max_model_len=512, kv_cache_gb=0.25, max_num_seqs=32)
    hf = HFEngine(model_path)
    assert vl.startup_s < 60
    for e in (vl, hf):
        assert e.load_weights(perturbed, 5) < 10 and e.version == 5
    return vl, hf


def gen_all(engine, prompts, **kw):
    async def go():
        return await asyncio.gather(*[engine.generate(p, **kw) for p in prompts])
    return asyncio.run(go())


def test_vllm_and_hf_same_greedy_tokens(engines):
    vl, hf = engines
    ids = [vl.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    a = gen_all(vl, ids, max_tokens=32, temperature=0.0)
    b = gen_all(hf, ids, max_tokens=32, temperature=0.0)  # one left-padded batch
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
        assert len(x.token_ids) == len(x.logprobs)
        assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) < 1e-3
    assert len(set(a[0].token_ids)) > 3  # not a degenerate repeat


def test_logprobs_off_same_tokens_none_returned(engines):
    """logprobs=False (what the simulator asks by default) changes what is returned, not what is sampled."""
    vl, hf = engines
    ids = [vl.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    for e in (vl, hf):
        on = gen_all(e, ids, max_tokens=16, temperature=0.0)
        off = gen_all(e, ids, max_tokens=16, temperature=0.0, logprobs=False)
        assert [x.token_ids for x in off] == [x.token_ids for x in on]
        assert all(x.logprobs is None for x in off) and all(len(x.logprobs) == len(x.token_ids) for x in on)


def test_stop_string_kept_and_tokens_untouched(engines):
    vl, hf = engines
    ids = vl.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    full = gen_all(vl, [ids], max_tokens=32, temperature=0.0)[0]
    # stop on the text of a generated token from the 6th on (first occurrence at or before it); a byte-level
    # token that is half a UTF-8 character decodes to U+FFFD and is no stop string, so skip those
    texts = [vl.tokenizer.decode([t]).strip() for t in full.token_ids]
    at = next(i for i in range(5, len(texts)) if texts[i] and "\ufffd" not in texts[i])
    stop = texts[at]
    for e in (vl, hf):
        g = gen_all(e, [ids], max_tokens=32, temperature=0.0, stop=[stop])[0]
        assert g.finish_reason == "stop" and g.stop_str == stop, e
        assert g.token_ids == full.token_ids[:len(g.token_ids)] and len(g.token_ids) <= at + 1
        assert e.tokenizer.decode(g.token_ids).endswith(stop) or stop in e.tokenizer.decode(g.token_ids)


def test_continuous_batching_seeds_and_lengths(engines):
    vl, hf = engines
    ids = [vl.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS] * 8
    lens = [4 + i % 7 for i in range(len(ids))]

    async def go(e, seed0):
        return await asyncio.gather(*[e.generate(p, max_tokens=n, temperature=1.0, top_p=0.9, seed=seed0 + i)
                                      for i, (p, n) in enumerate(zip(ids, lens))])
    a, b, c = asyncio.run(go(vl, 0)), asyncio.run(go(vl, 0)), asyncio.run(go(vl, 100))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]  # per-request seeds: reproducible
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    for g, n in zip(a, lens):
        assert len(g.token_ids) <= n and (g.finish_reason != "length" or len(g.token_ids) == n)
    for g, n in zip(asyncio.run(go(hf, 0)), lens):  # per-row max_tokens inside one HF batch
        assert len(g.token_ids) <= n and (g.finish_reason != "length" or len(g.token_ids) == n)


def test_clear_errors(tiny_assets):
    with pytest.raises(ValueError, match="rollout.engine"):
        make_engine("sglang", tiny_assets["model"])
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            HFEngine(tiny_assets["model"], device="cuda")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_assets["model"])
    if cfg.head_dim % 32:  # e.g. the 'test' size (head_dim 16): vLLM's CPU kernels lack it
        with pytest.raises(ValueError, match=f"head_dim={cfg.head_dim}"):
            VLLMEngine(tiny_assets["model"])


def test_reload_drops_only_the_rotary_warning():
    """Each in-place reload made vLLM warn "RotaryEmbedding: Failed to load weights" (its cos/sin cache is not in
    any checkpoint, and vLLM keeps it): filtered out; the same warning about any other layer still passes."""
    import logging

    from zs_ray.engines.engine import quiet_rotary_reload_warning

    quiet_rotary_reload_warning()
    quiet_rotary_reload_warning()  # idempotent: one filter, not one per engine
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    assert len(log.filters) == 1

    def rec(layer):
        return log.makeRecord(log.name, logging.WARNING, __file__, 0, "%s: Failed to load weights", (layer,), None)
    assert not log.filter(rec("RotaryEmbedding")) and log.filter(rec("QKVParallelLinear"))


def test_a_subset_reload_is_quiet_about_the_layers_it_leaves_alone_and_only_then():
    import logging

    from zs_ray.engines.vllm_compat import quiet_subset_reload

    layerwise, inplace = (logging.getLogger(n) for n in quiet_subset_reload.NAMES)

    def rec(log, msg, *args):
        return log.makeRecord(log.name, logging.WARNING, __file__, 0, msg, args, None)
    skipped = [(layerwise, "%s: Failed to load weights", "QKVParallelLinear"),
               (inplace, "Following weights were not loaded from checkpoint: %s", {"model.layers.0.mlp"})]
    with quiet_subset_reload():
        assert not any(log.filter(rec(log, *m)) for log, *m in skipped)
        assert inplace.filter(rec(inplace, "Reloading weights inplace..."))
    assert all(log.filter(rec(log, *m)) for log, *m in skipped)  # a full reload still warns


def test_a_partial_state_dict_changes_only_its_tensors_in_both_engines(engines, perturbed):
    """The trainable-layers sync sends the top layers only: both engines take the subset, keep the rest, and
    still agree token for token (vLLM's CPU layers repack what they reload, and leave the others alone)."""
    vl, hf = engines
    ids = [vl.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    before = gen_all(vl, ids, max_tokens=24, temperature=0.0)
    top = max(int(k.split(".")[2]) for k in perturbed if k.startswith("model.layers."))
    g = torch.Generator().manual_seed(4)
    subset = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in perturbed.items()
              if k.startswith(f"model.layers.{top}.")}
    assert 0 < len(subset) < len(perturbed)
    try:
        for e in (vl, hf):
            e.load_weights(subset, 6, subset=True)
        a = gen_all(vl, ids, max_tokens=24, temperature=0.0)
        b = gen_all(hf, ids, max_tokens=24, temperature=0.0)
        assert [x.token_ids for x in a] == [y.token_ids for y in b]
        assert [x.token_ids for x in a] != [x.token_ids for x in before]  # the subset did land
        for k, v in subset.items():
            assert torch.equal(hf.model.state_dict()[k], v)
        emb = hf.model.state_dict()["model.embed_tokens.weight"]
        assert torch.equal(emb, perturbed["model.embed_tokens.weight"])  # the rest stays as it was
    finally:
        for e in (vl, hf):
            e.load_weights(perturbed, 5)  # the module's other tests expect the perturbed weights


def test_the_step_clock_runs_only_during_a_step_and_tells_a_hung_one(engines):
    """A replica's health check (actors/simulator.py check_health) fails only while one step runs too long."""
    import time

    from zs_ray.engines.engine import StepClock

    vl, _ = engines
    seen = []

    async def go():
        async def watch():
            while not task.done():
                seen.append(vl.clock.since is not None)
                await asyncio.sleep(0)
        task = asyncio.ensure_future(vl.generate(vl.tokenizer.encode(PROMPTS[0]), max_tokens=16, temperature=0.0))
        await asyncio.gather(task, watch())
    asyncio.run(go())
    assert any(seen) and vl.clock.since is None  # set while a step ran, cleared after
    vl.clock.check(1e-9)  # idle: never hung

    clock = StepClock()
    with clock.running():
        time.sleep(0.05)
        clock.check(None), clock.check(10.0)  # no limit / within it
        with pytest.raises(RuntimeError, match=r"replica 7 is hung: one step has run .*stall_timeout_s = 0.01 s"):
            clock.check(0.01, "replica 7")


def test_repetition_penalty_reaches_both_engines_and_they_agree(engines):
    """search.repetition_penalty (the simulator's sampling) is applied by both engines, by the same rule."""
    vl, hf = engines
    ids = [vl.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    plain = gen_all(vl, ids, max_tokens=32, temperature=0.0)
    a = gen_all(vl, ids, max_tokens=32, temperature=0.0, repetition_penalty=3.0)
    b = gen_all(hf, ids, max_tokens=32, temperature=0.0, repetition_penalty=3.0)
    assert [x.token_ids for x in a] != [x.token_ids for x in plain]
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids
    repeats = lambda gs: sum(len(g.token_ids) - len(set(g.token_ids)) for g in gs)  # noqa: E731
    assert repeats(a) < repeats(plain)
