"""One async search interface that every backend plugs into (simulator, BM25, HTTP, hybrid).

Each call carries its own trajectory's question and gold answers (the reference code paired a
query with another row's question). `step` is the driver's training step (curriculum position),
`call_key` identifies the call (prompt id / sample / turn) so the noise coin is reproducible.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from zs_ray.core.protocol import NO_INFORMATION, render_documents


@dataclass
class SearchResult:
    docs: list[str]
    backend: str
    noisy: Optional[bool] = None  # simulator: which variant the coin chose
    fallback: bool = False  # hybrid / failure fallback was used
    failed: bool = False  # every attempt failed; `docs` holds the no-information text
    mean_logprob: Optional[float] = None  # simulator's confidence (hybrid search)
    latency_s: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return render_documents(self.docs) if self.docs else NO_INFORMATION


class SearchBackend:
    """Base class: subclasses implement `search`. `close` releases clients."""

    name = "base"

    async def search(self, query: str, question: str, golden_answers: Sequence[str], step: int = 0,
                     call_key: str = "") -> SearchResult:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class BM25Search(SearchBackend):
    """Real retrieval over a local corpus with bm25s (zs_ray/search/retrieval.py)."""

    name = "bm25"

    def __init__(self, index, topk: int = 5):
        self.index, self.topk = index, topk

    async def search(self, query, question, golden_answers, step=0, call_key=""):
        t = time.perf_counter()
        # bm25s is fast (sub-ms per query at this scale); a thread keeps the event loop free anyway.
        docs = await asyncio.to_thread(lambda: self.index.search([query], self.topk)[0])
        return SearchResult(docs=docs, backend=self.name, latency_s=time.perf_counter() - t)


class NoSearch(SearchBackend):
    """Returns no documents: the 'no search at test time' baseline."""

    name = "none"

    async def search(self, query, question, golden_answers, step=0, call_key=""):
        return SearchResult(docs=[], backend=self.name)
