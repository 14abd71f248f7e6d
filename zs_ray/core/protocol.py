"""The multi-turn search protocol of Search-R1 / ZeroSearch (docs/method.md).

Pure text functions: the policy prompt, action parsing, observation and feedback texts.
The rollout loop (zs_ray/core/rollout.py) applies them to the policy's *own* sampled tokens only,
so tag-like text inside documents can never be read as an action.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

THINK, SEARCH, INFORMATION, ANSWER = "think", "search", "information", "answer"
TAGS = [f"<{t}>" for t in (THINK, SEARCH, INFORMATION, ANSWER)] + [
    f"</{t}>" for t in (THINK, SEARCH, INFORMATION, ANSWER)
]
STOP_STRINGS = ["</search>", "</answer>"]

# Search-R1's `make_prefix` (template_type=base), the wording its released parquet carries.
PROMPT_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every "
    "time you get new information. After reasoning, if you find you lack some knowledge, you can call "
    "a search engine by <search> query </search> and it will return the top searched results between "
    "<information> and </information>. You can search as many times as your want. If you find no "
    "further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

INVALID_FEEDBACK = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> "
    "and </search>. If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again.\n"
)
# Sent when a search is attempted after the search budget is spent (the final, answer-only turn).
NO_MORE_SEARCH_FEEDBACK = "\nI have used all my searches. I must now give my final answer.\n"
NO_INFORMATION = "No information available."

_ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class Action:
    kind: str  # "search" | "answer" | "invalid"
    content: str = ""
    truncated: bool = False


def normalize_question(question: str) -> str:
    """Strip and make sure the question ends with '?' (as Search-R1's data script does)."""
    q = str(question).strip()
    if not q.endswith("?"):
        q += "?"
    return q


def make_prompt(question: str) -> str:
    """Content of the single user turn given to the policy."""
    return PROMPT_TEMPLATE.format(question=normalize_question(question))


def parse_action(new_text: str, max_query_chars: int = 512) -> Action:
    """First `<search>`/`<answer>` match in the turn's new text; no match is an invalid action.

    An empty search query is invalid; an over-long one is cut to `max_query_chars`.
    """
    if not isinstance(new_text, str):
        return Action("invalid")
    m = _ACTION_RE.search(new_text)
    if m is None:
        return Action("invalid")
    kind, content = m.group(1), m.group(2).strip()
    if kind == SEARCH:
        if not content:
            return Action("invalid")
        if len(content) > max_query_chars:
            return Action(SEARCH, content[:max_query_chars], truncated=True)
    return Action(kind, content)


def observation_text(documents: str) -> str:
    """Text appended after a search: the environment's tokens, masked out of the loss."""
    return f"\n\n<information>{documents.strip()}</information>\n\n"


def render_documents(docs: list[str]) -> str:
    """`Doc 1: ...` lines, the format both the simulator and BM25 return."""
    return "\n".join(f"Doc {i + 1}: {d.strip()}" for i, d in enumerate(docs))
