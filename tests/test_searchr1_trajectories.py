"""Our parser and metrics on 125 real Search-R1 rollouts (Qwen2.5-3B GRPO, Bamboogle, e5 top-3).

The recorded scores (metric_score.txt: em 0.088, acc 0.096, f1 0.172; "acc" is cover-EM) must be
reproduced exactly from the response text alone — the answer read from `final_response`, never from
the prompt (`output.query` holds the demo `<answer> Beijing </answer>`).
"""
import json
import re

import pytest
from conftest import shared_path

from zs_ray.core.protocol import parse_action
from zs_ray.core.reward import extract_answer, score_answer

_INFO = re.compile(r"<information>.*?</information>", re.DOTALL)


@pytest.fixture(scope="module")
def rollouts():
    with open(shared_path("trajectories", "searchr1_3b_base_grpo_bamboogle_intermediate_data.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def recorded():
    out = {}
    with open(shared_path("trajectories", "searchr1_3b_base_grpo_bamboogle_metric_score.txt")) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = float(v)
    return out


def test_corpus_level_scores_reproduce_exactly(rollouts, recorded):
    assert len(rollouts) == 125
    totals = {"em": 0.0, "cover_em": 0.0, "f1": 0.0}
    for r in rollouts:
        s = score_answer(extract_answer(r["output"]["final_response"]), r["golden_answers"])
        for k in totals:
            totals[k] += s[k]
    means = {k: v / len(rollouts) for k, v in totals.items()}
    assert means["em"] == pytest.approx(recorded["em"], abs=1e-12)
    assert means["cover_em"] == pytest.approx(recorded["acc"], abs=1e-12)
    assert means["f1"] == pytest.approx(recorded["f1"], abs=1e-12)


def test_every_row_matches_its_recorded_prediction_and_scores(rollouts):
    for r in rollouts:
        out = r["output"]
        pred = extract_answer(out["final_response"])
        assert pred == out["pred"], r["id"]
        s = score_answer(pred, r["golden_answers"])
        rec = out["metric_score"]
        assert (s["em"], s["cover_em"]) == (rec["em"], rec["acc"]), r["id"]
        assert s["f1"] == pytest.approx(rec["f1"], abs=1e-12), r["id"]


def test_answer_comes_from_the_response_not_the_prompt(rollouts):
    # The reference bug: reading prompt + response. The prompt's demo answer must never leak in.
    for r in rollouts:
        assert extract_answer(r["output"]["query"]) == "Beijing"
        assert extract_answer(r["output"]["final_response"]) != "Beijing" or "Beijing" in r["golden_answers"]


def test_turn_by_turn_actions_parse(rollouts):
    """Split each rollout at the environment's <information> blocks: every policy turn before one
    must parse as a search (with the query the text shows), and the last turn as the answer."""
    n_searches = 0
    for r in rollouts:
        text = r["output"]["final_response"]
        turns = _INFO.split(text)
        assert len(turns) == text.count("<information>") + 1
        for turn in turns[:-1]:
            a = parse_action(turn)
            assert a.kind == "search", (r["id"], turn[-200:])
            assert turn.rstrip().endswith("</search>")  # the engine stopped at the stop string
            assert a.content == re.search(r"<search>(.*?)</search>", turn, re.DOTALL).group(1).strip()
            assert a.content and not a.truncated
            n_searches += 1
        last = parse_action(turns[-1])
        assert r["output"]["stop_reason"] == "stop" and r["output"]["stop_matched_text"] == "</answer>"
        assert last.kind == "answer" and last.content == r["output"]["pred"], r["id"]
    # This policy searched exactly once per question on Bamboogle.
    assert n_searches == sum(r["output"]["final_response"].count("<search>") for r in rollouts) == 125
