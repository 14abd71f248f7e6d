"""zs_ray.data.qa: real Search-R1 / FlashRAG files, validation errors, prompt ids."""
import json

import pytest
from conftest import shared_path

from zs_ray.core import protocol
from zs_ray.data.qa import (DataError, golds_of, load_dataset_files, load_rows, names_from_path, question_of,
                            write_searchr1_parquet)

NQ_PARQUET = ("searchr1_format", "nq_search_test.parquet")
BAMBOOGLE = ("qa", "flashrag_format", "bamboogle_test.jsonl")
NQ_SUB = ("qa", "flashrag_format", "nq_test_sub1000.jsonl")


# ---- real files ----------------------------------------------------------------------------

def test_nq_parquet_loads_unchanged():
    path = shared_path(*NQ_PARQUET)
    import pyarrow.parquet as pq

    raw = pq.read_table(path).to_pylist()
    rows = load_rows(path)
    assert len(rows) == 3610
    for r, orig in zip(rows, raw):  # unchanged apart from the added prompt_id
        assert {k: v for k, v in r.items() if k != "prompt_id"} == orig
    r0 = rows[0]
    assert r0["prompt"][0]["content"] == protocol.make_prompt(r0["question"])
    # Our template is Search-R1's: it reproduces every prompt of the released file.
    assert all(r["prompt"][0]["content"] == protocol.make_prompt(r["question"]) for r in rows)
    assert question_of(r0) == "who got the first nobel prize in physics?"
    assert golds_of(r0) == ["Wilhelm Conrad Röntgen"]
    ids = [r["prompt_id"] for r in rows]
    assert len(set(ids)) == 3610 and ids[0] == "nq/test/test_0"


def test_bamboogle_flashrag_converts():
    rows = load_rows(shared_path(*BAMBOOGLE))
    assert len(rows) == 125
    r = rows[0]
    assert r["data_source"] == "bamboogle" and r["ability"] == "fact-reasoning"
    assert r["prompt"] == [{"role": "user", "content": protocol.make_prompt(r["question"])}]
    assert r["reward_model"] == {"style": "rule", "ground_truth": {"target": r["golden_answers"]}}
    assert r["extra_info"] == {"split": "test", "index": 0}
    assert golds_of(r) == ["james madison"]
    assert len({x["prompt_id"] for x in rows}) == 125


def test_flashrag_question_gets_question_mark():
    rows = load_rows(shared_path(*NQ_SUB))
    assert len(rows) == 1000
    assert all(r["question"].endswith("?") for r in rows)
    assert rows[0]["prompt_id"] == "nq/test/test_3283"


def test_multi_file_concat_and_cross_file_collision():
    nq, bam, nq_sub = shared_path(*NQ_PARQUET), shared_path(*BAMBOOGLE), shared_path(*NQ_SUB)
    rows = load_dataset_files([nq, bam])
    assert len(rows) == 3735 and len({r["prompt_id"] for r in rows}) == 3735
    # The same NQ questions loaded twice is a collision, reported with both files.
    with pytest.raises(DataError) as e:
        load_dataset_files([nq, nq_sub])
    msg = str(e.value)
    assert "nq_test_sub1000.jsonl: row 0: field 'prompt_id'" in msg and "nq_search_test.parquet row 3283" in msg


def test_same_local_ids_in_two_sources_do_not_collide(tmp_path):
    # The reference's per-source index collided across sources; prompt ids include the source.
    a, b = tmp_path / "nq_train.jsonl", tmp_path / "hotpotqa_train.jsonl"
    for p in (a, b):
        p.write_text(json.dumps({"id": "train_0", "question": "q", "golden_answers": ["x"]}) + "\n")
    rows = load_dataset_files([str(a), str(b)])
    assert [r["prompt_id"] for r in rows] == ["nq/train/train_0", "hotpotqa/train/train_0"]


def test_write_parquet_round_trip(tmp_path):
    rows = load_rows(shared_path(*BAMBOOGLE))
    out = tmp_path / "bamboogle.parquet"
    write_searchr1_parquet(rows, str(out))
    assert load_rows(str(out)) == rows


def test_names_from_path():
    assert names_from_path("x/bamboogle_test.jsonl") == ("bamboogle", "test")
    assert names_from_path("nq_test_sub1000.jsonl") == ("nq", "test")
    assert names_from_path("data/hotpotqa/dev.jsonl") == ("hotpotqa", "dev")
    assert names_from_path("mystuff.jsonl") == ("mystuff", None)


def test_question_from_prompt_when_column_missing():
    row = {"prompt": [{"role": "user", "content": protocol.make_prompt("who is it")}],
           "golden_answers": ["a"]}
    assert question_of(row) == "who is it?"
    assert golds_of(row) == ["a"]


# ---- bad inputs ----------------------------------------------------------------------------

def _jsonl(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


GOOD = {"id": "q0", "question": "who?", "golden_answers": ["x"]}


@pytest.mark.parametrize("bad,row_idx,field", [
    ({"id": "q1", "golden_answers": ["x"]}, 1, "question"),                    # missing field
    ({"id": "q1", "question": "who?", "golden_answers": []}, 1, "golden_answers"),  # empty golds
    ({"id": "q1", "question": "who?", "golden_answers": "x"}, 1, "golden_answers"),  # not a list
    ({"id": "q1", "question": "who?", "golden_answers": [1, 2]}, 1, "golden_answers"),  # not str
    ({"id": "q0", "question": "again?", "golden_answers": ["y"]}, 1, "id"),        # duplicate id
])
def test_bad_flashrag_rows(tmp_path, bad, row_idx, field):
    path = _jsonl(tmp_path, "bad_test.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as e:
        load_rows(path)
    msg = str(e.value)
    assert path in msg and f"row {row_idx}" in msg and f"field '{field}'" in msg


def test_all_problems_reported_at_once(tmp_path):
    rows = [GOOD, {"id": "a", "question": "q"}, {"id": "b", "golden_answers": []}, GOOD]
    path = _jsonl(tmp_path, "many_test.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_rows(path)
    msg = str(e.value)
    assert "row 1: field 'golden_answers'" in msg
    assert "row 2: field 'question'" in msg and "row 2: field 'golden_answers'" in msg


def _searchr1_row(i, **over):
    row = {"data_source": "nq", "prompt": [{"role": "user", "content": protocol.make_prompt(f"q{i}")}],
           "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {"target": ["a"]}},
           "extra_info": {"split": "train", "index": i}, "question": f"q{i}?", "golden_answers": ["a"]}
    row.update(over)
    return row


@pytest.mark.parametrize("over,field", [
    ({"reward_model": {"style": "rule", "ground_truth": {"target": []}}}, "reward_model.ground_truth.target"),
    ({"data_source": None}, "data_source"),
    ({"extra_info": {"split": "train", "index": 0}}, "extra_info.index"),  # duplicate index -> prompt id
])
def test_bad_parquet_rows(tmp_path, over, field):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist([_searchr1_row(0), _searchr1_row(1, **over)]), path)
    with pytest.raises(DataError) as e:
        load_rows(path)
    msg = str(e.value)
    assert path in msg and "row 1" in msg and f"field '{field}'" in msg


def test_parquet_target_wrong_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "badtype.parquet")
    rows = [_searchr1_row(0), _searchr1_row(1)]
    for r in rows:
        r["reward_model"]["ground_truth"]["target"] = "a"  # a bare string, not a list of strings
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError) as e:
        load_rows(path)
    assert "row 0: field 'reward_model.ground_truth.target'" in str(e.value)


def test_not_parquet_missing_and_unknown(tmp_path):
    fake = tmp_path / "fake.parquet"
    fake.write_text('{"id": "q0"}\n')
    for path, words in [(str(fake), "not a parquet"), (str(tmp_path / "nope.jsonl"), "not found"),
                        (str(tmp_path / "x.csv"), "not found")]:
        with pytest.raises(DataError) as e:
            load_rows(path)
        assert path in str(e.value) and words in str(e.value)
    csv = tmp_path / "x.csv"
    csv.write_text("id,question\n")
    with pytest.raises(DataError, match="unknown data file extension"):
        load_rows(str(csv))
    bad_json = tmp_path / "broken_test.jsonl"
    bad_json.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(DataError, match="line 2"):
        load_rows(str(bad_json))
