"""Search backends behind zs_ray.search.SearchBackend: the simulator (Serve handle; an external
OpenAI-compatible server and the Search-R1 retrieval-server API are in zs_ray.http_search), BM25, and a
hybrid of the two kinds; `make_search_backend` builds any of them from the `search` config.

The curriculum coin is flipped HERE, on the client, from the call's training `step` and `call_key`:
every rollout worker then follows the same schedule and a resumed run flips the same coins.
Every remote call has a timeout and a bounded number of retries with exponential backoff (the
reference code retried forever); when all fail the call returns `failed=True` with no documents
(the policy sees "No information available."), or raises when on_failure="error".
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Optional

from .curriculum import is_noisy, noise_at
from .search import BM25Search, SearchBackend, SearchResult


class SearchError(RuntimeError):
    pass


class _Counters:
    def __init__(self):
        self.calls = self.noisy = self.failures = self.retries = self.fallbacks = self.empty = 0
        self.shared = 0  # calls answered by an identical call's documents (share_identical)
        self.dropped_chars = 0  # simulator text outside any usable `Doc i:` block (parsed away)
        self.latency = 0.0

    def metrics(self, prefix: str = "search/") -> dict:
        n = max(self.calls, 1)
        return {f"{prefix}calls": self.calls, f"{prefix}noisy_frac": self.noisy / n,
                f"{prefix}failures": self.failures, f"{prefix}fail_frac": self.failures / n,
                f"{prefix}retries": self.retries, f"{prefix}fallbacks": self.fallbacks,
                f"{prefix}fallback_frac": self.fallbacks / n, f"{prefix}empty_frac": self.empty / n,
                f"{prefix}shared_frac": self.shared / n,
                f"{prefix}dropped_chars": self.dropped_chars,
                f"{prefix}mean_latency_s": self.latency / n}


class _Curriculum:
    """p = curriculum.noise_at(cfg, step): None = no noise, enabled=false = a constant `end`.
    coin="group" flips one coin per (prompt, turn): the sample index is dropped from the rollout's
    call key `prompt_id/sample/turn`."""

    def __init__(self, cfg: Optional[dict], seed: int):
        self.cfg = dict(cfg or {})
        noise_at(self.cfg, 0)  # a schedule without total_steps fails here, not at the first search call
        self.coin = str(self.cfg.get("coin", "call"))
        if self.coin not in ("call", "group"):
            raise ValueError(f"curriculum.coin must be 'call' or 'group', got {self.coin!r}")
        self.seed = seed

    def p(self, step: int) -> float:
        return noise_at(self.cfg, step)

    def noisy(self, step: int, call_key: str) -> bool:
        if self.coin == "group":
            parts = str(call_key).rsplit("/", 2)
            call_key = f"{parts[0]}/{parts[-1]}" if len(parts) == 3 else call_key
        return is_noisy(self.p(step), self.seed, step, call_key)


async def _with_retries(what: str, attempt: Callable[[int], Awaitable[Any]], max_retries: int, backoff_s: float,
                        counters: _Counters) -> tuple[Any, Optional[BaseException]]:
    """Run attempt(i) for i in 0..max_retries with exponential backoff; (result, None) or (None, last error)."""
    last: Optional[BaseException] = None
    for i in range(max_retries + 1):
        if i:
            counters.retries += 1
            await asyncio.sleep(backoff_s * 2 ** (i - 1))
        try:
            return await attempt(i), None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure kind is retried, then reported
            last = e if not isinstance(e, asyncio.TimeoutError) else TimeoutError(f"{what}: timed out")
    return None, last


class _SimulatorBase(SearchBackend):
    """Shared: the coin, counters, failure policy. Subclasses implement `_call(...) -> (docs, mean_lp)`."""

    def __init__(self, mode: str, topk: int, curriculum: Optional[dict], seed: int, timeout_s: float,
                 max_retries: int, backoff_s: float, on_failure: str, max_query_chars: int = 512,
                 confidence: bool = False, share_identical: bool = False):
        if on_failure not in ("no_information", "error"):
            raise ValueError(f"search.on_failure must be 'no_information' or 'error', got {on_failure!r}")
        self.mode, self.topk, self.timeout_s = mode, int(topk), float(timeout_s)
        self.max_retries, self.backoff_s, self.on_failure = int(max_retries), float(backoff_s), on_failure
        self.max_query_chars = int(max_query_chars)
        # ask for the documents' mean log-prob (SearchResult.mean_logprob): the hybrid backend's signal
        self.confidence = bool(confidence)
        self.curriculum = _Curriculum(curriculum, seed)
        self.counters = _Counters()
        # share_identical: within a training step, calls with the same (query, question, answer, coin) get
        # ONE generation, as a real engine returns one page per query. {step: {key: task}}, last 2 steps kept.
        self.share_identical = bool(share_identical)
        self._shared: dict[int, dict[tuple, asyncio.Future]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def _call(self, attempt: int, ctx: Any, query: str, question: str, answer: str, noisy: bool):
        raise NotImplementedError

    def _begin(self) -> Any:
        """Per-call context (the HTTP client's first URL), made once per search call."""
        return None

    def _where(self) -> str:
        return self.name

    async def search(self, query, question, golden_answers, step=0, call_key=""):
        t = time.perf_counter()
        noisy = self.curriculum.noisy(step, call_key)
        # The question and first gold answer of the SAME trajectory travel with the query.
        answer = str(golden_answers[0]) if golden_answers else ""
        query = str(query)[: self.max_query_chars]
        c = self.counters
        c.calls += 1
        c.noisy += int(noisy)
        shared = False
        if self.share_identical:
            out, err, shared = await self._fetch_shared(step, query, str(question), answer, noisy)
        else:
            out, err = await self._fetch(query, str(question), answer, noisy)
        dt = time.perf_counter() - t
        c.latency += dt
        if err is not None:
            c.failures += 1
            if self.on_failure == "error":
                raise SearchError(f"{self._where()}: all {self.max_retries + 1} attempts failed: {err}") from err
            return SearchResult(docs=[], backend=self.name, noisy=noisy, failed=True, latency_s=dt,
                                meta={"error": str(err), "p_noise": self.curriculum.p(step)})
        docs, mean_lp = out
        c.empty += int(not docs)
        return SearchResult(docs=docs, backend=self.name, noisy=noisy, mean_logprob=mean_lp, latency_s=dt,
                            meta={"p_noise": self.curriculum.p(step), "shared": shared})

    async def _fetch(self, query: str, question: str, answer: str, noisy: bool):
        ctx = self._begin()
        return await _with_retries(self._where(), lambda i: self._call(i, ctx, query, question, answer, noisy),
                                   self.max_retries, self.backoff_s, self.counters)

    async def _fetch_shared(self, step: int, query: str, question: str, answer: str, noisy: bool):
        """The first call of a key generates; later and concurrent ones await its result. Failures are not kept."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a task belongs to its event loop (asyncio.run makes a new one per call)
            self._shared, self._loop = {}, loop
        for old in [s for s in self._shared if s < step - 1]:  # rollouts of two steps overlap at staleness 1
            del self._shared[old]
        table, key = self._shared.setdefault(step, {}), (query, question, answer, noisy)
        task = table.get(key)
        shared = task is not None
        if not shared:
            task = table[key] = asyncio.ensure_future(self._fetch(query, question, answer, noisy))
        self.counters.shared += int(shared)
        out, err = await asyncio.shield(task)  # one caller cancelled must not cancel the others' call
        if err is not None and table.get(key) is task:
            del table[key]
        return out, err, shared

    def metrics(self) -> dict:
        return self.counters.metrics(f"search/{self.name}/")


class SimulatorSearch(_SimulatorBase):
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
        from .retrieval import BM25Index
        corpus, index_dir = search_cfg.get("corpus"), search_cfg.get("index_dir")
        words = search_cfg.get("max_doc_words")
        if corpus and index_dir:
            bm25_index = BM25Index.load_or_build(corpus, index_dir, max_words=words)
        elif index_dir:
            bm25_index = BM25Index.load(index_dir, max_words=words)
        elif corpus:
            bm25_index = BM25Index.build(corpus, max_words=words)
        else:
            raise ValueError("BM25 search needs search.corpus or search.index_dir")
    return BM25Search(bm25_index, topk)


def make_search_backend(search_cfg: dict, curriculum_cfg: Optional[dict] = None, seed: int = 0, bm25_index=None,
                        handle=None) -> SearchBackend:
    """One backend from the `search` config section. simulate_*: the Serve app `search.app_name`
    (default "simulator"; or `handle`) when search.urls is empty, else the external OpenAI servers.
    curriculum_cfg None: no noise (p=0). `http` uses `search.simulator_mode` (default simulate_prompt)."""
    from .http_search import OpenAISimulatorSearch, RetrieverSearch  # it imports this module's base classes

    s = dict(search_cfg)
    backend, topk = s.get("backend", "simulate_sft"), int(s.get("topk", 5))
    common = dict(topk=topk, curriculum=curriculum_cfg, seed=seed, timeout_s=float(s.get("timeout_s", 60.0)),
                  max_retries=int(s.get("max_retries", 3)), backoff_s=float(s.get("backoff_s", 0.5)),
                  on_failure=s.get("on_failure", "no_information"), max_query_chars=int(s.get("max_query_chars", 512)))
    share = bool(s.get("share_identical", True))  # SearchConfig's default

    def simulator(mode: str) -> SearchBackend:
        if s.get("urls"):
            return OpenAISimulatorSearch(s["urls"], s.get("model_name"), mode=mode, temperature=s.get("temperature", 0.8),
                                         top_p=s.get("top_p", 1.0), max_tokens=s.get("max_tokens", 600),
                                         api_key=s.get("api_key"), share_identical=share, **common)
        return SimulatorSearch(handle if handle is not None else s.get("app_name", "simulator"), mode=mode,
                               share_identical=share, **common)

    if backend in ("simulate_prompt", "simulate_sft"):
        return simulator(backend)
    if backend == "http":
        if not s.get("urls"):
            raise ValueError("search.backend=http needs search.urls")
        return simulator(s.get("simulator_mode", "simulate_prompt"))
    if backend == "bm25":
        return _bm25(s, bm25_index, topk)
    if backend == "retriever":
        return RetrieverSearch(s.get("urls") or [], topk, timeout_s=common["timeout_s"], max_retries=common["max_retries"],
                               backoff_s=common["backoff_s"], on_failure=common["on_failure"])
    if backend == "hybrid":
        sim = simulator(s.get("simulator_mode", "simulate_sft"))
        fb = s.get("hybrid_fallback", "bm25")
        if fb == "bm25":
            real = _bm25(s, bm25_index, topk)
        elif fb == "retriever":
            real = RetrieverSearch(s.get("retriever_urls") or [], topk, timeout_s=common["timeout_s"],
                                   max_retries=common["max_retries"], backoff_s=common["backoff_s"])
        else:
            raise ValueError(f"search.hybrid_fallback must be bm25 or retriever, got {fb!r}")
        return HybridSearch(sim, real, float(s.get("hybrid_threshold", -2.5)))
    raise ValueError(f"unknown search.backend {backend!r}")
