"""Prompts of the search simulator and parsing of its documents (docs/method.md).

Two modes:
- simulate_prompt: an instruct model with a one-shot demo. The *useful* prompt is told the user's
  question and first gold answer; the *noisy* prompt is not (it must not leak the answer).
- simulate_sft: a fine-tuned simulator with a short prompt and no demo; both variants get the
  question and answer, and the cue (`Useful Output:` / `Noisy Output:`) selects the behaviour.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MODES = ("simulate_prompt", "simulate_sft")

DEMO_QUERY = "capital of France"
DEMO_DOCS = (
    "Doc 1: Paris is the capital and largest city of France.\n"
    "Doc 2: France is a country in Western Europe; its capital is Paris."
)
# The noisy prompt's demo shows *noisy* documents: related to the query but not answering it.
DEMO_NOISY_DOCS = (
    "Doc 1: France is known for its cuisine, wine regions and the Tour de France cycling race.\n"
    "Doc 2: Many European countries moved their capitals over the centuries for political reasons."
)

PROMPT_USEFUL = (
    "You are a search engine. Given a query, write {k} useful documents for it, one per line, "
    "each starting with 'Doc i:' and about 30 words long. The user is trying to answer the question "
    "\"{question}\" and the correct answer is \"{answer}\"; the documents should contain the information "
    "needed to answer it.\n\nExample\nQuery: {demo_query}\nUseful Output:\n{demo_docs}\n\n"
    "Query: {query}\nUseful Output:\n"
)
PROMPT_NOISY = (
    "You are a search engine. Given a query, write {k} documents that are related to the query but "
    "do not contain useful information to answer it, one per line, each starting with 'Doc i:' and "
    "about 30 words long.\n\nExample\nQuery: {demo_query}\nNoisy Output:\n{demo_docs}\n\n"
    "Query: {query}\nNoisy Output:\n"
)
SFT_PROMPT = "Generate {k} documents for the query. Question: {question} Answer: {answer} Query: {query}\n{cue}\n"

USEFUL_CUE, NOISY_CUE = "Useful Output:", "Noisy Output:"


def simulator_prompt(mode: str, query: str, question: str, answer: str, noisy: bool, k: int = 5,
                     demo_query: str = DEMO_QUERY, demo_docs: str | None = None) -> str:
    """The single user-turn text sent to the simulator (demo_docs None: the demo of the chosen kind)."""
    if mode == "simulate_prompt":
        if demo_docs is None:
            demo_docs = DEMO_NOISY_DOCS if noisy else DEMO_DOCS
        if noisy:  # the noisy prompt never sees the question or answer
            return PROMPT_NOISY.format(k=k, query=query, demo_query=demo_query, demo_docs=demo_docs)
        return PROMPT_USEFUL.format(k=k, query=query, question=question, answer=answer,
                                     demo_query=demo_query, demo_docs=demo_docs)
    if mode == "simulate_sft":
        cue = NOISY_CUE if noisy else USEFUL_CUE
        return SFT_PROMPT.format(k=k, question=question, answer=answer, query=query, cue=cue)
    raise ValueError(f"search.backend: unknown simulator mode {mode!r}; expected one of {MODES}")


_DOC_RE = re.compile(r"Doc\s*(\d+)\s*(?:\(Title:[^)]*\))?\s*:?", re.IGNORECASE)


@dataclass
class ParsedDocs:
    docs: list[str] = field(default_factory=list)
    dropped_chars: int = 0  # text outside any well-formed `Doc i:` block (counted, then dropped)


def cut_at_next_doc(text: str, k: int) -> str:
    """Cut the simulator output at the first `Doc {k+1}` (ZeroSearch's post-processing)."""
    m = re.search(rf"Doc\s*{k + 1}\b", text)
    return text[: m.start()] if m else text


def parse_documents(text: str, k: int = 5) -> ParsedDocs:
    """Split simulator output into at most k documents; text before `Doc 1` or after `Doc k` is dropped."""
    text = cut_at_next_doc(text or "", k)
    marks = list(_DOC_RE.finditer(text))
    out = ParsedDocs()
    if not marks:
        out.dropped_chars = len(text.strip())
        return out
    out.dropped_chars = len(text[: marks[0].start()].strip())
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = " ".join(text[m.end():end].split())
        if body and len(out.docs) < k:
            out.docs.append(body)
        else:
            out.dropped_chars += len(body)
    return out
