"""Simulator SFT: pairs, labels, balance, the dataset file, and a short real fine-tune on a tiny world.

The tiny world: made-up countries, one fact each ("The capital of X is Y") plus two filler documents
per country. `test_sft_learns_useful_vs_noisy`: 24 countries, 300 steps, evaluated on fresh sampled
generations for the SAME entities (a 2-layer model trained this briefly memorises facts: 0 % on held-out
ones). `test_sft_copies_the_answer_for_held_out_questions`: the simulator's acceptance at a smaller scale,
400 countries, 3,000 steps, 100 held-out countries no SFT row mentions.
"""
import functools
import json
import os
import random

import pytest

from zs_ray.sft import simulator_data as D
from zs_ray.sft import simulator_sft as S

SYL = ["ka", "ro", "vi", "tel", "mun", "sa", "dor", "pe", "lin", "qua", "zen", "bo", "ri", "mas", "tu", "ge"]
FILLERS = ["famous for its old bridges and quiet rivers", "known for wool trade and mountain roads",
           "home to a large harbour and fishing boats", "noted for its painted houses and festivals"]
K = 3
N_ENTITIES = 24


def build_world(out_dir: str, n: int = 40, seed: int = 0):
    """(corpus jsonl path, questions, texts) of a synthetic world with one fact per entity."""
    rng = random.Random(seed)
    lands, cities = set(), set()
    while len(lands) < n:
        lands.add("".join(rng.sample(SYL, 2)) + rng.choice(["land", "ia", "stan"]))
    while len(cities) < n:
        cities.add("".join(rng.sample(SYL, 3)))
    corpus, questions = [], []
    for i, (land, city) in enumerate(zip(sorted(lands), sorted(cities))):
        corpus.append({"id": f"{i}a", "contents": f"{land}\nThe capital of {land} is {city} ."})
        for j, f in enumerate(rng.sample(FILLERS, 2)):
            corpus.append({"id": f"{i}b{j}", "contents": f"{land}\n{land} is {f} ."})
        questions.append({"question": f"What is the capital of {land}?", "golden_answers": [city],
                          "data_source": "tiny_world"})
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "corpus.jsonl")
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in corpus)
    return path, questions, [r["contents"].replace("\n", " ") for r in corpus]


def keyword_query(question, rng):
    return D.default_queries(question, rng)[:2]  # the question, and "capital X" (its content words)


def _tiny_llama(tok_dir: str, out_dir: str) -> str:
    """hidden 64, 2 layers, head_dim 32: vLLM's CPU attention has no kernel for head_dim 16
    (tiny_models' "test" size), and this is small enough to fine-tune in well under a minute."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


@functools.lru_cache(maxsize=1)
def trained_simulator(base_dir: str) -> dict:
    """Tiny world + tokenizer + a simulator fine-tuned on it (once per test process)."""
    from zs_ray.search.retrieval import BM25Index
    from zs_ray.world.tiny_models import train_tokenizer

    corpus, questions, texts = build_world(os.path.join(base_dir, "world"), n=N_ENTITIES)
    # A tokenizer of this world: names become single tokens, sequences stay short (fast SFT).
    train_tokenizer((texts + [q["question"] for q in questions]) * 5, os.path.join(base_dir, "tok"), vocab_size=1000)
    base = _tiny_llama(os.path.join(base_dir, "tok"), os.path.join(base_dir, "base"))
    pairs = D.pairs_from_corpus(BM25Index.build(corpus), questions, topk=K, query_fn=keyword_query)
    rows = D.label_and_balance(pairs)
    train = S.train_sft(base, rows, os.path.join(base_dir, "sft"), k=K, steps=300, batch_size=8, lr=1e-2,
                        warmup_steps=10, log_every=0)
    return dict(model=os.path.join(base_dir, "sft"), questions=questions, corpus=corpus, rows=rows, train=train)


@pytest.fixture(scope="module")
def sft_sim(tmp_path_factory):
    return trained_simulator(str(tmp_path_factory.getbasetemp() / "sft_sim"))


# ---------------------------------------------------------------- fast, pure ----------------------

def test_contains_answer_and_label():
    assert D.contains_answer("The capital is Karova.", ["karova"])
    assert not D.contains_answer("Karovan bread", ["karova"])  # word boundary
    assert D.answer_in_docs_label("q", ["Paris"], ["x", "It is the Paris of the east"]) == D.USEFUL
    assert D.answer_in_docs_label("q", ["Paris"], ["Lyon"]) == D.NOISY
    judge = D.judge_labeller(lambda prompt: "Yes." if "Paris" in prompt else "no")
    assert judge("q", ["x"], ["Paris"]) == D.USEFUL and judge("q", ["x"], ["Lyon"]) == D.NOISY


def test_default_queries_include_the_subject_first_form_the_policy_writes():
    qs = D.default_queries("what is the year of ze vo?", random.Random(0))
    assert qs[:3] == ["what is the year of ze vo?", "year ze vo", "ze vo year"]


def test_states_answer_needs_the_asked_entity_and_relation_in_the_sentence():
    q, golds = "what is the birthplace of za pi?", ["pil kam"]
    right = ["za pi: za pi year is 4 0 0 7 . za pi birthplace is pil kam .", "pa pi: pa pi year is 3 9 ."]
    assert D.states_answer(right, q, golds) and D.states_answer(right, "za pi birthplace", golds)
    garbled = ["za pi: ga pi birthplace is pil kam . ga pi year is 4 0 0 7 ."]  # contains it, about another name
    other_relation = ["za pi: za pi school is pil kam . za pi birthplace is ter din ."]
    split = ["za pi: za pi birthplace is", "pil kam ."]  # not one sentence
    for docs in (garbled, other_relation, split):
        assert D.contains_answer(" ".join(docs), golds) and not D.states_answer(docs, q, golds)


def test_lead_with_answer_ranks_documents_and_sentences():
    docs = ["ka ro: ka ro year is 1 2 . ka ro river is tel .", "vi sa: vi sa capital is mun . vi sa river is dor .",
            "no title here . the answer dor again ."]
    out = D.lead_with_answer(docs, ["dor"])
    # answer-bearing documents first, in their retrieved order; the one without keeps its text
    assert out == ["vi sa: vi sa river is dor . vi sa capital is mun .", "the answer dor again . no title here .",
                   "ka ro: ka ro year is 1 2 . ka ro river is tel ."]
    assert D.lead_with_answer(docs, ["nothing"]) == docs
    pairs = [dict(query="q", question="q", golden_answers=["dor"], docs=docs),
             dict(query="q", question="q", golden_answers=["zzz"], docs=docs)]
    useful = next(r for r in D.label_and_balance(pairs) if r["label"] == "useful")
    assert useful["docs"] == out
    kept = next(r for r in D.label_and_balance(pairs, answer_first=False) if r["label"] == "useful")
    assert kept["docs"] == docs


def _index_of(tmp_path, passages: list[str]):
    """A BM25 index over passages written as a corpus jsonl (ids 0, 1, ...)."""
    from zs_ray.search.retrieval import BM25Index

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "contents": c}) + "\n" for i, c in enumerate(passages)))
    return BM25Index.build(str(path))


@pytest.mark.parametrize("scan", [True, False], ids=["corpus-scan", "large-corpus-search"])
def test_answer_aware_pairs_give_multi_hop_questions_a_useful_result(tmp_path, monkeypatch, scan):
    """No passage retrieved for a two-hop question states its answer; the answer-aware pair does, and it is
    shown for the question itself (the query the policy would send)."""
    index = _index_of(tmp_path, ["kavo\nThe founder of kavo is rimas .", "rimas\nThe birthplace of rimas is telmun .",
                                 "kavo\nkavo is known for wool trade .", "dorpe\nThe birthplace of dorpe is sageri ."])
    q = [{"question": "What is the birthplace of the founder of kavo?", "golden_answers": ["telmun"]}]
    if not scan:  # a corpus over the scan limit: the answer-stating hits of a search for "question answer"
        monkeypatch.setattr(D, "ANSWER_SCAN_LIMIT", 0)
    plain = D.pairs_from_corpus(index, q, topk=2, answer_aware=False)
    assert plain and not any(D.contains_answer(" ".join(p["docs"]), ["telmun"]) for p in plain)
    aware = [p for p in D.pairs_from_corpus(index, q, topk=2) if p["source"] == "bm25_answer_aware"]
    assert len(aware) == 1 and aware[0]["query"] == q[0]["question"]
    assert D.contains_answer(aware[0]["docs"][0], ["telmun"]) and len(aware[0]["docs"]) == 2
    assert D.answer_in_docs_label(q[0]["question"], ["telmun"], aware[0]["docs"]) == D.USEFUL


def test_answer_aware_pairs_find_answers_bm25_cannot_search_for(tmp_path):
    """bm25s drops one-character tokens, so a year written digit by digit is invisible to a search for the
    answer; the answer-aware pair still leads with the passage stating it, then the question's own hits."""
    index = _index_of(tmp_path, ["kavo\nkavo founder is rimas . kavo year is 9 9 0 1 .",
                                 "rimas\nrimas year is 1 8 2 1 . rimas school is telmun .",
                                 "dorpe\ndorpe year is 1 8 2 2 ."])
    assert D.passages_stating(index, ["1 8 2 1", "rimas", "absent"]) == {"1 8 2 1": [1], "rimas": [0, 1]}
    q = [{"question": "what is the year of the founder of kavo?", "golden_answers": ["1 8 2 1"]}]
    aware = [p for p in D.pairs_from_corpus(index, q, topk=2) if p["source"] == "bm25_answer_aware"]
    assert len(aware) == 1 and aware[0]["docs"][0].startswith("rimas: rimas year is 1 8 2 1")
    assert aware[0]["docs"][1].startswith("kavo:")  # the bridge passage: the question's best BM25 hit


def test_hop_aware_pairs_label_each_query_by_the_hop_it_asks(tmp_path):
    """hop_aware: a first-hop query is useful when its documents name the bridge entity, the last hop's when
    they state the answer; the whole question counts as the first hop; no answer-aware pair for it."""
    index = _index_of(tmp_path, ["kavo\nkavo founder is rimas . kavo river is dorpe .",
                                 "rimas\nrimas year is 1 8 2 1 . rimas school is telmun .",
                                 "dorpe\ndorpe year is 1 8 2 2 . dorpe founder is sageri ."])
    q = {"question": "what is the year of the founder of kavo?", "golden_answers": ["1 8 2 1"],
         "hops": [["kavo", "founder"], ["rimas", "year"]]}
    assert D.hop_queries(q) == [("kavo founder", ["rimas"]), ("rimas year", ["1 8 2 1"])]
    assert D.hop_queries({**q, "hops": [["kavo", "founder"]]}) == [] and D.hop_queries({"question": "x"}) == []
    pairs = D.pairs_from_corpus(index, [q], topk=1, hop_aware=True)
    assert not any(p["source"] == "bm25_answer_aware" for p in pairs)
    rows = [dict(p, label=D.answer_in_docs_label(p["question"], p["targets"], p["docs"])) for p in pairs]
    top = {p["query"]: p for p in rows if p["source"] == "bm25"}
    assert top["kavo founder"]["targets"] == ["rimas"] and top["kavo founder"]["label"] == D.USEFUL
    assert top["rimas year"]["targets"] == ["1 8 2 1"] and top["rimas year"]["label"] == D.USEFUL
    assert top[q["question"]]["targets"] == ["rimas"] and top[q["question"]]["docs"][0].startswith("kavo")
    assert top[q["question"]]["label"] == D.USEFUL  # real search's first result names the bridge
    assert all(r["golden_answers"] == ["1 8 2 1"] for r in rows)  # the simulator's prompt keeps the final answer
    # without hop_aware the same first-hop documents are noisy (no final answer) and the answer-aware pair is back
    plain = D.pairs_from_corpus(index, [q], topk=1)
    assert any(p["source"] == "bm25_answer_aware" for p in plain)
    assert all("targets" not in p or p["targets"] == ["1 8 2 1"] for p in plain)
    balanced = D.label_and_balance(pairs, seed=0)
    assert all(D.contains_answer(" ".join(r["docs"]), r["targets"]) == (r["label"] == D.USEFUL) for r in balanced)


def test_pairs_from_trajectories_keep_own_question():
    trajs = [{"question": "Q1", "golden_answers": ["a1"], "search_calls": [{"query": "x", "docs": ["d a1"]},
                                                                          {"query": "y", "docs": []}]},
             {"question": "Q2", "reward_model": {"ground_truth": {"target": ["a2"]}},
              "search_calls": [{"query": "z", "docs": ["nothing"]}]}]
    pairs = D.pairs_from_trajectories(trajs)
    assert [(p["query"], p["question"], p["golden_answers"]) for p in pairs] == [("x", "Q1", ["a1"]), ("z", "Q2", ["a2"])]
    rows = D.label_and_balance(pairs)
    assert sorted(r["label"] for r in rows) == ["noisy", "useful"]


def test_balance_and_dataset_roundtrip(tmp_path):
    import datasets

    corpus, questions, _ = build_world(str(tmp_path / "w"), n=12)
    from zs_ray.search.retrieval import BM25Index
    pairs = D.pairs_from_corpus(BM25Index.build(corpus), questions, topk=K)
    rows = D.label_and_balance(pairs)
    n_useful = sum(r["label"] == "useful" for r in rows)
    assert n_useful == len(rows) // 2 and n_useful > 0
    assert all(D.contains_answer(" ".join(r["docs"]), r["golden_answers"]) == (r["label"] == "useful") for r in rows)
    path = D.write_sft_set(rows, str(tmp_path / "sft.parquet"))
    back = datasets.load_dataset("parquet", data_files=path, split="train")
    assert len(back) == len(rows) and set(back.column_names) >= {"query", "question", "docs", "label"}
    with pytest.raises(ValueError, match="one class is empty"):
        D.label_and_balance([p for p in pairs if D.contains_answer(" ".join(p["docs"]), p["golden_answers"])])


def test_sft_example_masks_prompt_and_weights_the_answer(tiny_assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets["tokenizer"])
    row = dict(query="q", question="Q?", golden_answers=["a"], docs=["one two", "three"], label="noisy")
    ids, weights = S.sft_example(tok, row, k=2)
    n_prompt = sum(w == 0 for w in weights)
    assert weights == [0.0] * n_prompt + [1.0] * (len(ids) - n_prompt)
    assert tok.decode(ids[:n_prompt]).rstrip().endswith("assistant")
    assert "Noisy Output:" in tok.decode(ids[:n_prompt])
    assert tok.decode(ids[n_prompt:]).startswith("Doc 1: one two\nDoc 2: three")
    assert ids[-1] == tok.eos_token_id
    useful = dict(row, golden_answers=["1 8 2 1"], docs=["ka ro: ka ro year is 1 8 2 1 .", "three"], label="useful")
    ids, weights = S.sft_example(tok, useful, k=2, answer_weight=5.0)
    heavy = [i for i, w in zip(ids, weights) if w == 5.0]
    assert tok.decode(heavy).split() == "1 8 2 1".split()  # the copied answer, nothing else
    assert weights.count(1.0) == len(ids) - weights.count(0.0) - len(heavy)
    # A hop-aware first-hop row: its documents name the bridge entity (its `targets`), not the final answer.
    hop = dict(useful, golden_answers=["tul mir"], targets=["ga po"], docs=["lo ke: lo ke founder is ga po .", "x"])
    ids, weights = S.sft_example(tok, hop, k=2, answer_weight=5.0)
    assert tok.decode([i for i, w in zip(ids, weights) if w == 5.0]).split() == ["ga", "po"]


# ---------------------------------------------------------------- a real short fine-tune ----------

@pytest.mark.integration
def test_sft_learns_useful_vs_noisy(sft_sim):
    # Fresh samples (temperature 0.8) for the keyword queries of every entity: the SFT pairs' query
    # distribution. Unseen entities are NOT tested: this tiny model memorises, it does not copy.
    rows = [dict(q, query=keyword_query(q["question"], random.Random(0))[1]) for q in sft_sim["questions"]]
    ev = S.evaluate_simulator(sft_sim["model"], rows, k=K, temperature=0.8, max_new_tokens=80, seed=1)
    print("tiny simulator SFT:", sft_sim["train"], {k: v for k, v in ev.items() if k != "examples"})
    assert ev["useful_hit"] >= 0.70, ev
    assert ev["noisy_hit"] <= 0.30, ev
    assert ev["well_formed"] >= 0.5, ev
    assert 0 <= ev["useful_stated"] <= ev["useful_hit"], ev  # stated about the query implies contained
    assert ev["by_source"] == {"tiny_world": {"useful_hit": ev["useful_hit"], "useful_stated": ev["useful_stated"],
                                              "noisy_hit": ev["noisy_hit"], "n": len(rows)}}


@pytest.mark.integration
def test_sft_copies_the_answer_for_held_out_questions(tmp_path):
    """The simulator's acceptance at a smaller scale, through the job's own path (`simulator_sft.run`: pairs,
    labels, balance, the parquet set, SFT with the answer weight, held-out evaluation): after SFT the useful
    documents state the answer of questions about countries no SFT row mentions, the noisy ones do not. Measured
    (fresh 2-layer model, temperature 0.8 as the job evaluates; 2026-12-07, the pinned packages): at 3,000 steps
    useful 92 % / 93 % over split seeds 0 / 1 (~130 s), noisy 2 %; at 5,000 steps 73 % / 96 % (seed 0: 73 % here
    and on CI's machine; 88 % at lr 3e-3): the copy emerges, then memorisation wins, earlier on some seeds than
    others. The bar is 80 % so that the measured spread at 3,000 steps cannot fail it; the 90 % target is
    checked where it is stated, in the quickstart's job on the CPU default world (98 %, docs/experiments.md)."""
    from zs_ray.world.tiny_models import train_tokenizer

    corpus, questions, texts = build_world(str(tmp_path / "world"), n=400)
    train_tokenizer((texts + [q["question"] for q in questions]) * 5, str(tmp_path / "tok"), vocab_size=1000)
    base = _tiny_llama(str(tmp_path / "tok"), str(tmp_path / "base"))
    res = S.run(base, str(tmp_path / "job"), questions=questions, corpus=corpus, topk=K, heldout_frac=0.25,
                eval_questions=100, steps=3000, batch_size=8, lr=2e-3, warmup_steps=10, answer_weight=10.0,
                log_every=0)
    print("held-out simulator SFT:", {k: v for k, v in res.items() if k.startswith("eval")})
    assert res["eval_n"] == 100 and res["eval_well_formed"] >= 0.9, res
    assert res["eval_useful_hit"] >= 0.80, res
    assert res["eval_noisy_hit"] <= 0.10, res
