"""Rewards and metrics: SQuAD normalisation, EM, cover-EM, F1 (docs/method.md).

The answer is always the last `<answer>` of the *response* — never of the prompt (a reference bug).
"""
from __future__ import annotations

import re
import string
from collections import Counter

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def extract_answer(response: str) -> str | None:
    """Last `<answer>...</answer>` in the response text, stripped; None if there is none."""
    matches = _ANSWER_RE.findall(response or "")
    return matches[-1].strip() if matches else None


def _golds(golds) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds]


def exact_match(pred: str | None, golds) -> float:
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def cover_exact_match(pred: str | None, golds) -> float:
    """Normalised gold is a substring of the normalised prediction (ZeroSearch's reported "EM")."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(normalize_answer(g) in p for g in _golds(golds) if normalize_answer(g)))


def f1_score(pred: str | None, golds) -> float:
    if pred is None:
        return 0.0
    p_toks = normalize_answer(pred).split()
    best = 0.0
    for g in _golds(golds):
        g_toks = normalize_answer(g).split()
        common = Counter(p_toks) & Counter(g_toks)
        same = sum(common.values())
        if same == 0:
            continue
        prec, rec = same / len(p_toks), same / len(g_toks)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


METRICS = {"em": exact_match, "cover_em": cover_exact_match, "f1": f1_score}


def score_answer(pred: str | None, golds) -> dict[str, float]:
    """All metrics for one predicted answer."""
    return {name: fn(pred, golds) for name, fn in METRICS.items()}


def score_response(response: str, golds) -> dict[str, float]:
    """Metrics of the last answer in a response text (the response only, not the prompt)."""
    return score_answer(extract_answer(response), golds)


def training_reward(pred: str | None, golds, kind: str = "f1") -> float:
    """ZeroSearch trains on F1; Search-R1 on strict EM. No format reward."""
    if kind not in METRICS:
        raise ValueError(f"algorithm.reward must be one of {sorted(METRICS)}, got {kind!r}")
    return METRICS[kind](pred, golds)
