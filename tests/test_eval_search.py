"""Which search `zs-ray eval` runs: real retrieval by default (BM25 over search.corpus / search.index_dir, or the
retrieval server of search.backend=retriever), the training simulator only when asked (`--search simulator`),
and the header and summary.json saying which. Pure logic: no Ray, no engine."""
import os

import pytest

from zs_ray.config import ConfigError, load_config, to_dict
from zs_ray.core.search import NoSearch
from zs_ray.eval.evaluation import describe_search, resolve_eval_search
from zs_ray.eval.report import eval_title

DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cpu_default.yaml")


def _search(*overrides):
    return to_dict(load_config(DEFAULT, list(overrides)))["search"]


def test_the_cpu_default_evaluates_with_real_bm25_not_its_training_simulator():
    s = _search()
    assert s["backend"] == "simulate_sft"  # the training back-end
    which = resolve_eval_search(s)
    assert (which.kind, which.backend, which.real) == ("bm25", "bm25", True)
    assert which.source == s["corpus"]
    assert which.search_config(s)["backend"] == "bm25"
    assert which.label == f"real BM25 over {s['corpus']}"


def test_index_dir_alone_is_enough_for_bm25():
    which = resolve_eval_search(_search("search.corpus=null", "search.index_dir=/data/bm25"))
    assert (which.kind, which.source) == ("bm25", "/data/bm25")


def test_retriever_backend_and_flag_use_the_server():
    s = _search("search.backend=retriever", "search.urls=[http://127.0.0.1:9000/retrieve]")
    for choice in (None, "retriever"):
        which = resolve_eval_search(s, choice)
        assert (which.kind, which.backend, which.source) == ("retriever", "retriever", "http://127.0.0.1:9000/retrieve")
        assert which.real and "retrieval server http://127.0.0.1:9000/retrieve" in which.label
    # the flag on a simulator config with a corpus: the server, not BM25 and not the simulator
    s = _search("search.urls=[http://127.0.0.1:9000/retrieve]")
    assert resolve_eval_search(s, "retriever").backend == "retriever"


def test_simulator_only_when_asked_and_the_label_says_so():
    s = _search()
    which = resolve_eval_search(s, "simulator")
    assert (which.kind, which.backend, which.real) == ("simulator", "simulate_sft", False)
    assert which.label.startswith("SIMULATOR simulate_sft") and "not real search" in which.label
    assert s["simulator_model"] in which.label
    # asked for on a BM25 config: the simulator_mode backend, never the retriever's URLs
    s = _search("search.backend=bm25", "search.urls=[http://127.0.0.1:9000/retrieve]")
    which = resolve_eval_search(s, "simulator")
    assert which.backend == "simulate_sft" and which.search_config(s)["urls"] == []
    # an external OpenAI-compatible simulator server keeps its URLs
    s = _search("search.backend=http", "search.urls=[http://127.0.0.1:8001/v1]")
    which = resolve_eval_search(s, "simulator")
    assert which.backend == "http" and which.source == "http://127.0.0.1:8001/v1"
    assert which.search_config(s)["urls"] == ["http://127.0.0.1:8001/v1"]


def test_no_real_search_configured_is_an_error_that_says_what_to_set():
    s = _search("search.corpus=null", "search.index_dir=null")
    with pytest.raises(ConfigError) as e:
        resolve_eval_search(s)
    msg = str(e.value)
    for key in ("search.corpus", "search.index_dir", "--search retriever", "search.urls", "--search simulator"):
        assert key in msg
    with pytest.raises(ConfigError, match="search.corpus"):
        resolve_eval_search(s, "bm25")
    with pytest.raises(ConfigError, match="search.urls"):
        resolve_eval_search(s, "retriever")
    with pytest.raises(ConfigError, match="search.simulator_model"):
        resolve_eval_search(_search("search.simulator_model=null"), "simulator")
    with pytest.raises(ConfigError, match="--search must be one of"):
        resolve_eval_search(s, "google")


def test_describe_search_for_direct_mode_and_a_passed_in_backend():
    cfg = load_config(DEFAULT, ["search.corpus=null", "search.index_dir=null"])
    assert describe_search(cfg, "direct")["label"] == "none (direct answer)"  # needs no search at all
    assert describe_search(cfg, "agent", NoSearch())["label"] == "none (no search at test time)"
    with pytest.raises(ConfigError):
        describe_search(cfg, "agent")
    assert describe_search(load_config(DEFAULT), "rag")["kind"] == "bm25"


def test_header_names_the_search():
    real = resolve_eval_search(_search())
    title = eval_title("agent", "runs/quickstart/policy_warm", real.label, 3, 2, 200, 31.4)
    assert title == ("agent | policy runs/quickstart/policy_warm | search: real BM25 over "
                     "runs/quickstart/world/world/corpus.jsonl (top-3) | max_turns 2 | 200 questions, 31s")
    sim = resolve_eval_search(_search(), "simulator")
    assert "search: SIMULATOR simulate_sft (Serve app 'simulator', model runs/quickstart/simulator_sft), not real " \
           "search (top-3)" in eval_title("agent", "p", sim.label, 3, 2, 1, 0)
    assert "search: none (direct answer) |" in eval_title("direct", "p", "none (direct answer)", 3, 0, 1, 0)


def test_cli_flag_is_parsed():
    from jobs.evaluate import parse_args

    ns, rest = parse_args([DEFAULT, "--search", "simulator", "search.topk=2"])
    assert ns.search == "simulator" and rest == ["search.topk=2"]
    assert parse_args([DEFAULT])[0].search is None
    with pytest.raises(SystemExit):
        parse_args([DEFAULT, "--search", "google"])


def test_a_baseline_without_answer_tags_is_scored_on_its_first_line():
    from zs_ray.eval.evaluation import free_form_answer
    from zs_ray.core.reward import score_answer

    said = "\n  The capital of France is Paris.\nIt is also its largest city."
    assert free_form_answer(said) == "The capital of France is Paris."
    assert free_form_answer("  \n ") is None and free_form_answer("") is None
    m = score_answer(free_form_answer(said), ["Paris"])
    assert m["em"] == 0.0 and m["cover_em"] == 1.0 and 0 < m["f1"] < 1  # EM stays strict
