"""HTTP search clients (external OpenAI-compatible simulator, Search-R1 retriever), hybrid, factory.

The external-endpoint client is tested against a REAL local server: the simulator deployment's own
OpenAI route (shared with test_simulator.py), plus tiny local HTTP servers that sleep or retrieve.
"""
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_simulator import K, _all, _FakeHandle, simulator_deployment  # noqa: F401  (module fixture)

from zs_ray.runtime import free_port
from zs_ray.search.base import SearchError
from zs_ray.search.clients import HybridSearch, SimulatorSearch, make_search_backend
from zs_ray.search.http_search import OpenAISimulatorSearch, RetrieverSearch


def _serve(handler_fn):
    """A local HTTP server on a free loopback port running handler_fn(path, body) -> (status, dict)."""
    class H(BaseHTTPRequestHandler):
        def _reply(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            status, out = handler_fn(self.path, body)
            data = json.dumps(out).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass
        do_POST = do_GET = _reply

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def _dead_url():
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# ---------------------------------------------------------------- without a deployment ------------

def test_all_down_raises_naming_urls_bounded():
    urls = [_dead_url(), _dead_url()]
    s = OpenAISimulatorSearch(urls, model_name="m", timeout_s=1, max_retries=2, backoff_s=0.05, on_failure="error")
    t = time.perf_counter()
    with pytest.raises(SearchError) as e:
        asyncio.run(s.search("q", "Q", ["a"]))
    assert all(u in str(e.value) for u in urls) and time.perf_counter() - t < 5
    s = OpenAISimulatorSearch(urls, model_name="m", timeout_s=1, max_retries=1, backoff_s=0.01)
    r = asyncio.run(s.search("q", "Q", ["a"]))
    assert r.failed and r.docs == [] and r.text == "No information available."


def test_timeout_path_bounded():
    srv, url = _serve(lambda path, body: (time.sleep(3), (200, {}))[1])
    try:
        s = OpenAISimulatorSearch([url], model_name="m", timeout_s=0.3, max_retries=1, backoff_s=0.05)
        t = time.perf_counter()
        r = asyncio.run(s.search("q", "Q", ["a"]))
        assert r.failed and time.perf_counter() - t < 2, r
        assert s.metrics()["search/http_simulator/retries"] == 1
    finally:
        srv.shutdown()


def test_retriever_client_search_r1_api():
    seen = []

    def handler(path, body):
        seen.append((path, body))
        hits = [{"document": {"id": str(i), "contents": f"\"Title {i}\"\ntext about {body['queries'][0]} {i}"},
                 "score": 1.0 / (i + 1)} for i in range(body["topk"])]
        return 200, {"result": [hits]}

    srv, url = _serve(handler)
    try:
        r = asyncio.run(RetrieverSearch([_dead_url(), url], topk=3, backoff_s=0.01).search("karova", "Q", ["a"]))
        assert r.docs == [f"Title {i}: text about karova {i}" for i in range(3)] and not r.failed
        assert seen[0] == ("/retrieve", {"queries": ["karova"], "topk": 3, "return_scores": True})
    finally:
        srv.shutdown()


def test_hybrid_threshold_forces_or_never_falls_back():
    from zs_ray.core.search import SearchBackend, SearchResult

    class Real(SearchBackend):
        name = "real"

        async def search(self, query, question, golden_answers, step=0, call_key=""):
            return SearchResult(docs=["real doc"], backend=self.name)

    # mean_logprob = -1.0 when asked for (HybridSearch asks: `never` falls back otherwise), else None
    sim = lambda: SimulatorSearch(_FakeHandle(), topk=1)  # noqa: E731
    always = HybridSearch(sim(), Real(), threshold=0.0)
    never = HybridSearch(sim(), Real(), threshold=-5.0)
    a = asyncio.run(always.search("q", "Q", ["a"]))
    n = asyncio.run(never.search("q", "Q", ["a"]))
    assert a.fallback and a.docs == ["real doc"] and a.meta["simulator_mean_logprob"] == -1.0
    assert not n.fallback and n.docs == ["a q"]
    assert always.metrics()["search/hybrid/fallback_frac"] == 1.0 and never.metrics()["search/hybrid/fallback_frac"] == 0
    noisy = HybridSearch(SimulatorSearch(_FakeHandle(), topk=1, curriculum=dict(start=1, end=1, total_steps=1)),
                         Real(), threshold=0.0)
    assert not asyncio.run(noisy.search("q", "Q", ["a"])).fallback  # noisy calls stay simulated


def test_factory_builds_every_backend(tmp_path):
    from test_simulator_sft import build_world

    from zs_ray.core.search import BM25Search

    corpus, _, _ = build_world(str(tmp_path / "w"), n=5)
    base = dict(topk=3, corpus=corpus, index_dir=str(tmp_path / "idx"))
    cur = dict(start=0.0, end=0.5, total_steps=10)
    assert isinstance(make_search_backend({**base, "backend": "simulate_sft"}, cur), SimulatorSearch)
    sp = make_search_backend({**base, "backend": "simulate_prompt", "urls": ["http://x:1"]}, cur)
    assert isinstance(sp, OpenAISimulatorSearch) and sp.mode == "simulate_prompt"
    assert isinstance(make_search_backend({**base, "backend": "http", "urls": ["http://x:1"]}, cur), OpenAISimulatorSearch)
    assert isinstance(make_search_backend({**base, "backend": "retriever", "urls": ["http://x:1"]}), RetrieverSearch)
    bm = make_search_backend({**base, "backend": "bm25"})
    assert isinstance(bm, BM25Search)
    r = asyncio.run(bm.search("capital", "Q", ["a"]))
    assert 1 <= len(r.docs) <= 3
    hy = make_search_backend({**base, "backend": "hybrid", "hybrid_threshold": -1.0}, cur)
    assert isinstance(hy, HybridSearch) and isinstance(hy.real, BM25Search) and hy.threshold == -1.0
    with pytest.raises(ValueError, match="total_steps"):
        make_search_backend({**base, "backend": "simulate_sft"}, dict(start=0.0, end=0.5))
    with pytest.raises(ValueError, match="unknown search.backend"):
        make_search_backend({**base, "backend": "google"})


class _CountingHandle(_FakeHandle):
    """A fake handle that counts calls, answers slowly (so calls overlap) and can fail its first call."""

    def __init__(self, fail_first=False):
        super().__init__()
        self.calls, self.fail_first = 0, fail_first

    def remote(self, query, question, answer, noisy, k, mode, confidence=False):
        self.calls += 1
        first = self.calls == 1

        async def go():
            await asyncio.sleep(0.05)
            if first and self.fail_first:
                raise ConnectionError("replica died")
            return await super(_CountingHandle, self).remote(query, question, answer, noisy, k, mode, confidence)
        return go()


def test_hybrid_retriever_fallback_reads_retriever_urls():
    """hybrid: search.urls would be an external simulator's; the retriever fallback has its own schema key."""
    from zs_ray.config import load_config, to_dict

    srv, url = _serve(lambda path, body: (200, {"result": [[{"document": {"contents": '"T"\nretrieved text'}}]]}))
    try:
        cfg = load_config(None, ["model.policy_path=x", "search.simulator_model=s", "search.backend=hybrid",
                                 "search.hybrid_fallback=retriever", f"search.retriever_urls=[{url}]",
                                 "search.hybrid_threshold=0.0"])
        hy = make_search_backend(to_dict(cfg)["search"], None, handle=_FakeHandle())
        assert isinstance(hy.real, RetrieverSearch) and hy.real.pool.urls == [url]
        r = asyncio.run(hy.search("q", "Q", ["a"]))  # the fake simulator's mean log-prob -1.0 < 0.0: falls back
        assert r.fallback and r.docs == ["T: retrieved text"]
    finally:
        srv.shutdown()


def test_disabled_curriculum_coin_uses_end():
    """curriculum.enabled=false: the client's coin uses p = end, as the driver logs it (curriculum.noise_at)."""
    s = SimulatorSearch(_FakeHandle(), curriculum=dict(enabled=False, start=0.0, end=1.0, total_steps=10))
    assert s.curriculum.p(0) == 1.0 and all(s.curriculum.noisy(0, f"k{i}") for i in range(20))
    assert SimulatorSearch(_FakeHandle(), curriculum=None).curriculum.p(5) == 0.0  # evaluation: no noise


def test_share_identical_one_generation_per_query_coin_and_step():
    cur = dict(start=0.5, end=0.5, total_steps=10, enabled=False)  # p = 0.5: both coins occur among 40 keys

    async def step_calls(s, step, query="capital X"):
        return await asyncio.gather(*[s.search(query, "Q?", ["a"], step=step, call_key=str(i)) for i in range(40)])
    h = _CountingHandle()
    s = SimulatorSearch(h, topk=2, curriculum=cur, share_identical=True)
    res = asyncio.run(step_calls(s, 0))
    assert {r.noisy for r in res} == {True, False} and h.calls == 2  # one generation per coin value
    assert s.metrics()["search/simulator/shared_frac"] == 38 / 40 and sum(r.meta["shared"] for r in res) == 38
    assert all(r.docs == (["noisy capital X"] * 2 if r.noisy else ["a capital X"] * 2) for r in res)
    async def steps_in_one_loop(*steps):
        for st, q in steps:
            await step_calls(s, st, q)
        return set(s._shared)
    # a new step writes again, a new query too; steps older than step-1 are dropped
    assert asyncio.run(steps_in_one_loop((1, "capital X"), (1, "capital Y"), (2, "capital X"))) == {1, 2}
    assert h.calls == 8 and asyncio.run(steps_in_one_loop((5, "capital X"))) == {5}
    h = _CountingHandle()  # off (the reference's way): every call is its own generation
    asyncio.run(step_calls(SimulatorSearch(h, topk=2, curriculum=cur), 0))
    assert h.calls == 40


def test_group_coin_one_per_prompt_and_turn():
    def coins(coin):
        s = SimulatorSearch(_FakeHandle(), curriculum=dict(start=0.5, end=0.5, total_steps=10, enabled=False, coin=coin))
        return {(p, t): [s.curriculum.noisy(3, f"pid/{p}/{i}/{t}") for i in range(5)] for p in range(20) for t in range(2)}
    group, call = coins("group"), coins("call")
    assert all(len(set(v)) == 1 for v in group.values())  # the group's samples share the coin
    assert {v[0] for v in group.values()} == {True, False}  # which still varies over prompts and turns
    assert any(len(set(v)) == 2 for v in call.values())  # the paper's: one coin per call
    with pytest.raises(ValueError, match="curriculum.coin"):
        coins("sample")


def test_share_identical_failure_is_retried_not_kept():
    h = _CountingHandle(fail_first=True)
    s = SimulatorSearch(h, topk=2, max_retries=0, share_identical=True)
    r1, r2 = _all([s.search("q", "Q", ["a"], call_key=str(i)) for i in range(2)])
    assert r1.failed and r2.failed and h.calls == 1  # the waiting caller got the same failure
    r3 = asyncio.run(s.search("q", "Q", ["a"], call_key="3"))
    assert not r3.failed and r3.docs and h.calls == 2  # the failure was not kept for the step
    assert make_search_backend({"backend": "simulate_sft"}).share_identical  # the config's default
    assert not make_search_backend({"backend": "simulate_sft", "share_identical": False}).share_identical


# ---------------------------------------------------------------- against the real deployment ------

@pytest.mark.integration
def test_openai_client_against_deployment_route(simulator_deployment):
    d = simulator_deployment
    good = f"http://127.0.0.1:{d['port']}"
    q = d["questions"][0]
    land = q["question"].split()[-1][:-1]

    s = OpenAISimulatorSearch([good + "/v1"], model_name=None, mode="simulate_sft", topk=K, timeout_s=60,
                              temperature=0.8, max_tokens=80, confidence=True)
    r = asyncio.run(s.search(f"capital {land}", q["question"], q["golden_answers"]))
    assert not r.failed and 1 <= len(r.docs) <= K and r.mean_logprob is not None and r.mean_logprob <= 0
    assert s.model_name == "tiny-sim"  # discovered from /v1/models
    s.confidence = False  # the default: the route is asked for no log-probs
    r = asyncio.run(s.search(f"capital {land}", q["question"], q["golden_answers"]))
    assert not r.failed and r.docs and r.mean_logprob is None

    # retry then success: the first URL in the rotation is down, the retry goes to the next one
    s = OpenAISimulatorSearch([_dead_url(), good], model_name="tiny-sim", mode="simulate_sft", topk=K,
                              timeout_s=30, max_retries=2, backoff_s=0.05, max_tokens=80)
    r = asyncio.run(s.search(f"capital {land}", q["question"], q["golden_answers"]))
    assert not r.failed and r.docs and s.metrics()["search/http_simulator/retries"] == 1


@pytest.mark.integration
def test_share_identical_against_deployment(simulator_deployment):
    """Identical calls of one step reach the replica once and return the same documents."""
    d = simulator_deployment
    q = d["questions"][0]
    query = f"capital {q['question'].split()[-1][:-1]}"

    def engine_requests(share):
        s = SimulatorSearch(d["handle"], topk=K, share_identical=share)
        before = d["handle"].stats.remote().result()["requests"]
        res = _all([s.search(query, q["question"], q["golden_answers"], step=3, call_key=str(i)) for i in range(6)])
        assert all(not r.failed and r.docs for r in res)
        return d["handle"].stats.remote().result()["requests"] - before, res
    n, res = engine_requests(True)
    assert n == 1 and all(r.docs == res[0].docs for r in res)
    n, res = engine_requests(False)
    assert n == 6


@pytest.mark.integration
def test_hybrid_with_deployment_and_bm25(simulator_deployment):
    from zs_ray.core.search import BM25Search
    from zs_ray.search.retrieval import BM25Index

    d = simulator_deployment
    bm25 = BM25Search(BM25Index.build(d["corpus"]), topk=K)
    qs = d["questions"][:8]

    def run(threshold):
        h = HybridSearch(SimulatorSearch(d["handle"], topk=K), bm25, threshold=threshold)
        res = _all([h.search(f"capital {q['question'].split()[-1][:-1]}", q["question"],
                                                    q["golden_answers"], call_key=str(i)) for i, q in enumerate(qs)])
        return h, res

    h, res = run(threshold=1.0)  # log-probs are <= 0: every call falls back
    assert all(r.fallback and r.backend == "bm25" for r in res) and h.metrics()["search/hybrid/fallback_frac"] == 1.0
    h, res = run(threshold=-1e9)  # never unsure
    assert not any(r.fallback for r in res) and h.metrics()["search/hybrid/fallback_frac"] == 0.0
