"""simulator_prompts.py: the simulator's prompts and the parsing of its documents (docs/method.md)."""
import pytest

from zs_ray.core.simulator_prompts import NOISY_CUE, USEFUL_CUE, cut_at_next_doc, parse_documents, simulator_prompt

Q, A, QUERY = "Which zorbl invented the quaxel?", "Fenwick Tumblethorpe", "quaxel inventor zorbl"


def test_prompt_useful_contains_question_and_answer():
    p = simulator_prompt("simulate_prompt", QUERY, Q, A, noisy=False, k=5)
    assert Q in p and A in p
    assert "search engine" in p.lower() and "5 useful documents" in p
    assert p.endswith(f"Query: {QUERY}\nUseful Output:\n")


def test_prompt_noisy_never_leaks_question_or_answer():
    p = simulator_prompt("simulate_prompt", QUERY, Q, A, noisy=True, k=5)
    assert Q not in p and A not in p
    for word in ("zorbl invented", "Fenwick", "Tumblethorpe"):
        assert word not in p
    assert p.endswith(f"Query: {QUERY}\nNoisy Output:\n")
    assert "Useful Output" not in p


def test_prompt_mode_has_a_one_shot_demo_per_kind():
    useful = simulator_prompt("simulate_prompt", QUERY, Q, A, noisy=False)
    noisy = simulator_prompt("simulate_prompt", QUERY, Q, A, noisy=True)
    assert useful.count("Query:") == 2 and noisy.count("Query:") == 2
    assert useful.count("Doc 1:") == 1 and noisy.count("Doc 1:") == 1
    # the noisy demo must not be the useful demo (it would teach the model to answer under "Noisy Output:")
    demo = lambda p: p.split("Example\n", 1)[1].split("\n\nQuery:", 1)[0].split("\n", 2)[2]
    assert demo(useful) != demo(noisy)
    custom = simulator_prompt("simulate_prompt", QUERY, Q, A, noisy=True, demo_query="dq", demo_docs="Doc 1: dd")
    assert "Query: dq\nNoisy Output:\nDoc 1: dd\n\n" in custom


@pytest.mark.parametrize("noisy,cue", [(False, USEFUL_CUE), (True, NOISY_CUE)])
def test_sft_both_variants_get_question_and_answer(noisy, cue):
    p = simulator_prompt("simulate_sft", QUERY, Q, A, noisy=noisy, k=5)
    assert Q in p and A in p and QUERY in p
    assert p.endswith(f"{cue}\n")
    assert "Doc 1" not in p  # no demo


def test_sft_variants_differ_only_in_cue():
    u = simulator_prompt("simulate_sft", QUERY, Q, A, noisy=False)
    n = simulator_prompt("simulate_sft", QUERY, Q, A, noisy=True)
    assert u.replace(USEFUL_CUE, NOISY_CUE) == n


def test_k_is_in_the_prompt():
    assert "3 useful documents" in simulator_prompt("simulate_prompt", QUERY, Q, A, noisy=False, k=3)
    assert "Generate 3 documents" in simulator_prompt("simulate_sft", QUERY, Q, A, noisy=True, k=3)


def test_braces_in_inputs_are_literal():
    p = simulator_prompt("simulate_prompt", "{k} {query}", "{question}", "{answer}", noisy=False)
    assert p.endswith("Query: {k} {query}\nUseful Output:\n") and '"{question}"' in p


def test_unknown_mode():
    with pytest.raises(ValueError, match="simulate_prompt"):
        simulator_prompt("bm25", QUERY, Q, A, noisy=False)


# ---------------------------------------------------------------- parsing
def test_parse_five_docs():
    text = "\n".join(f"Doc {i}: body {i} text" for i in range(1, 6))
    out = parse_documents(text, k=5)
    assert out.docs == [f"body {i} text" for i in range(1, 6)] and out.dropped_chars == 0


def test_cut_at_doc_k_plus_1():
    text = "Doc 1: a\nDoc 2: b\nDoc 3: c\nDoc 4: d"
    assert cut_at_next_doc(text, 2) == "Doc 1: a\nDoc 2: b\n"
    assert parse_documents(text, k=2).docs == ["a", "b"]
    assert cut_at_next_doc("Doc 1: a Doc 20: z", 1) == "Doc 1: a Doc 20: z"  # "Doc 20" is not "Doc 2"
    assert cut_at_next_doc("Doc 1: a Doc 2: z", 1) == "Doc 1: a "
    assert parse_documents("Doc 1: a Doc 2: b", k=1).docs == ["a"]


def test_text_before_doc1_is_dropped_and_counted():
    out = parse_documents("Sure! Here you go:\nDoc 1: alpha\nDoc 2: beta", k=5)
    assert out.docs == ["alpha", "beta"]
    assert out.dropped_chars == len("Sure! Here you go:")


def test_no_doc_lines():
    out = parse_documents("  I cannot help with that.  ", k=5)
    assert out.docs == [] and out.dropped_chars == len("I cannot help with that.")
    assert parse_documents("", k=5).docs == [] and parse_documents(None, k=5).docs == []


def test_extra_text_after_last_doc_stays_in_it():
    out = parse_documents("Doc 1: a\nDoc 2: b\n\nI hope this helps.", k=5)
    assert out.docs == ["a", "b I hope this helps."]


def test_title_forms_and_whitespace():
    out = parse_documents("Doc 1 (Title: Paris): Paris is big.\nDoc 2(Title: France):  France\n is  a country.", k=5)
    assert out.docs == ["Paris is big.", "France is a country."]


def test_empty_doc_bodies_are_skipped_and_at_most_k():
    out = parse_documents("Doc 1:\nDoc 2: x\nDoc 3: y", k=5)
    assert out.docs == ["x", "y"]
    many = "\n".join(f"doc {i}: d{i}" for i in range(1, 5))  # lowercase, not cut by `Doc {k+1}`
    out = parse_documents(many, k=2)
    assert out.docs == ["d1", "d2"] and out.dropped_chars == len("d3") + len("d4")
