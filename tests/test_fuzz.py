"""Property tests: the text parsers and reward functions never raise and respect their bounds."""
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zs_ray.core.protocol import parse_action
from zs_ray.core.reward import (cover_exact_match, exact_match, extract_answer, f1_score, normalize_answer,
                                score_response)
from zs_ray.core.simulator_prompts import parse_documents

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that often contains the tags and Doc markers, mixed with arbitrary unicode
_pieces = st.sampled_from(["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>",
                           "<information>", "</information>", "<search", "answer>", " ", "\n", "\t",
                           "Doc 1:", "Doc 2:", "Doc 3", "Doc 6:", "doc 4:", "Doc 1 (Title: x):", "(Title:",
                           ":", "Doc", "Doc 12:", "Doc\n2:", "\u00a0", "\u2028"])
tagged_text = st.lists(st.one_of(_pieces, st.text(max_size=20)), max_size=25).map("".join)
any_text = st.one_of(st.text(max_size=300), tagged_text)


@FAST
@given(any_text, st.integers(min_value=1, max_value=64))
def test_parse_action_never_raises_and_respects_bounds(text, max_chars):
    a = parse_action(text, max_query_chars=max_chars)
    assert a.kind in ("search", "answer", "invalid")
    if a.kind == "invalid":
        assert a.content == "" and not a.truncated
    elif a.kind == "search":
        assert 0 < len(a.content) <= max_chars
        assert a.content in text  # a substring of the input, never invented
        assert not a.truncated or len(a.content) == max_chars
    else:
        assert a.content in text and not a.truncated
    # oracle: the first match of the reference regex, stripped; empty search = invalid
    m = re.search(r"<(search|answer)>(.*?)</\1>", text, re.DOTALL)
    if m is None or (m.group(1) == "search" and not m.group(2).strip()):
        assert a.kind == "invalid"
    else:
        full = m.group(2).strip()
        assert a.kind == m.group(1)
        assert a.content == (full[:max_chars] if a.kind == "search" else full)


@FAST
@given(st.text(max_size=40).filter(lambda s: s.strip() and "</search>" not in s), st.integers(1, 64))
def test_parse_action_truncation_flag(query, max_chars):
    a = parse_action(f"<think>t</think><search>{query}</search>", max_query_chars=max_chars)
    q = query.strip()
    assert a.kind == "search"
    assert a.truncated == (len(q) > max_chars)
    assert a.content == q[:max_chars]


@FAST
@given(st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.lists(st.text(max_size=5), max_size=3)))
def test_parse_action_non_str(x):
    assert parse_action(x).kind == "invalid"


@FAST
@given(any_text, st.integers(min_value=1, max_value=6))
def test_parse_documents_bounds(text, k):
    out = parse_documents(text, k=k)
    assert len(out.docs) <= k
    assert out.dropped_chars >= 0
    for d in out.docs:
        assert d and d == " ".join(d.split())  # non-empty, whitespace collapsed
        assert f"Doc {k + 1}" not in d
    # docs are made of the input's words, never invented
    for d in out.docs:
        assert all(w in text for w in d.split())


@FAST
@given(st.text(max_size=60), st.lists(st.text(max_size=30), min_size=1, max_size=4))
def test_reward_functions_on_arbitrary_unicode(pred, golds):
    for fn in (exact_match, cover_exact_match, f1_score):
        v = fn(pred, golds)
        assert 0.0 <= v <= 1.0
    if exact_match(pred, golds) == 1.0 and normalize_answer(pred):
        assert f1_score(pred, golds) == 1.0 and cover_exact_match(pred, golds) == 1.0
    assert exact_match(pred, golds + [pred]) == 1.0  # a prediction always matches itself
    assert normalize_answer(normalize_answer(pred)) == normalize_answer(pred)  # idempotent
    assert exact_match(None, golds) == cover_exact_match(None, golds) == f1_score(None, golds) == 0.0


@FAST
@given(any_text, st.lists(st.text(max_size=20), min_size=1, max_size=3))
def test_score_response_never_raises(response, golds):
    s = score_response(response, golds)
    assert set(s) == {"em", "cover_em", "f1"} and all(0.0 <= v <= 1.0 for v in s.values())
    if extract_answer(response) is None:
        assert s == {"em": 0.0, "cover_em": 0.0, "f1": 0.0}
