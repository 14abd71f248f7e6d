"""protocol.py: the Search-R1 prompt, action parsing and environment texts (docs/method.md)."""
import pytest

from zs_ray.core import protocol as P
from zs_ray.core.protocol import (Action, make_prompt, normalize_question, observation_text, parse_action,
                                  render_documents)

# The `prompt[0].content` of row test_0 of Search-R1's released nq_search/test.parquet (SOURCES.md §1).
REAL_ROW_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time "
    "you get new information. After reasoning, if you find you lack some knowledge, you can call a search "
    "engine by <search> query </search> and it will return the top searched results between <information> "
    "and </information>. You can search as many times as your want. If you find no further external "
    "knowledge needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: who got the first nobel prize in "
    "physics?\n"
)


# ---------------------------------------------------------------- prompt
def test_make_prompt_equals_the_released_search_r1_text():
    assert make_prompt("who got the first nobel prize in physics?") == REAL_ROW_PROMPT


def test_make_prompt_appends_question_mark_and_strips():
    assert make_prompt("  who got the first nobel prize in physics \n") == REAL_ROW_PROMPT
    assert make_prompt("who got the first nobel prize in physics") == REAL_ROW_PROMPT


def test_make_prompt_does_not_double_question_mark():
    assert normalize_question("why?") == "why?"
    assert normalize_question(" why ") == "why?"
    assert make_prompt("why?").endswith("Question: why?\n")


def test_make_prompt_with_braces_in_question_is_literal():
    assert make_prompt("what is {x}").endswith("Question: what is {x}?\n")


def test_make_prompt_matches_real_parquet_row(shared_data):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(shared_data("searchr1_format", "nq_search_test.parquet"),
                          columns=["question", "prompt"]).slice(0, 50).to_pylist()
    for row in table:
        assert make_prompt(row["question"]) == row["prompt"][0]["content"]


def test_tags_and_stop_strings():
    for t in ("<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
              "<answer>", "</answer>"):
        assert t in P.TAGS
    assert P.STOP_STRINGS == ["</search>", "</answer>"]


# ---------------------------------------------------------------- action parsing
def test_parse_search_and_answer_stripped():
    assert parse_action("<think>hmm</think>\n<search>  capital of France \n</search>") == Action("search", "capital of France")
    assert parse_action("<answer> Paris </answer>") == Action("answer", "Paris")


def test_parse_is_dotall():
    assert parse_action("<answer>line one\nline two</answer>") == Action("answer", "line one\nline two")
    assert parse_action("<search>\nmulti\nline\n</search>") == Action("search", "multi\nline")


def test_first_match_wins():
    assert parse_action("<search>a</search><search>b</search>") == Action("search", "a")
    assert parse_action("<answer>x</answer> <search>q</search>") == Action("answer", "x")
    assert parse_action("<search>q</search> <answer>x</answer>") == Action("search", "q")


def test_nested_tags_follow_the_reference_regex():
    # `<(search|answer)>(.*?)</\1>` is non-greedy from the first opening tag: the query keeps the inner tag.
    a = parse_action("<search><search>a</search></search>")
    assert a.kind == "search" and a.content == "<search>a"


@pytest.mark.parametrize("text", [
    "", "no tags at all", "<search>unclosed", "<answer>unclosed", "<search>q</answer>",
    "</search>q<search>", "<think>only thinking</think>", "<information>x</information>",
    "<Search>q</Search>",
])
def test_invalid_actions(text):
    assert parse_action(text) == Action("invalid")


@pytest.mark.parametrize("text", ["<search></search>", "<search>   \n </search>"])
def test_empty_query_is_invalid(text):
    assert parse_action(text).kind == "invalid"


def test_empty_answer_is_an_answer():
    # An empty answer ends the trajectory (reward 0), unlike an empty search which is invalid.
    assert parse_action("<answer></answer>") == Action("answer", "")


@pytest.mark.parametrize("bad", [None, 3, b"<search>x</search>", ["<search>x</search>"]])
def test_non_str_is_invalid(bad):
    assert parse_action(bad) == Action("invalid")


def test_long_query_truncated():
    a = parse_action("<search>" + "q" * 10_000 + "</search>")
    assert a.kind == "search" and a.truncated is True
    assert a.content == "q" * 512
    b = parse_action("<search>" + "q" * 10_000 + "</search>", max_query_chars=100)
    assert len(b.content) == 100 and b.truncated


def test_query_at_limit_not_truncated():
    a = parse_action("<search>" + "q" * 512 + "</search>")
    assert a.content == "q" * 512 and a.truncated is False


def test_long_answer_not_truncated():
    a = parse_action("<answer>" + "x" * 2000 + "</answer>")
    assert a.kind == "answer" and len(a.content) == 2000 and not a.truncated


# ---------------------------------------------------------------- environment texts
def test_observation_text_format():
    assert observation_text("Doc 1: a") == "\n\n<information>Doc 1: a</information>\n\n"
    assert observation_text("  Doc 1: a\n") == "\n\n<information>Doc 1: a</information>\n\n"


def test_invalid_feedback_names_both_forms_and_retries():
    fb = P.INVALID_FEEDBACK
    assert "<search>" in fb and "</search>" in fb and "<answer>" in fb and "</answer>" in fb
    assert fb.strip().endswith("Let me try again.")
    assert fb.startswith("\n") and fb.endswith("\n")


def test_render_documents():
    assert render_documents([" alpha ", "beta"]) == "Doc 1: alpha\nDoc 2: beta"
    assert render_documents([]) == ""
    five = render_documents([f"d{i}" for i in range(5)]).split("\n")
    assert [line.split(":")[0] for line in five] == [f"Doc {i}" for i in range(1, 6)]
