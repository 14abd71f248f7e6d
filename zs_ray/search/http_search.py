"""Search backends over HTTP: an external OpenAI-compatible simulator server (sglang, `vllm serve`, or our
own Serve route) and the Search-R1 retrieval-server API. Same coin, counters, retries and failure policy as
the Serve-handle simulator (zs_ray.search.clients), which builds these from the `search` config."""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Optional, Sequence

from zs_ray.core.search import SearchBackend, SearchResult
from zs_ray.core.simulator_prompts import parse_documents, simulator_prompt
from zs_ray.search.base import Counters, SearchError, SimulatorBase, with_retries


class _HTTP:
    """Async JSON POST/GET over httpx when installed (it is, via openai/fastapi), else requests in a thread."""

    def __init__(self, timeout_s: float, api_key: Optional[str] = None):
        self.timeout_s, self.headers = timeout_s, ({"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._client, self._loop = None, None
        try:
            import httpx  # noqa: F401
            self._httpx = True
        except ImportError:
            self._httpx = False

    async def request(self, method: str, url: str, payload: Optional[dict] = None) -> dict:
        if self._httpx:
            import httpx
            loop = asyncio.get_running_loop()
            if self._client is None or self._loop is not loop:  # a client belongs to one event loop
                self._client, self._loop = httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers), loop
            r = await asyncio.wait_for(self._client.request(method, url, json=payload), self.timeout_s)
            r.raise_for_status()
            return r.json()
        import requests

        def go():
            r = requests.request(method, url, json=payload, timeout=self.timeout_s, headers=self.headers)
            r.raise_for_status()
            return r.json()
        return await asyncio.wait_for(asyncio.to_thread(go), self.timeout_s + 1)

    async def close(self):
        if self._client is not None:
            try:
                await self._client.aclose()
            except RuntimeError:  # its loop is gone already
                pass
            self._client = None


class _URLPool:
    """Round-robin over several base URLs; each retry moves to the next URL."""

    def __init__(self, urls: Sequence[str]):
        if not urls:
            raise ValueError("search.urls is empty: give at least one server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._next = itertools.cycle(range(len(self.urls)))

    def start(self) -> int:
        return next(self._next)

    def pick(self, start: int, attempt: int) -> str:
        return self.urls[(start + attempt) % len(self.urls)]


def _v1(url: str, path: str) -> str:
    """`http://h:p` or `http://h:p/v1` + `chat/completions` -> the OpenAI route."""
    return f"{url}/{path}" if url.endswith("/v1") else f"{url}/v1/{path}"


class OpenAISimulatorSearch(SimulatorBase):
    """An external OpenAI-compatible simulator server (sglang, `vllm serve --port 6001`, or our own route)."""

    name = "http_simulator"

    def __init__(self, urls: Sequence[str], model_name: Optional[str] = None, mode: str = "simulate_prompt",
                 topk: int = 5, curriculum: Optional[dict] = None, seed: int = 0, timeout_s: float = 60.0,
                 max_retries: int = 3, backoff_s: float = 0.5, on_failure: str = "no_information",
                 temperature: float = 0.8, top_p: float = 1.0, max_tokens: int = 600, api_key: Optional[str] = None,
                 max_query_chars: int = 512, confidence: bool = False, share_identical: bool = False):
        super().__init__(mode, topk, curriculum, seed, timeout_s, max_retries, backoff_s, on_failure,
                         max_query_chars, confidence, share_identical)
        self.pool, self.http = _URLPool(urls), _HTTP(timeout_s, api_key)
        self.model_name, self.temperature, self.top_p, self.max_tokens = model_name, temperature, top_p, max_tokens

    def _where(self) -> str:
        return f"simulator server(s) {', '.join(self.pool.urls)}"

    def _begin(self) -> int:
        return self.pool.start()

    async def _call(self, attempt, ctx, query, question, answer, noisy):
        url = self.pool.pick(ctx, attempt)
        if self.model_name is None:  # ask the server which model it serves
            models = await self.http.request("GET", _v1(url, "models"))
            self.model_name = models["data"][0]["id"]
        prompt = simulator_prompt(self.mode, query, question, answer, noisy=noisy, k=self.topk)
        body = {"model": self.model_name, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "n": 1, "logprobs": self.confidence}
        try:
            out = await self.http.request("POST", _v1(url, "chat/completions"), body)
        except Exception as e:
            raise SearchError(f"{url}: {type(e).__name__}: {e}") from e
        choice = out["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        lps = [float(t["logprob"]) for t in content if t.get("logprob") is not None]
        parsed = parse_documents(choice["message"]["content"] or "", self.topk)
        self.counters.dropped_chars += parsed.dropped_chars
        return parsed.docs, (sum(lps) / len(lps) if lps else None)

    async def close(self):
        await self.http.close()


class RetrieverSearch(SearchBackend):
    """Client of the Search-R1 retrieval server: POST {url}/retrieve {"queries", "topk", "return_scores"}."""

    name = "retriever"

    def __init__(self, urls: Sequence[str], topk: int = 3, timeout_s: float = 30.0, max_retries: int = 3,
                 backoff_s: float = 0.5, on_failure: str = "no_information"):
        self.pool, self.http, self.topk = _URLPool(urls), _HTTP(timeout_s), int(topk)
        self.max_retries, self.backoff_s, self.on_failure = int(max_retries), float(backoff_s), on_failure
        self.counters = Counters()

    async def search(self, query, question, golden_answers, step=0, call_key=""):
        from zs_ray.search.retrieval import format_passage, unquote_title

        t, start, c = time.perf_counter(), self.pool.start(), self.counters
        c.calls += 1

        async def attempt(i):
            url = self.pool.pick(start, i)
            out = await self.http.request("POST", f"{url}/retrieve",
                                          {"queries": [str(query)], "topk": self.topk, "return_scores": True})
            docs = []
            for hit in out["result"][0]:
                contents = (hit.get("document") or hit)["contents"]
                title, _, text = contents.partition("\n")
                docs.append(format_passage(unquote_title(title), text.strip()) if text else contents)
            return docs
        docs, err = await with_retries(f"retriever {', '.join(self.pool.urls)}", attempt, self.max_retries,
                                        self.backoff_s, c)
        dt = time.perf_counter() - t
        if err is not None:
            c.failures += 1
            if self.on_failure == "error":
                raise SearchError(f"retriever {', '.join(self.pool.urls)}: all attempts failed: {err}") from err
            return SearchResult(docs=[], backend=self.name, failed=True, latency_s=dt, meta={"error": str(err)})
        return SearchResult(docs=docs, backend=self.name, latency_s=dt)

    def metrics(self) -> dict:
        return self.counters.metrics("search/retriever/")

    async def close(self):
        await self.http.close()
