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

from conftest import free_port
from test_simulator import K, _all, _FakeHandle, simulator_deployment  # noqa: F401  (module fixture)
from zs_ray.search_clients import (HybridSearch, OpenAISimulatorSearch, RetrieverSearch, SearchError,
                                   SimulatorSearch, make_search_backend)


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
    from zs_ray.search import SearchBackend, SearchResult

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
    from zs_ray.search import BM25Search

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
def test_hybrid_with_deployment_and_bm25(simulator_deployment):
    from zs_ray.retrieval import BM25Index
    from zs_ray.search import BM25Search

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
