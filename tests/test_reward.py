"""reward.py: SQuAD normalisation, EM, cover-EM, F1 and the training reward (docs/method.md)."""
import pytest

from zs_ray.core.reward import (cover_exact_match, exact_match, extract_answer, f1_score, normalize_answer,
                                score_answer, score_response, training_reward)


@pytest.mark.parametrize("raw,norm", [
    ("The Cat", "cat"),
    ("  Hello,   World! ", "hello world"),
    ("an apple a day", "apple day"),
    ("Theatre", "theatre"),  # articles only as whole words
    ("A.B.C.", "abc"),
    ("Wilhelm Conrad Röntgen", "wilhelm conrad röntgen"),
    ("\tthe\n  end ", "end"),
    ("", ""),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("The Cat!", ["cat"]) == 1.0
    assert exact_match("cat sat", ["cat"]) == 0.0
    assert exact_match("Paris", "paris") == 1.0  # a single gold string
    assert exact_match(None, ["x"]) == 0.0


def test_cover_exact_match():
    assert cover_exact_match("it was Wilhelm Conrad Röntgen in 1901", ["Wilhelm Conrad Röntgen"]) == 1.0
    assert cover_exact_match("Röntgen", ["Wilhelm Conrad Röntgen"]) == 0.0
    assert cover_exact_match("anything", ["the"]) == 0.0  # an empty normalised gold never covers
    assert cover_exact_match(None, ["x"]) == 0.0


def test_f1_known_pairs():
    assert f1_score("the cat sat", ["cat sat down"]) == pytest.approx(0.8)
    assert f1_score("cat", ["cat"]) == 1.0
    assert f1_score("dog", ["cat"]) == 0.0
    # precision 1/2, recall 1/1 -> 2/3
    assert f1_score("paris france", ["Paris"]) == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred [a1 a1], gold [a1] -> p=1/2, r=1 -> 2/3
    assert f1_score("x x", ["x"]) == pytest.approx(2 / 3)
    assert f1_score(None, ["x"]) == 0.0
    assert f1_score("", ["x"]) == 0.0


def test_multiple_golds_take_max():
    golds = ["nothing here", "cat sat down", "cat sat"]
    assert f1_score("the cat sat", golds) == 1.0
    assert exact_match("cat sat", golds) == 1.0
    assert f1_score("the cat sat", ["nothing here", "cat sat down"]) == pytest.approx(0.8)
    assert cover_exact_match("a dog", ["cat", "dog"]) == 1.0


def test_extract_answer_takes_last():
    r = "<think>x</think><answer> first </answer> more <answer>\n second \n</answer> tail"
    assert extract_answer(r) == "second"
    assert extract_answer("no answer here") is None
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("") is None and extract_answer(None) is None


def test_score_response_reads_only_the_response():
    # The prompt's example `<answer> Beijing </answer>` must never be scored: only the response is passed.
    from zs_ray.core.protocol import make_prompt
    prompt = make_prompt("capital of china")
    assert extract_answer(prompt) == "Beijing"
    assert score_response("<think>?</think> I do not know", ["Beijing"]) == {"em": 0.0, "cover_em": 0.0, "f1": 0.0}
    assert score_response("<answer>beijing</answer>", ["Beijing"]) == {"em": 1.0, "cover_em": 1.0, "f1": 1.0}


def test_score_answer_keys():
    s = score_answer("the cat sat", ["cat sat down"])
    assert s == {"em": 0.0, "cover_em": 0.0, "f1": pytest.approx(0.8)}


def test_training_reward_kinds():
    assert training_reward("the cat sat", ["cat sat down"]) == pytest.approx(0.8)  # default: F1
    assert training_reward("the cat sat", ["cat sat down"], "f1") == pytest.approx(0.8)
    assert training_reward("the cat sat", ["cat sat down"], "em") == 0.0
    assert training_reward("the cat sat", ["cat sat"], "em") == 1.0
    assert training_reward("x cat sat down", ["cat sat down"], "cover_em") == 1.0
    assert training_reward(None, ["x"], "f1") == 0.0
    with pytest.raises(ValueError, match="algorithm.reward"):
        training_reward("x", ["x"], "format")
