"""The simulator Serve deployment (vLLM on CPU) and its handle client SimulatorSearch.

One deployment per test process (cached in `simulator_deployment`, shared with
test_search_clients.py) serving the tiny simulator fine-tuned by test_simulator_sft.py's helper,
so it writes `Doc i:` documents (a random model would not).
"""
import asyncio
import time

import pytest
from test_simulator_sft import K, trained_simulator

from zs_ray.runtime import free_port

APP = "zs_test_simulator"


def _deploy(base_dir: str) -> dict:
    from actors.simulator import deploy_simulator

    sim = trained_simulator(base_dir)
    port = free_port()
    cfg = dict(temperature=0.8, max_tokens=80, max_model_len=512, max_batch_size=32,
               http_host="127.0.0.1", http_port=port, model_name="tiny-sim")
    t = time.perf_counter()
    handle = deploy_simulator(cfg, sim["model"], name=APP, replicas=1, num_cpus=0.5)
    return dict(handle=handle, port=port, deploy_s=time.perf_counter() - t, **sim)


@pytest.fixture(scope="module")
def simulator_deployment(ray_session, tmp_path_factory):
    from ray import serve

    serve.shutdown()  # Serve must listen on this module's port, whatever an earlier module left running
    yield _deploy(str(tmp_path_factory.getbasetemp() / "sft_sim"))
    serve.shutdown()


class _FakeHandle:
    """Stands in for a DeploymentHandle: echoes the coin so only the client's logic is tested."""

    def __init__(self):
        self.simulate = self

    def remote(self, query, question, answer, noisy, k, mode, confidence=False):
        async def go():
            return {"docs": [f"{'noisy' if noisy else answer} {query}"] * k,
                    "mean_logprob": -1.0 if confidence else None, "noisy": noisy}
        return go()


def _run(coro):
    return asyncio.run(coro)


def _all(coros):
    """Run coroutines concurrently in one fresh event loop."""
    async def main():
        return await asyncio.gather(*coros)
    return asyncio.run(main())


# ---------------------------------------------------------------- kept-text log-prob (pure) -------

class _CharTokenizer:
    """Token id i decodes to the word WORDS[i] (+ a space): enough to test the prefix bisection."""
    WORDS = ["Doc", " 1:", " ab", " cd", " Doc", " 2:", " ef"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.WORDS[i] for i in ids)


@pytest.mark.parametrize("kept,n", [(0, 1), (3, 1), (4, 2), (9, 3), (10, 4), (22, 7), (99, 7)])
def test_kept_text_maps_to_the_tokens_that_wrote_it(kept, n):
    from actors.simulator import mean_logprob_of_kept, tokens_for_chars

    tok, ids = _CharTokenizer(), list(range(7))  # "Doc 1: ab cd Doc 2: ef": prefix lengths 3 6 9 12 16 19 22
    assert tokens_for_chars(tok, ids, kept) == n
    lps = [-float(i + 1) for i in ids]
    assert mean_logprob_of_kept(tok, ids, lps, kept) == pytest.approx(sum(lps[:n]) / n)
    assert mean_logprob_of_kept(tok, [], [], kept) is None


# ---------------------------------------------------------------- the coin (no Ray needed) --------

@pytest.mark.parametrize("start,end", [(0.0, 0.0), (1.0, 1.0)])
def test_coin_extremes(start, end):
    from zs_ray.search.clients import SimulatorSearch

    s = SimulatorSearch(_FakeHandle(), topk=2, curriculum=dict(start=start, end=end, total_steps=10), seed=1)
    res = _all([s.search("q", "Q", ["a"], step=3, call_key=f"c{i}") for i in range(50)])
    assert all(r.noisy == (end == 1.0) for r in res)
    assert s.metrics()["search/simulator/noisy_frac"] == end


def test_coin_follows_schedule_and_is_reproducible():
    from zs_ray.core.curriculum import noise_probability
    from zs_ray.search.clients import SimulatorSearch

    cur = dict(start=0.0, end=0.5, base=4.0, total_steps=203)
    s = SimulatorSearch(_FakeHandle(), topk=1, curriculum=cur, seed=7)
    for step in (50, 150, 203):
        res = _all([s.search("q", "Q", ["a"], step=step, call_key=f"p{i}") for i in range(2000)])
        frac = sum(r.noisy for r in res) / len(res)
        assert abs(frac - noise_probability(step, 203)) < 0.04, (step, frac)
        assert res[0].docs == (["noisy q"] if res[0].noisy else ["a q"])  # the SAME trajectory's answer
    again = SimulatorSearch(_FakeHandle(), topk=1, curriculum=cur, seed=7)  # a resumed run
    keys = [f"p{i}" for i in range(200)]
    a = _all([s.search("q", "Q", ["a"], 150, k) for k in keys])
    b = _all([again.search("q", "Q", ["a"], 150, k) for k in keys])
    assert [r.noisy for r in a] == [r.noisy for r in b]


def test_missing_app_fails_bounded():
    from zs_ray.search.base import SearchError
    from zs_ray.search.clients import SimulatorSearch

    class Broken:
        def __getattr__(self, _):
            raise RuntimeError("replica died")

    s = SimulatorSearch(Broken(), max_retries=2, backoff_s=0.01)
    t = time.perf_counter()
    r = _run(s.search("q", "Q", ["a"]))
    assert r.failed and r.docs == [] and "replica died" in r.meta["error"] and time.perf_counter() - t < 2
    assert s.metrics()["search/simulator/retries"] == 2
    s = SimulatorSearch(Broken(), max_retries=1, backoff_s=0.01, on_failure="error")
    with pytest.raises(SearchError, match="all 2 attempts failed"):
        _run(s.search("q", "Q", ["a"]))


# ---------------------------------------------------------------- the real deployment -------------

@pytest.mark.integration
def test_64_concurrent_calls_batched_k_docs(simulator_deployment):
    h, qs = simulator_deployment["handle"], simulator_deployment["questions"]
    t = time.perf_counter()
    resps = [h.simulate.remote(f"capital {q['question'].split()[-1][:-1]}", q["question"], q["golden_answers"][0],
                               i % 2 == 1, K, "simulate_sft") for i, q in enumerate((qs * 3)[:64])]
    outs = [r.result(timeout_s=120) for r in resps]
    dt = time.perf_counter() - t
    stats = h.stats.remote().result()
    n_k = sum(len(o["docs"]) == K for o in outs)
    print(f"deploy {simulator_deployment['deploy_s']:.1f}s; 64 calls {dt:.2f}s; {n_k}/64 with {K} docs; {stats}")
    assert all(len(o["docs"]) <= K and o["mean_logprob"] is None for o in outs)  # not asked for: not computed
    assert n_k >= 0.6 * 64  # the SFT'd tiny model mostly writes exactly K documents (sampling at 0.8)
    assert [o["noisy"] for o in outs] == [i % 2 == 1 for i in range(64)]
    assert stats["max_in_flight"] > 1 and stats["requests"] >= 64  # the engine ran concurrent calls as one batch
    # confidence=True: the mean log-prob of the kept tokens (the hybrid backend's signal)
    outs = [h.simulate.remote("capital x", q["question"], q["golden_answers"][0], False, K, "simulate_sft",
                              confidence=True).result(timeout_s=60) for q in qs[:2]]
    assert all(isinstance(o["mean_logprob"], float) and o["mean_logprob"] <= 0 for o in outs)


@pytest.mark.integration
def test_openai_route_with_openai_client(simulator_deployment):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{simulator_deployment['port']}/v1", api_key="none",
                           timeout=60, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-sim"]
    r = client.chat.completions.create(model="tiny-sim", messages=[{"role": "user", "content": "Query: capital"}],
                                       temperature=0.8, max_tokens=12, logprobs=True, stop=["\n"])
    assert r.object == "chat.completion" and isinstance(r.choices[0].message.content, str)
    assert 1 <= r.usage.completion_tokens <= 12 and len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    c = client.completions.create(model="tiny-sim", prompt="The capital of", max_tokens=5, temperature=0.0, logprobs=1)
    assert c.object == "text_completion" and len(c.choices[0].logprobs.token_logprobs) == c.usage.completion_tokens
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-sim", messages=[], max_tokens=3)


@pytest.mark.integration
def test_simulator_search_by_handle_follows_coin(simulator_deployment):
    from zs_ray.core.reward import normalize_answer
    from zs_ray.search.clients import SimulatorSearch

    # every question twice (48 sampled generations at temperature 0.8): with 16 the useful hit rate's standard
    # error (~0.12) put a 0.56 draw of a ~0.7 model below the bar (seen in CI, 2026-12-01)
    qs = simulator_deployment["questions"] * 2

    async def calls(p):
        s = SimulatorSearch(simulator_deployment["handle"], topk=K, curriculum=dict(start=p, end=p, total_steps=5))
        res = await asyncio.gather(*[s.search(f"capital {q['question'].split()[-1][:-1]}", q["question"],
                                              q["golden_answers"], step=2, call_key=str(i)) for i, q in enumerate(qs)])
        return s, res

    s0, useful = _run(calls(0.0))
    s1, noisy = _run(calls(1.0))
    assert not any(r.noisy for r in useful) and all(r.noisy for r in noisy)
    hit = lambda rs: sum(normalize_answer(q["golden_answers"][0]) in normalize_answer(r.text)  # noqa: E731
                         for q, r in zip(qs, rs)) / len(qs)
    print("handle: useful hit", hit(useful), "noisy hit", hit(noisy), s0.metrics())
    assert hit(useful) >= 0.5 and hit(noisy) <= 0.3 and hit(useful) - hit(noisy) >= 0.4
    assert s0.metrics()["search/simulator/failures"] == 0

    # a per-call timeout far below one generation: bounded failure, not a hang
    t = time.perf_counter()
    s = SimulatorSearch(simulator_deployment["handle"], topk=K, timeout_s=0.001, max_retries=1, backoff_s=0.01)
    r = _run(s.search("capital x", "Q", ["a"]))
    assert r.failed and "timed out" in r.meta["error"] and time.perf_counter() - t < 5
