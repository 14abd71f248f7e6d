"""Search backends behind zs_ray.core.search.SearchBackend: the simulator (Serve handle; an external
OpenAI-compatible server and the Search-R1 retrieval-server API are in zs_ray.search.http_search), BM25, and a
hybrid of the two kinds; `make_search_backend` builds any of them from the `search` config.

The curriculum coin is flipped on the client (zs_ray.search.base), from the call's training `step` and `call_key`:
every rollout worker then follows the same schedule and a resumed run flips the same coins.
Every remote call has a timeout and a bounded number of retries with exponential backoff (the
reference code retried forever); when all fail the call returns `failed=True` with no documents
(the policy sees "No information available."), or raises when on_failure="error".
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional

from zs_ray.config import SearchConfig, section_defaults
from zs_ray.core.search import BM25Search, SearchBackend
from zs_ray.core.simulator_prompts import MODES as SIMULATOR_MODES
from zs_ray.search.base import SimulatorBase
from zs_ray.search.http_search import OpenAISimulatorSearch, RetrieverSearch


class SimulatorSearch(SimulatorBase):
    """The Serve deployment of actors/simulator.py, called by DeploymentHandle (not HTTP)."""

    name = "simulator"

    def __init__(self, handle_or_app_name: Any = "simulator", mode: str = "simulate_sft", topk: int = 5,
                 curriculum: Optional[dict] = None, seed: int = 0, timeout_s: float = 60.0, max_retries: int = 3,
                 backoff_s: float = 0.5, on_failure: str = "no_information", max_query_chars: int = 512,
                 confidence: bool = False, share_identical: bool = False):
        super().__init__(mode, topk, curriculum, seed, timeout_s, max_retries, backoff_s, on_failure,
                         max_query_chars, confidence, share_identical)
        self._handle = None if isinstance(handle_or_app_name, str) else handle_or_app_name
        self.app_name = handle_or_app_name if isinstance(handle_or_app_name, str) else None

    @property
    def handle(self):
        if self._handle is None:  # looked up lazily, so the backend can be built before Serve runs
            from ray import serve
            self._handle = serve.get_app_handle(self.app_name)
        return self._handle

    def _where(self) -> str:
        return f"simulator deployment {self.app_name or 'handle'}"

    async def _call(self, attempt, ctx, query, question, answer, noisy):
        resp = self.handle.simulate.remote(query, question, answer, noisy, self.topk, self.mode,
                                           confidence=self.confidence)
        try:
            out = await asyncio.wait_for(_await(resp), self.timeout_s)
        except asyncio.TimeoutError:
            resp.cancel()
            raise
        self.counters.dropped_chars += int(out.get("dropped_chars") or 0)
        return out["docs"], out.get("mean_logprob")


async def _await(resp):
    return await resp


class HybridSearch(SearchBackend):
    """Simulated by default; real search for a call when the simulator is unsure (mean token log-prob
    of its documents < threshold, or it failed / returned nothing). Noisy calls keep the simulator's
    documents unless fallback_noisy: a noisy call is *meant* to be unhelpful, so replacing it by real
    results would undo the curriculum."""

    name = "hybrid"

    def __init__(self, simulator: SearchBackend, real: SearchBackend, threshold: float = -2.5,
                 fallback_noisy: bool = False):
        self.simulator, self.real, self.threshold, self.fallback_noisy = simulator, real, float(threshold), fallback_noisy
        if hasattr(simulator, "confidence"):  # the mean log-prob is off by default (it slows the simulator)
            simulator.confidence = True
        self.calls = self.fallbacks = 0

    async def search(self, query, question, golden_answers, step=0, call_key=""):
        self.calls += 1
        r = await self.simulator.search(query, question, golden_answers, step, call_key)
        unsure = r.failed or not r.docs or r.mean_logprob is None or r.mean_logprob < self.threshold
        if not unsure or (r.noisy and not self.fallback_noisy):
            return r
        self.fallbacks += 1
        real = await self.real.search(query, question, golden_answers, step, call_key)
        real.fallback = True
        real.noisy = r.noisy
        real.meta.update(simulator_mean_logprob=r.mean_logprob, simulator_failed=r.failed)
        real.latency_s += r.latency_s
        return real

    def metrics(self) -> dict:
        out = {"search/hybrid/calls": self.calls, "search/hybrid/fallbacks": self.fallbacks,
               "search/hybrid/fallback_frac": self.fallbacks / max(self.calls, 1)}
        for b in (self.simulator, self.real):
            if hasattr(b, "metrics"):
                out.update(b.metrics())
        return out

    async def close(self):
        await self.simulator.close()
        await self.real.close()


# ---------------------------------------------------------------- factory -----------------------------

def _bm25(search_cfg: dict, bm25_index, topk: int) -> BM25Search:
    if bm25_index is None:
        from zs_ray.search.retrieval import BM25Index
        bm25_index = BM25Index.from_search_config(search_cfg.get("corpus"), search_cfg.get("index_dir"),
                                                  search_cfg.get("max_doc_words"))
    return BM25Search(bm25_index, topk)


def make_search_backend(search_cfg: dict, curriculum_cfg: Optional[dict] = None, seed: int = 0, bm25_index=None,
                        handle=None) -> SearchBackend:
    """One backend from the `search` config section. simulate_*: the Serve app `search.app_name`
    (default "simulator"; or `handle`) when search.urls is empty, else the external OpenAI servers.
    curriculum_cfg None: no noise (p=0). Keys `search_cfg` leaves out take SearchConfig's defaults, except that
    `http` without a search.simulator_mode uses simulate_prompt (an external server has no fine-tuned simulator)."""
    http_mode = search_cfg.get("simulator_mode", "simulate_prompt")
    s = {**section_defaults(SearchConfig), **search_cfg}
    backend, topk = s["backend"], int(s["topk"])
    common = dict(topk=topk, curriculum=curriculum_cfg, seed=seed, timeout_s=float(s["timeout_s"]),
                  max_retries=int(s["max_retries"]), backoff_s=float(s["backoff_s"]), on_failure=s["on_failure"],
                  max_query_chars=int(s["max_query_chars"]))
    share = bool(s["share_identical"])

    def simulator(mode: str) -> SearchBackend:
        if s["urls"]:
            return OpenAISimulatorSearch(s["urls"], s["model_name"], mode=mode, temperature=s["temperature"],
                                         top_p=s["top_p"], max_tokens=s["max_tokens"], api_key=s["api_key"],
                                         share_identical=share, **common)
        return SimulatorSearch(handle if handle is not None else s["app_name"], mode=mode, share_identical=share,
                               **common)

    def retriever(urls, on_failure: str = "no_information") -> RetrieverSearch:
        return RetrieverSearch(urls or [], topk, timeout_s=common["timeout_s"], max_retries=common["max_retries"],
                               backoff_s=common["backoff_s"], on_failure=on_failure)

    if backend in SIMULATOR_MODES:
        return simulator(backend)
    if backend == "http":
        if not s["urls"]:
            raise ValueError("search.backend=http needs search.urls")
        return simulator(http_mode)
    if backend == "bm25":
        return _bm25(s, bm25_index, topk)
    if backend == "retriever":
        return retriever(s["urls"], common["on_failure"])
    if backend == "hybrid":
        sim = simulator(s["simulator_mode"])
        fb = s["hybrid_fallback"]
        if fb == "bm25":
            real = _bm25(s, bm25_index, topk)
        elif fb == "retriever":
            real = retriever(s["retriever_urls"])  # a failed fallback returns no documents, never raises
        else:
            raise ValueError(f"search.hybrid_fallback must be bm25 or retriever, got {fb!r}")
        return HybridSearch(sim, real, float(s["hybrid_threshold"]))
    raise ValueError(f"unknown search.backend {backend!r}")
