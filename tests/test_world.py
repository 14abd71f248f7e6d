"""The synthetic knowledge world: determinism, splits, gold passages, formats, demonstrations."""
import hashlib
import json
import os
import re

import pytest

from zs_ray.core import protocol, reward
from zs_ray.world.files import build_world, load_world
from zs_ray.world.prior_texts import PRETRAIN_SEPARATOR, pretrain_texts, warmstart_demos
from zs_ray.world.world import NAME_SYLLABLES, SOURCE_1HOP, SOURCE_2HOP, VALUE_SYLLABLES, make_world

SMALL = dict(n_entities=60, n_test_entities=20, n_pretrain=50)
SEARCHR1_COLUMNS = ["id", "question", "golden_answers", "data_source", "prompt", "ability", "reward_model",
                    "extra_info"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return build_world(str(out), seed=3, **SMALL)


@pytest.fixture(scope="module")
def world(built):
    return load_world(os.path.dirname(built["corpus"]))


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _norm_words(text):
    return " " + reward.normalize_answer(text) + " "


def _turns(response):
    """The policy's own turns: the response split at the environment's information blocks."""
    return re.split(r"\n\n<information>.*?</information>\n\n", response, flags=re.DOTALL)


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    again = build_world({"out_dir": str(tmp_path / "a"), "seed": 3, **SMALL})
    for key in built:
        assert _sha(built[key]) == _sha(again[key]), key
    other = build_world(str(tmp_path / "b"), seed=4, **SMALL)
    assert _sha(other["corpus"]) != _sha(built["corpus"])


def test_unknown_parameter_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown world parameters"):
        build_world(str(tmp_path), n_entitys=10)


def test_syllables_are_distinct_and_survive_normalisation():
    assert len(NAME_SYLLABLES) == 50 and len(VALUE_SYLLABLES) == 50
    assert not set(NAME_SYLLABLES) & set(VALUE_SYLLABLES)
    for s in NAME_SYLLABLES + VALUE_SYLLABLES:
        assert reward.normalize_answer(s) == s


def test_train_and_test_entities_are_disjoint(world):
    def mentioned(split):
        return {name for q in world.split(split) for name, _ in q.hops}

    assert world.split("train") and world.split("test")
    assert not mentioned("train") & mentioned("test")
    # facts link entities of the same pool only, so no test chain reaches a train entity
    for e in world.entities:
        for attr in ("founder", "neighbour"):
            if attr in e.facts:
                assert world.entity(e.facts[attr]).pool == e.pool


def test_gold_answer_is_in_exactly_its_gold_passage(world):
    for q in world.questions:
        ans = _norm_words(q.answers[0])
        holders = [p["id"] for p in world.passages if ans in _norm_words(p["contents"])]
        assert holders == [q.gold_passage_ids[-1]], (q, holders)
        name, attr = q.hops[-1]
        assert world.facts_for(name)[attr] == q.answers[0]
        assert world.passage_for(name)["id"] == q.gold_passage_ids[-1]
        assert protocol.normalize_question(q.question) == q.question


def test_two_hop_questions_need_two_passages(world):
    two = [q for q in world.questions if q.data_source == SOURCE_2HOP]
    assert two and any(q.data_source == SOURCE_1HOP for q in world.questions)
    for q in two:
        (place, rel), (person, attr) = q.hops
        assert world.facts_for(place)[rel] == person
        assert len(set(q.gold_passage_ids)) == 2
        # the first passage names the bridge entity but does not hold the answer
        assert person in world.passage(q.gold_passage_ids[0])["contents"]
        assert _norm_words(q.answers[0]) not in _norm_words(world.passage(q.gold_passage_ids[0])["contents"])


def test_corpus_and_parquet_formats(built, world):
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(built["corpus"])]
    assert len(rows) == len(world.passages) and all(set(r) == {"id", "contents"} for r in rows)
    assert all(r["contents"].split("\n")[0].startswith('"') for r in rows)
    for split in ("train", "test"):
        t = pq.read_table(built[split])
        assert t.column_names == SEARCHR1_COLUMNS
        r = t.slice(0, 1).to_pylist()[0]
        assert r["id"] == f"{split}_0" and r["ability"] == "fact-reasoning"
        assert r["data_source"] in (SOURCE_1HOP, SOURCE_2HOP)
        assert r["prompt"] == [{"content": protocol.make_prompt(r["question"]), "role": "user"}]
        assert r["reward_model"] == {"ground_truth": {"target": r["golden_answers"]}, "style": "rule"}
        assert r["extra_info"] == {"index": 0, "split": split}
        assert t.num_rows == len(world.split(split))


def test_parquet_schema_matches_searchr1_release(built, shared_data):
    import pyarrow.parquet as pq

    ref = pq.read_schema(shared_data("searchr1_format", "nq_search_test.parquet"))
    ours = pq.read_schema(built["train"])
    assert ours.remove_metadata().equals(ref.remove_metadata())


def test_warmstart_demos_parse_and_score(built, world):
    demos = warmstart_demos(world, "train", with_segments=True)
    assert len(demos) == len(world.split("train"))
    for q, prompt, segs in demos:
        response = "".join(t for t, _ in segs)
        turns = _turns(response)
        assert len(turns) == len(q.hops) + 1
        for (name, attr), turn in zip(q.hops, turns):
            assert protocol.parse_action(turn) == protocol.Action("search", f"{name} {attr}")
        last = protocol.parse_action(turns[-1])
        assert last.kind == "answer" and reward.exact_match(last.content, q.answers) == 1.0
        assert reward.score_response(response, q.answers)["em"] == 1.0
        assert prompt == protocol.make_prompt(q.question)
        # every search shows its gold passage among the documents
        infos = [t for t, env in segs if env]
        for pid, info in zip(q.gold_passage_ids, infos):
            assert world.passage(pid)["contents"].split("\n", 1)[1] in info
            assert info.count("Doc ") == world.params.topk
    rows = [json.loads(line) for line in open(built["warmstart"])]
    assert [r["response"] for r in rows] == ["".join(t for t, _ in s) for _, _, s in demos]
    assert {r["n_searches"] for r in rows} == {1, 2}


def test_pretrain_drills_use_throwaway_entities(built, world):
    texts = open(built["pretrain"]).read().split(PRETRAIN_SEPARATOR)
    assert len(texts) == SMALL["n_pretrain"] == len(list(pretrain_texts(SMALL["n_pretrain"], 3)))
    assert texts[0].startswith("Question: ") and "<information>Doc 1: " in texts[0]
    for text in texts:
        turns = _turns(text.split("\n", 1)[1])
        assert protocol.parse_action(turns[-1]).kind == "answer"
    # the drills never state a fact of the real world (nothing to memorise about test entities)
    real = {f"{n} {a} is {v} ." for n, a, v in world.facts if a not in ("founder", "neighbour")}
    drill_facts = set(re.findall(r"[a-z]+ [a-z]+ [a-z]+ is [a-z0-9 ]+? \.", " ".join(texts)))
    assert drill_facts and not real & drill_facts


def test_generation_is_fast_at_default_size():
    import time

    t = time.perf_counter()
    w = make_world()
    assert time.perf_counter() - t < 2.0
    assert sum(e.role == "question" and e.pool == "train" for e in w.entities) == 1000
    assert sum(e.role == "question" and e.pool == "test" for e in w.entities) == 100


def test_tokenizer_round_trips_a_demonstration(world, tmp_path):
    from zs_ray.world.files import tokenizer_texts
    from zs_ray.world.tiny_models import train_tokenizer

    tok = train_tokenizer(tokenizer_texts(world), str(tmp_path / "tok"), vocab_size=700)
    prompt, response = warmstart_demos(world, "train")[0]
    text = prompt + response
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    for s in NAME_SYLLABLES + VALUE_SYLLABLES:
        assert len(tok(" " + s)["input_ids"]) == 1, s
    for d in "0123456789":
        assert len(tok(" " + d)["input_ids"]) == 1


def test_pretrain_recall_questions_are_answered_by_the_shown_documents():
    for text in pretrain_texts(40, seed=5):
        info = "".join(re.findall(r"<information>(.*?)</information>", text, re.DOTALL))
        extra = re.findall(r"\nQuestion: what is the (\w+) of (\w+ \w+)\?\n<think> (.*?) </think> <answer> (.*?) </answer>",
                           text)
        assert len(extra) >= 1
        for attr, name, sentence, value in extra:
            assert sentence == f"{name} {attr} is {value} ." and sentence in info  # copyable from context


def test_hops_reach_the_simulator_questions(built):
    """quickstart.with_hops: the parquet rows get the world's hops; a two-hop row's first hop asks for the
    bridge (the place's founder), as simulator_sft.hop_aware labels it."""
    from zs_ray.data.qa import load_rows
    from zs_ray.sft.simulator_data import hop_queries
    from zs_ray.world.quickstart import with_hops

    wdir = os.path.dirname(built["corpus"])
    world = load_world(wdir)
    rows = with_hops(load_rows(built["train"]), wdir)
    two = [r for r in rows if r["data_source"] == SOURCE_2HOP]
    assert two and all(len(r["hops"]) == 1 for r in rows if r["data_source"] == SOURCE_1HOP)
    for r in two[:10]:
        (place, attr), (founder, _) = r["hops"]
        first, last = hop_queries(r)
        assert first == (f"{place} {attr}", [founder]) and world.facts_for(place)[attr] == founder
        assert last[1] == r["golden_answers"]
    with pytest.raises(ValueError, match="questions.jsonl has no entry"):
        with_hops([{"id": "nope", "question": "q"}], wdir)
