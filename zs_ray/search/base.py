"""What every remote search client shares (the Serve-handle simulator in zs_ray.search.clients, the HTTP
clients in zs_ray.search.http_search): the curriculum coin, the counters, bounded retries with exponential
backoff, and the failure policy."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Optional

from zs_ray.core.curriculum import is_noisy, noise_at
from zs_ray.core.search import SearchBackend, SearchResult


class SearchError(RuntimeError):
    pass


class Counters:
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


async def with_retries(what: str, attempt: Callable[[int], Awaitable[Any]], max_retries: int, backoff_s: float,
                        counters: Counters) -> tuple[Any, Optional[BaseException]]:
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


class SimulatorBase(SearchBackend):
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
        self.counters = Counters()
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
        return await with_retries(self._where(), lambda i: self._call(i, ctx, query, question, answer, noisy),
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
