"""Real retrieval: a local BM25 index (bm25s) over a wiki-18-style passage corpus.

Corpus rows are jsonl, Search-R1/FlashRAG style:
  {"id": ..., "contents": "\"Title\"\ntext"}            (title = first line of contents), or
  {"id": ..., "title": ..., "contents"|"text": ...}     (title given; a repeated title line is dropped).

`search(queries, k)` returns, per query, the passage texts "Title: text" (best first), the shape
`zs_ray.core.search.BM25Search` expects; the rollout renders them with `protocol.render_documents`
("Doc i: ..."), the same format the simulator writes. Texts are kept whole unless `max_words` is set.

Results policy (documented, tested): a query whose tokens are all stop words / unknown to the
corpus, or an empty query, returns an EMPTY list (the rollout then shows "No information
available."); documents with BM25 score 0 share no token with the query and are never returned,
so a query may get fewer than k passages; k larger than the corpus is clipped.

Pure Python: no Ray. Tokenisation: lowercase, `\\w\\w+` tokens, bm25s's English stop words,
no stemming (identical for corpus and queries, and stored with the index).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import bm25s
import numpy as np

_META = "zs_index_meta.json"
_DOCS = "zs_docs.jsonl"
_FORMAT_VERSION = 1
_TOKENIZE = dict(lower=True, stopwords="english", stemmer=None)


class RetrievalError(RuntimeError):
    pass


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str


def unquote_title(title: str) -> str:
    """wiki-18 titles are CSV-quoted: '"Foo ""Bar"" x"' -> 'Foo "Bar" x'."""
    t = title.strip()
    if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
        t = t[1:-1].replace('""', '"')
    return t


def parse_passage(row: dict) -> tuple[str, str, str]:
    """(id, title, text) of one corpus row."""
    body = row.get("contents", row.get("text"))
    if "id" not in row or not isinstance(body, str):
        raise RetrievalError(f"corpus row needs 'id' and 'contents' (or 'text'): {str(row)[:200]}")
    doc_id = str(row["id"])
    first, _, rest = body.partition("\n")
    if "title" in row and row["title"] is not None:
        title = str(row["title"]).strip()
        # Some corpora repeat the title as the first line of contents; do not show it twice.
        text = rest if unquote_title(first) == title else body
    else:
        title, text = (unquote_title(first), rest) if rest else ("", first)
    return doc_id, title, text.strip()


def format_passage(title: str, text: str, max_words: Optional[int] = None) -> str:
    """Compact one-line form "Title: text" (no title -> text)."""
    if max_words is not None:
        words = text.split()
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    return f"{title}: {text}" if title else text


def iter_corpus(path: str) -> Iterable[dict]:
    if not os.path.isfile(path):
        raise RetrievalError(f"corpus file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise RetrievalError(f"{path}: line {n + 1} is not JSON: {e}") from e


def _tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, return_ids=False, show_progress=False, **_TOKENIZE)


class BM25Index:
    """BM25 over a passage corpus. Build with `BM25Index.build`, or `load`/`load_or_build`."""

    def __init__(self, retriever: "bm25s.BM25", ids: list[str], titles: list[str], texts: list[str],
                 max_words: Optional[int] = None, meta: Optional[dict] = None):
        self.retriever, self.ids, self.titles, self.texts = retriever, ids, titles, texts
        self.max_words = max_words
        self.meta = meta or {}

    def __len__(self) -> int:
        return len(self.ids)

    # ---- construction / persistence ---------------------------------------------------------

    @classmethod
    def build(cls, corpus_path: str, max_words: Optional[int] = None, k1: float = 0.9,
              b: float = 0.4) -> "BM25Index":
        """Index a corpus jsonl. k1=0.9, b=0.4 are Pyserini's BM25 defaults (FlashRAG's bm25 uses them)."""
        ids, titles, texts, seen = [], [], [], set()
        for row in iter_corpus(corpus_path):
            doc_id, title, text = parse_passage(row)
            if doc_id in seen:
                raise RetrievalError(f"{corpus_path}: duplicate passage id {doc_id!r}")
            seen.add(doc_id)
            ids.append(doc_id), titles.append(title), texts.append(text)
        if not ids:
            raise RetrievalError(f"{corpus_path}: corpus is empty")
        retriever = bm25s.BM25(k1=k1, b=b)
        # The title is indexed with the text: many answers are entity names found only in titles.
        retriever.index(_tokenize([f"{t} {x}" for t, x in zip(titles, texts)]), show_progress=False)
        meta = {"format_version": _FORMAT_VERSION, "corpus": os.path.abspath(corpus_path),
                "corpus_bytes": os.path.getsize(corpus_path), "n_docs": len(ids), "k1": k1, "b": b,
                "tokenize": {k: v for k, v in _TOKENIZE.items() if k != "stemmer"}}
        return cls(retriever, ids, titles, texts, max_words=max_words, meta=meta)

    def save(self, index_dir: str) -> None:
        os.makedirs(index_dir, exist_ok=True)
        self.retriever.save(index_dir, show_progress=False)
        with open(os.path.join(index_dir, _DOCS), "w", encoding="utf-8") as f:
            for i, t, x in zip(self.ids, self.titles, self.texts):
                f.write(json.dumps({"id": i, "title": t, "text": x}, ensure_ascii=False) + "\n")
        # Meta last: its presence marks a complete index (load_or_build trusts it).
        with open(os.path.join(index_dir, _META), "w") as f:
            json.dump(self.meta, f, indent=1)

    @classmethod
    def load(cls, index_dir: str, max_words: Optional[int] = None) -> "BM25Index":
        meta_path = os.path.join(index_dir, _META)
        if not os.path.isfile(meta_path):
            raise RetrievalError(f"no BM25 index in {index_dir} (missing {_META})")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format_version") != _FORMAT_VERSION:
            raise RetrievalError(f"{index_dir}: index format {meta.get('format_version')} != {_FORMAT_VERSION}")
        retriever = bm25s.BM25.load(index_dir, show_progress=False)
        ids, titles, texts = [], [], []
        with open(os.path.join(index_dir, _DOCS), encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                ids.append(d["id"]), titles.append(d["title"]), texts.append(d["text"])
        if len(ids) != meta["n_docs"]:
            raise RetrievalError(f"{index_dir}: {len(ids)} docs stored, meta says {meta['n_docs']}")
        return cls(retriever, ids, titles, texts, max_words=max_words, meta=meta)

    @classmethod
    def load_or_build(cls, corpus_path: str, index_dir: str, max_words: Optional[int] = None) -> "BM25Index":
        """Load the index in `index_dir` if it was built from this corpus (path and size), else build and save."""
        meta_path = os.path.join(index_dir, _META)
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            if (meta.get("format_version") == _FORMAT_VERSION
                    and meta.get("corpus") == os.path.abspath(corpus_path)
                    and meta.get("corpus_bytes") == os.path.getsize(corpus_path)):
                return cls.load(index_dir, max_words=max_words)
        index = cls.build(corpus_path, max_words=max_words)
        index.save(index_dir)
        return index

    @classmethod
    def from_search_config(cls, corpus: Optional[str], index_dir: Optional[str],
                           max_words: Optional[int] = None) -> "BM25Index":
        """The index that search.corpus and search.index_dir name: both, the saved index if it was built from
        that corpus (else built and saved); only the folder, the saved index; only the corpus, built in memory."""
        if corpus and index_dir:
            return cls.load_or_build(corpus, index_dir, max_words=max_words)
        if index_dir:
            return cls.load(index_dir, max_words=max_words)
        if corpus:
            return cls.build(corpus, max_words=max_words)
        raise ValueError("BM25 search needs search.corpus or search.index_dir")

    # ---- search ----------------------------------------------------------------------------

    def search_with_ids(self, queries: list[str], k: int,
                        max_words: Optional[int] = None) -> list[list[Hit]]:
        """Top-k (id, score, text) per query, best first; see the module doc for empty results."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not one string")
        max_words = self.max_words if max_words is None else max_words
        out: list[list[Hit]] = [[] for _ in queries]
        k = min(int(k), len(self.ids))
        if k <= 0 or not queries:
            return out
        vocab = self.retriever.vocab_dict
        # bm25s refuses queries with no known token, so keep only those that have one.
        tokens = [[t for t in toks if t in vocab] for toks in _tokenize([str(q or "") for q in queries])]
        live = [i for i, toks in enumerate(tokens) if toks]
        if not live:
            return out
        docs, scores = self.retriever.retrieve([tokens[i] for i in live], k=k, show_progress=False,
                                               n_threads=0)
        for row, qi in enumerate(live):
            for d, s in zip(np.asarray(docs[row]).tolist(), np.asarray(scores[row]).tolist()):
                if s > 0:  # score 0 = no shared token: an arbitrary document, not a hit
                    out[qi].append(Hit(self.ids[d], float(s),
                                       format_passage(self.titles[d], self.texts[d], max_words)))
        return out

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for one query (zeros when it shares no token with the corpus)."""
        vocab = self.retriever.vocab_dict
        toks = [t for t in _tokenize([str(query or "")])[0] if t in vocab]
        return np.asarray(self.retriever.get_scores(toks)) if toks else np.zeros(len(self.ids))

    def passage(self, i: int, max_words: Optional[int] = None) -> str:
        return format_passage(self.titles[i], self.texts[i], self.max_words if max_words is None else max_words)

    def search(self, queries: list[str], k: int, max_words: Optional[int] = None) -> list[list[str]]:
        """Passage texts per query (the interface zs_ray.core.search.BM25Search calls)."""
        return [[h.text for h in hits] for hits in self.search_with_ids(queries, k, max_words)]


def load_or_build(corpus_path: str, index_dir: str, max_words: Optional[int] = None) -> BM25Index:
    return BM25Index.load_or_build(corpus_path, index_dir, max_words=max_words)
