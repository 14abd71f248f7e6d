"""zs_ray.search.retrieval: BM25 over real wiki-18 passages (the E5 top-3 pool of NQ questions)."""
import asyncio
import json

import pytest
from conftest import shared_path

from zs_ray.core.protocol import render_documents
from zs_ray.core.reward import normalize_answer
from zs_ray.search.retrieval import BM25Index, format_passage, load_or_build, parse_passage, unquote_title

POOL = ("derived", "wiki18_e5top3_pool_nq.jsonl")
NQ_SUB = ("qa", "flashrag_format", "nq_test_sub1000.jsonl")


@pytest.fixture(scope="module")
def nq_index():
    return BM25Index.build(shared_path(*POOL))


@pytest.fixture(scope="module")
def nq_questions():
    with open(shared_path(*NQ_SUB)) as f:
        return [json.loads(line) for line in f]


def _gold_hit_rate(index, questions, k):
    results = index.search([q["question"] for q in questions], k)
    hits = sum(any(normalize_answer(g) in normalize_answer(doc) for doc in docs for g in q["golden_answers"])
               for q, docs in zip(questions, results))
    return hits / len(questions)


def test_bm25_answers_real_nq_questions(nq_index, nq_questions):
    assert len(nq_index) == 2929
    rate = _gold_hit_rate(nq_index, nq_questions, 5)
    print(f"\nNQ top-5 gold-answer hit rate over the E5 pool: {rate:.3f}")
    # Measured 0.636 at k1=0.9, b=0.4 (top-3: 0.604); the pool's own E5 top-3 passages
    # hold a gold string for 0.656 of the questions (SOURCES.md).
    assert rate > 0.5
    docs = nq_index.search([nq_questions[0]["question"]], 5)[0]
    assert len(docs) == 5 and all(isinstance(d, str) and d for d in docs)
    assert "\n" not in docs[0].split(": ", 1)[0]  # title folded into one line: "Title: text"
    rendered = render_documents(docs)
    assert rendered.startswith("Doc 1: ") and "\nDoc 5: " in rendered


def test_search_with_ids_sorted(nq_index):
    hits = nq_index.search_with_ids(["who told the story of the prodigal son"], 5)[0]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.id.startswith("nq_") and h.score > 0 for h in hits)
    assert "Prodigal" in " ".join(h.text for h in hits)


def test_edge_queries(nq_index):
    out = nq_index.search(["", "the of and is", "zzqxv qqqzz", "prodigal son"], 5)
    assert out[0] == [] and out[1] == [] and out[2] == []  # nothing matches -> empty list
    assert 0 < len(out[3]) <= 5
    # k above the corpus size is clipped; only documents sharing a token are returned
    many = nq_index.search(["prodigal"], 10_000)[0]
    assert 0 < len(many) < len(nq_index)
    assert nq_index.search([], 5) == [] and nq_index.search(["prodigal"], 0) == [[]]
    with pytest.raises(TypeError):
        nq_index.search("a string, not a list", 5)


def test_save_load_round_trip(nq_index, nq_questions, tmp_path):
    qs = [q["question"] for q in nq_questions[:50]]
    nq_index.save(str(tmp_path / "idx"))
    loaded = BM25Index.load(str(tmp_path / "idx"))
    assert loaded.search_with_ids(qs, 5) == nq_index.search_with_ids(qs, 5)


def test_load_or_build_reuses_index(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "1", "contents": '"Paris"\nParis is the capital of France.'},
        {"id": "2", "contents": '"Berlin"\nBerlin is the capital of Germany.'},
        {"id": "3", "title": "Rome", "contents": '"Rome"\nRome is the capital of Italy.'},
    ]))
    idx = load_or_build(str(corpus), str(tmp_path / "idx"))
    assert idx.search(["capital of Germany"], 1) == [["Berlin: Berlin is the capital of Germany."]]
    assert idx.search(["italy"], 5) == [["Rome: Rome is the capital of Italy."]]
    again = load_or_build(str(corpus), str(tmp_path / "idx"))
    assert again.meta == idx.meta and again.search(["france"], 3) == idx.search(["france"], 3)
    short = BM25Index.load(str(tmp_path / "idx"), max_words=3)
    assert short.search(["france"], 1) == [["Paris: Paris is the"]]


def test_bm25_search_backend(nq_index):
    from zs_ray.core.search import BM25Search

    res = asyncio.run(BM25Search(nq_index, topk=3).search("prodigal son", "q?", ["x"]))
    assert len(res.docs) == 3 and res.text.startswith("Doc 1: ")


def test_passage_parsing():
    assert unquote_title('"""Uncle Tom\'s Cabin"" Contrasted"') == '"Uncle Tom\'s Cabin" Contrasted'
    assert parse_passage({"id": 1, "contents": '"T"\nbody'}) == ("1", "T", "body")
    assert parse_passage({"id": "a", "title": "T", "text": "body"}) == ("a", "T", "body")
    assert parse_passage({"id": "a", "contents": "no title line"}) == ("a", "", "no title line")
    assert format_passage("T", "one two three", max_words=2) == "T: one two"
