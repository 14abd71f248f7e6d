"""zs_ray.data.real / `zs-ray data real`: readers, dedup, disjoint split, bad rows, and the real data."""
import json
import os
import time

import pytest

from zs_ray.core.reward import normalize_answer
from zs_ray.data import real as rd
from zs_ray.data.qa import DataError, load_dataset_files, load_rows, write_searchr1_parquet


def _jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


WORDS = ["apple", "river", "castle", "violin", "comet", "glacier", "harbor", "lantern", "meadow", "orchid"]


def _fake_shared(root, n=12):
    """A small copy of the shared data layout: every file, n questions each, one passage per answer."""
    for rel, (ds, kind) in rd.QUESTION_FILES.items():
        qs = [(f"what is the {ds} thing number {i} of {WORDS[i % 10]}", f"{ds}ans{i}") for i in range(n)]
        path = os.path.join(root, rel)
        if kind == "flashrag":
            _jsonl(path, [{"id": f"test_{i}", "question": q, "golden_answers": [a]} for i, (q, a) in enumerate(qs)])
        elif kind == "hotpotqa":
            _jsonl(path, [{"id": f"h{i}", "question": q, "answer": a, "type": "bridge"} for i, (q, a) in enumerate(qs)])
        else:
            _json(path, [{"question": q, "answer": a} for q, a in qs])
    for rel, ds in rd.PASSAGE_FILES.items():
        _jsonl(os.path.join(root, rel), [{"id": f"{ds}_{i}" if ds != "hotpotqa" else str(i),
                                          "contents": f'"{ds} {WORDS[i % 10]}"\nthe {ds} thing number {i} '
                                                      f'of {WORDS[i % 10]} is {ds}ans{i}'} for i in range(n)])
    return str(root)


# ---- readers and errors -----------------------------------------------------------------------

def test_readers_of_each_format(tmp_path):
    src = _fake_shared(tmp_path, n=3)
    hot = rd.read_questions(os.path.join(src, "qa/hotpotqa_distractor/hotpotqa_hard_dev300.jsonl"), "hotpotqa",
                            "hotpotqa")
    assert [(q.id, q.golds) for q in hot] == [("h0", ["hotpotqaans0"]), ("h1", ["hotpotqaans1"]),
                                              ("h2", ["hotpotqaans2"])]
    pairs = rd.read_questions(os.path.join(src, "qa/qa_pairs/musique_dev.json"), "musique", "qa_pairs")
    assert pairs[1].id == "dev_1" and pairs[1].source == "musique" and pairs[1].golds == ["musiqueans1"]
    fr = rd.read_questions(os.path.join(src, "qa/flashrag_format/nq_test_sub1000.jsonl"), "nq", "flashrag")
    assert fr[2].id == "test_2" and fr[2].question.endswith("?")
    # Search-R1 parquet (what `zs-ray download zerosearch-dataset` fetches): data_source per row.
    rows = [{"data_source": ds, "prompt": [{"role": "user", "content": "Question: x"}],
             "reward_model": {"ground_truth": {"target": [f"a{i}"]}}, "question": f"q {ds} {i}",
             "golden_answers": [f"a{i}"], "extra_info": {"split": "train", "index": i}}
            for i, ds in enumerate(["nq", "hotpotqa"])]
    write_searchr1_parquet(rows, str(tmp_path / "dl" / "train.parquet"))
    pq = rd.read_questions(str(tmp_path / "dl" / "train.parquet"), "", "parquet")
    assert [(q.source, q.question, q.golds, q.train_only) for q in pq] == [
        ("nq", "q nq 0", ["a0"], True), ("hotpotqa", "q hotpotqa 1", ["a1"], True)]
    ps = rd.read_passages(os.path.join(src, "derived/hotpotqa_hard_dev300_paragraphs.jsonl"), "hotpotqa")
    assert ps[0]["id"] == "hotpotqa_0" and ps[0]["contents"].startswith('"hotpotqa')


@pytest.mark.parametrize("kind,rel,rows,needle", [
    ("hotpotqa", "h.jsonl", [{"id": "a", "question": "q?", "answer": "x"}, {"id": "b", "question": "q2"}],
     "row 1: field 'answer': missing"),
    ("hotpotqa", "h.jsonl", [{"id": "a", "question": "q?", "answer": "x"}, '{"id": "b", broken'],
     "line 2 (row 1): not JSON"),
    ("qa_pairs", "p.json", [{"question": "q", "answer": "x"}, {"question": "", "answer": "y"}],
     "row 1: field 'question': must be a non-empty string"),
    ("qa_pairs", "p.json", [{"question": "q", "answer": [""]}], "row 0: field 'answer'"),
    ("qa_pairs", "p.json", {"question": "q"}, "expected a JSON list"),
    ("flashrag", "nq_test.jsonl", [{"id": "t0", "question": "q", "golden_answers": "x"}],
     "row 0: field 'golden_answers': must be a list"),
])
def test_bad_rows_name_file_and_row(tmp_path, kind, rel, rows, needle):
    path = str(tmp_path / rel)
    _json(path, rows) if rel.endswith(".json") else _jsonl(path, rows)
    with pytest.raises(DataError) as e:
        rd.read_questions(path, "src", kind)
    assert path in str(e.value) and needle in str(e.value)


def test_bad_passage_row_and_missing_inputs(tmp_path):
    path = str(tmp_path / "p.jsonl")
    _jsonl(path, [{"id": "a", "contents": "x"}, {"id": "b"}])
    with pytest.raises(DataError, match=r"p\.jsonl: row 1: field 'contents': missing"):
        rd.read_passages(path, "nq")
    with pytest.raises(DataError, match="source folder not found"):
        rd.find_inputs([str(tmp_path / "absent")])
    with pytest.raises(DataError, match="neither the shared data layout"):
        rd.find_inputs([str(tmp_path)])
    src = _fake_shared(tmp_path / "s", n=2)
    os.remove(os.path.join(src, "qa/qa_pairs/musique_dev.json"))
    with pytest.raises(DataError, match=r"musique_dev\.json: file not found"):
        rd.find_inputs([src])


# ---- dedup and split --------------------------------------------------------------------------

def _q(src, i, text, train_only=False):
    return rd.Question(src, f"t{i}", text, [f"a{i}"], "f.jsonl", i, train_only)


def test_dedup_on_normalised_text():
    qs = [_q("nq", 0, "Who is the King?"), _q("nq", 1, "who is  king"), _q("nq", 2, "Who is a queen?")]
    kept, dropped = rd.dedup(qs)
    assert [q.id for q in kept] == ["t0", "t2"] and dropped == 1


def test_split_is_disjoint_seeded_and_per_source():
    by = {"nq": [_q("nq", i, f"nq question {i}") for i in range(50)],
          "hotpotqa": [_q("hotpotqa", i, f"hq question {i}") for i in range(30)]
                      + [_q("hotpotqa", 99, "NQ question 3!")],  # same text as an nq question
          "musique": [_q("musique", i, f"mu question {i}") for i in range(20)]}
    sizes = {"nq": 10, "hotpotqa": 5, "musique": None}
    test, train, counts = rd.split_questions(by, sizes, ["nq", "hotpotqa"], seed=0)
    assert {s: len(v) for s, v in test.items()} == {"nq": 10, "hotpotqa": 5, "musique": 20}
    assert "musique" not in train and counts["musique"]["train"] == 0
    test_keys = {normalize_answer(q.question) for qs in test.values() for q in qs}
    train_keys = [normalize_answer(q.question) for qs in train.values() for q in qs]
    assert not test_keys & set(train_keys) and len(train_keys) == len(set(train_keys))
    assert len(train["nq"]) + len(train["hotpotqa"]) + counts["nq"]["dropped_as_in_test_or_other_train"] \
        + counts["hotpotqa"]["dropped_as_in_test_or_other_train"] == 50 + 31 - 15
    again, _, _ = rd.split_questions(by, sizes, ["nq", "hotpotqa"], seed=0)
    assert [q.id for q in again["nq"]] == [q.id for q in test["nq"]]
    # A source's draw does not depend on the other sources present.
    alone, _, _ = rd.split_questions({"nq": by["nq"]}, sizes, ["nq"], seed=0)
    assert [q.id for q in alone["nq"]] == [q.id for q in test["nq"]]
    other, _, _ = rd.split_questions(by, sizes, ["nq", "hotpotqa"], seed=1)
    assert [q.id for q in other["nq"]] != [q.id for q in test["nq"]]


def test_train_only_rows_never_go_to_test():
    qs = [_q("nq", i, f"question {i}", train_only=i < 8) for i in range(10)]
    test, train, _ = rd.split_questions({"nq": qs}, {"nq": 5}, ["nq"], seed=0)
    assert sorted(q.id for q in test["nq"]) == ["t8", "t9"] and len(train["nq"]) == 8


def test_contains_answer_is_whole_words():
    assert rd.contains_answer("Oslo: the capital of Norway", ["norway"])
    assert not rd.contains_answer("north of the river", ["No"])
    assert not rd.contains_answer("anything", ["!!"])


# ---- the whole command ------------------------------------------------------------------------

def test_prepare_on_synthetic_layout(tmp_path, capsys):
    from jobs.data import main

    src = _fake_shared(tmp_path / "src", n=12)
    out = str(tmp_path / "out")
    assert main(["real", "--src", src, "--out", out, "--test-size", "nq=4", "--test-size", "musique=all"]) == 0
    printed = capsys.readouterr().out
    assert "musique" in printed and "no passages in the corpus" in printed
    m = json.load(open(os.path.join(out, "manifest.json")))
    ps = m["per_source"]
    assert ps["nq"]["test"] == 4 and ps["nq"]["train"] == 8
    assert ps["musique"]["test"] == 12 and ps["musique"]["train"] == 0 and not ps["musique"]["has_passages"]
    assert ps["bamboogle"]["test"] == 12 and ps["bamboogle"]["train"] == 0 and ps["bamboogle"]["has_passages"]
    assert ps["hotpotqa"]["bm25_recall@3"] == 1.0  # every answer is in a passage that repeats its question
    assert m["totals"]["corpus"] == 5 * 12 and len(m["inputs"]) == 12
    assert all(len(i["sha256"]) == 64 for i in m["inputs"])
    rows = load_dataset_files([os.path.join(out, "train.parquet"), os.path.join(out, "test.parquet")])
    assert len(rows) == m["totals"]["train"] + m["totals"]["test"]
    assert os.path.isfile(os.path.join(out, "bm25", "zs_index_meta.json"))
    # A bad row anywhere stops the command with the file and row.
    _jsonl(os.path.join(src, "derived/wiki18_e5top3_pool_nq.jsonl"), [{"id": "x", "contents": 3}])
    assert main(["real", "--src", src, "--out", out]) == 2
    assert "wiki18_e5top3_pool_nq.jsonl: row 0: field 'contents'" in capsys.readouterr().err


def test_download_folder_combines_with_shared_layout(tmp_path):
    src = _fake_shared(tmp_path / "src", n=6)
    dl = tmp_path / "dl"
    rows = [{"data_source": "nq", "prompt": [{"role": "user", "content": "Question: x"}], "id": f"train_{i}",
             "reward_model": {"ground_truth": {"target": [f"a{i}"]}}, "question": f"download nq {i}",
             "golden_answers": [f"a{i}"], "extra_info": {"split": "train", "index": i}} for i in range(5)]
    write_searchr1_parquet(rows, str(dl / "train.parquet"))
    m = rd.prepare([str(dl), src], str(tmp_path / "out"), test_sizes={"nq": 2})
    assert m["per_source"]["nq"]["read"] == 11 and m["per_source"]["nq"]["test"] == 2
    test = load_rows(str(tmp_path / "out" / "test.parquet"))
    assert not any(r["question"].startswith("download") for r in test)


# ---- the real shared data ---------------------------------------------------------------------

def test_real_shared_data(tmp_path):
    src = rd.default_src()
    if not os.path.isdir(os.path.join(src, "qa")):
        pytest.skip(f"real data not available: {src} (set ${rd.ENV_VAR} or provide <repo>/../shared/data)")
    t0 = time.time()
    m = rd.prepare([src], str(tmp_path))
    ps = m["per_source"]
    assert {s: ps[s]["test"] for s in rd.SOURCES} == {
        "nq": 200, "triviaqa": 200, "popqa": 200, "hotpotqa": 200, "2wikimultihopqa": 200, "musique": 200,
        "bamboogle": 125}
    assert {s: ps[s]["read"] for s in rd.SOURCES} == {
        "nq": 1000, "triviaqa": 1000, "popqa": 1000, "hotpotqa": 300, "2wikimultihopqa": 12576,
        "musique": 2417, "bamboogle": 125}
    for s in ("nq", "triviaqa", "popqa", "hotpotqa"):
        assert ps[s]["train"] == ps[s]["read"] - ps[s]["duplicates_dropped"] - 200 \
            - ps[s]["dropped_as_in_test_or_other_train"] > 0
        assert ps[s]["has_passages"] and ps[s]["bm25_recall@3"] > 0.3, (s, ps[s])
    for s in ("bamboogle", "2wikimultihopqa", "musique"):
        assert ps[s]["train"] == 0
    assert not ps["2wikimultihopqa"]["has_passages"] and not ps["musique"]["has_passages"]
    train = load_rows(m["outputs"]["train"])
    test = load_rows(m["outputs"]["test"])
    assert len(train) == m["totals"]["train"] and len(test) == m["totals"]["test"] == 1325
    assert {r["data_source"] for r in train} == {"nq", "triviaqa", "popqa", "hotpotqa"}
    assert not {normalize_answer(r["question"]) for r in train} & {normalize_answer(r["question"]) for r in test}
    assert all(r["golden_answers"] and r["question"] for r in train + test)
    assert time.time() - t0 < 60
