"""Fine-tuning the search simulator in-project (ZeroSearch trained its simulators outside its code).

1. Pairs: (query, documents a REAL search engine returned) with the trajectory's own question and
   gold answers. Two sources: trajectories of a policy talking to real search (`search_calls`), or a
   direct path over a corpus: BM25 for question-derived queries (the CPU default), plus, per question, the
   passages that state its answer, then its own hits (`answer_aware`: multi-hop questions get a useful
   example too).
2. Labels: "useful" if a normalised gold answer appears in the documents, else "noisy" (the paper
   used an LLM judge: `judge_labeller` plugs one in). Classes are balanced by down-sampling. Useful
   targets lead with the answer (`lead_with_answer`): a small simulator then learns one place to copy
   it to instead of memorising where each passage happens to state it.
3. SFT: input = chat template of simulator_prompt("simulate_sft", ..., noisy=label=="noisy"),
   target = the rendered documents + EOS; loss on the target tokens only, the tokens that copy the answer
   `answer_weight` times as heavy (the 2-layer CPU simulator learns to copy a 4-digit year only then);
   fp32 AdamW, plain torch.
4. Evaluation on held-out questions: ask for useful and for noisy documents and measure how often
   the gold answer appears in each (target: useful high, noisy low).

No Ray, no vLLM: the output is an HF safetensors folder that actors/simulator.py serves.
"""
from __future__ import annotations

import json
import os
import random
import re
from typing import Callable, Iterable, Optional, Sequence

from .data import golds_of
from .protocol import render_documents
from .reward import normalize_answer
from .simulator_prompts import simulator_prompt

USEFUL, NOISY = "useful", "noisy"
Labeller = Callable[[str, Sequence[str], Sequence[str]], str]  # (question, golds, docs) -> label


from .config import SimulatorSFTConfig  # noqa: E402,F401  (the schema lives with the others)


# ---------------------------------------------------------------- labelling ----------------------

def contains_answer(text: str, golds: Sequence[str]) -> bool:
    """Normalised gold answer appears in the normalised text, on word boundaries."""
    norm = f" {normalize_answer(text)} "
    return any(g and f" {g} " in norm for g in (normalize_answer(x) for x in golds))


def states_answer(docs: Sequence[str], query: str, golds: Sequence[str]) -> bool:
    """One sentence holds a gold answer AND every content word of the query: the answer stated about what
    was asked. `contains_answer` alone passes "za pi: ga pi birthplace is X" for "za pi birthplace" (the
    2-layer simulator garbles names and values; BENCHMARKS/README: 96 % contain, ~58 % state). A question
    asked whole about a chain (two hops) has no such sentence: read it on one-hop queries."""
    need = set(normalize_answer(query).split()) - _STOP
    bodies = [d.split(": ", 1)[1] if ": " in d else d for d in docs]  # the "Title: " names no fact
    return any(contains_answer(s, golds) and need <= set(normalize_answer(s).split())
               for b in bodies for s in _SENTENCE_END.split(b))


def answer_in_docs_label(question: str, golds: Sequence[str], docs: Sequence[str]) -> str:
    return USEFUL if contains_answer(" ".join(docs), golds) else NOISY


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lead_with_answer(docs: Sequence[str], golds: Sequence[str]) -> list[str]:
    """Documents that contain a gold answer first and, inside each, the sentence holding it first (a
    "Title: " prefix stays in front); everything else keeps its order. Why: with the answer at a varying
    place the 2-layer CPU simulator memorised facts instead of copying the prompt's answer (useful
    documents containing it after 400 SFT steps: 4 % as retrieved, 26 % answer-first; after 1,500: 82 % of
    one-hop questions)."""
    def lead(doc: str) -> str:
        title, sep, body = doc.partition(": ")
        if not sep:
            title, body = "", doc
        sentences = [x for x in _SENTENCE_END.split(body.strip()) if x]
        sentences.sort(key=lambda x: not contains_answer(x, golds))  # stable: the rest keep their order
        return f"{title}{sep}{' '.join(sentences)}"
    has = [contains_answer(d, golds) for d in docs]
    return [lead(d) for d, h in zip(docs, has) if h] + [d for d, h in zip(docs, has) if not h]


def judge_labeller(generate: Callable[[str], str]) -> Labeller:
    """An LLM-judge labeller (the paper's choice): `generate(prompt) -> text`, 'yes' means useful."""
    def label(question, golds, docs):
        prompt = (f"Question: {question}\nDocuments:\n{render_documents(list(docs))}\n"
                  "Do these documents contain enough information to answer the question? Answer yes or no.")
        return USEFUL if generate(prompt).strip().lower().startswith("yes") else NOISY
    return label


# ---------------------------------------------------------------- pairs ---------------------------

def pairs_from_trajectories(trajectories: Iterable[dict]) -> list[dict]:
    """Split trajectories ({question, golden_answers, search_calls: [{query, docs}]}) into pairs."""
    out = []
    for t in trajectories:
        golds = golds_of(t)
        for call in t.get("search_calls") or []:
            docs = [d for d in (call.get("docs") or []) if str(d).strip()]
            if docs:  # an empty result teaches nothing
                out.append(dict(query=str(call["query"]), question=str(t["question"]), golden_answers=golds,
                                docs=[str(d) for d in docs], source="trajectory"))
    return out


_STOP = set("a an the of in on at to is was who what which when where how why did does do by for from "
            "and or with as that this it its be are were".split())


def default_queries(question: str, rng: random.Random) -> list[str]:
    """Queries a policy might write: the question, its content words in the question's order and with the
    first moved last (the subject first: "ze vo year" for "what is the year of ze vo?", the form the
    warm-started policy writes), and a partial keyword query. Without the subject-first form the simulator
    met that query out of distribution and stated the asked fact in 58 % of its useful results, against
    94 % for the question (README, session 15)."""
    q = question.strip()
    words = [w for w in re.findall(r"\w+", q) if w.lower() not in _STOP]
    out = [q]
    if words:
        out.append(" ".join(words))
    if len(words) > 1:
        out.append(" ".join(words[1:] + words[:1]))
        out.append(" ".join(sorted(rng.sample(words, max(1, len(words) // 2)), key=words.index)))
    return list(dict.fromkeys(out))


def passages_stating(index, answers: Iterable[str]) -> dict[str, list[int]]:
    """Normalised answer -> indices of the passages that state it (word-boundary match, as `contains_answer`),
    in one pass over the corpus's word n-grams. Unlike a BM25 search for the answer this finds answers made
    of tokens BM25 drops (bm25s ignores one-character tokens, so a year written "1 8 2 1" is invisible to it)."""
    wanted = {normalize_answer(a) for a in answers} - {""}
    longest = max((len(a.split()) for a in wanted), default=0)
    out: dict[str, list[int]] = {}
    for i in range(len(index)):
        words = normalize_answer(index.passage(i)).split()
        found = {" ".join(words[j:j + n]) for n in range(1, longest + 1) for j in range(len(words) - n + 1)}
        for a in found & wanted:
            out.setdefault(a, []).append(i)
    return out


def hop_queries(row: dict) -> list[tuple[str, list[str]]]:
    """(query, what answers it) per hop of a multi-hop row with `hops` [[entity, attribute], ...] (the
    world's questions.jsonl): hop i asks "entity attribute" and is answered by the next hop's entity, the
    last hop by the gold answers. [] for rows with fewer than two hops."""
    hops = row.get("hops") or []
    if len(hops) < 2:
        return []
    return [(f"{entity} {attr}", [str(hops[i + 1][0])] if i + 1 < len(hops) else golds_of(row))
            for i, (entity, attr) in enumerate(hops)]


def pairs_from_corpus(index, questions: Sequence[dict], topk: int = 5, depth: int = 4,
                      query_fn: Callable = default_queries, seed: int = 0, answer_aware: bool = True,
                      hop_aware: bool = False) -> list[dict]:
    """BM25 pairs for each question's queries: the top-k as returned, plus the best k hits that do NOT
    mention a gold answer (related but unhelpful: the kind of results a noisy engine gives).
    `answer_aware`: one more pair per question, shown as the result of the question itself: the passages
    that state a gold answer, best BM25 score for the question first, then the question's other hits:
    what an engine that knows the answer would return. Why: no passage retrieved for a multi-hop question
    states its answer, so without these the simulator never saw a useful result for one (two-hop useful
    documents contained the answer 0 % of the time; a top-50 BM25 search for "question + answer" found an
    answer-bearing passage for 69 % of them, none with a year for an answer). Corpora over
    ANSWER_SCAN_LIMIT passages fall back to that search (`_answer_search_pairs`).
    `hop_aware`: rows with `hops` are labelled per query, by what answers the hop it asks: the hop queries
    themselves ("entity attribute", `hop_queries`) are added, and a question-derived query counts as the
    first hop (what real search returns for it); such rows get no answer-aware pair. Why: with answer-aware
    pairs the simulator put the final answer into 90 % of whole-question results and the bridge entity into
    0 % of first-hop results, so on it one search was enough and the policy stopped chaining (README)."""
    rng = random.Random(seed)
    jobs, single = [], []  # (row, query, what makes its documents useful); rows without hops
    for row in questions:
        hops = hop_queries(row) if hop_aware else []
        if not hops:
            single.append(row)
        asks = hops[0][1] if hops else golds_of(row)
        jobs += [(row, q, asks) for q in query_fn(str(row["question"]), rng)] + [(row, q, a) for q, a in hops]
    hits = index.search([q for _, q, _ in jobs], topk * depth) if jobs else []
    out = []
    for (row, q, asks), docs in zip(jobs, hits):
        base = dict(query=q, question=str(row["question"]), golden_answers=golds_of(row), targets=asks,
                    source="bm25")
        if docs[:topk]:
            out.append({**base, "docs": docs[:topk]})
        unhelpful = [d for d in docs if not contains_answer(d, asks)][:topk]
        if unhelpful and unhelpful != docs[:topk]:
            out.append({**base, "docs": unhelpful, "source": "bm25_filtered"})
    if answer_aware and single:
        out += (_stated_answer_pairs(index, single, topk) if len(index) <= ANSWER_SCAN_LIMIT
                else _answer_search_pairs(index, single, topk))
    return out


ANSWER_SCAN_LIMIT = 200_000  # passages: above it `passages_stating` (a pure-Python pass) would take hours


def _answer_pair(question: str, golds: list, answered: list, others: list, topk: int) -> dict:
    return dict(query=question, question=question, golden_answers=golds, source="bm25_answer_aware",
                docs=(answered + [d for d in others if d not in answered])[:topk])


def _stated_answer_pairs(index, questions: Sequence[dict], topk: int) -> list[dict]:
    """Every passage that states the answer, best BM25 score for the question first, then its own hits."""
    stating, out = passages_stating(index, (g for row in questions for g in golds_of(row))), []
    own_hits = index.search([str(row["question"]) for row in questions], topk)  # one batched search
    for row, own in zip(questions, own_hits):
        question, golds = str(row["question"]), golds_of(row)
        holders = sorted({i for g in golds for i in stating.get(normalize_answer(g), ())})
        if holders:
            scores = index.scores(question)
            answered = [index.passage(i) for i in sorted(holders, key=lambda i: -scores[i])[:topk]]
            out.append(_answer_pair(question, golds, answered, own, topk))
    return out


def _answer_search_pairs(index, questions: Sequence[dict], topk: int, depth: int = 50) -> list[dict]:
    """Large corpora: the answer-stating hits among the top `depth` of a BM25 search for "question answer"
    (misses answers BM25 cannot match, e.g. a year written digit by digit)."""
    queries = [f"{row['question']} {golds_of(row)[0]}" for row in questions]
    out = []
    for row, docs in zip(questions, index.search(queries, max(depth, topk))):
        golds = golds_of(row)
        answered = [d for d in docs if contains_answer(d, golds)][:topk]
        if answered:
            out.append(_answer_pair(str(row["question"]), golds, answered, docs, topk))
    return out


def label_and_balance(pairs: Sequence[dict], labeller: Labeller = answer_in_docs_label,
                      seed: int = 0, answer_first: bool = True) -> list[dict]:
    """Label each pair and down-sample the larger class so useful and noisy are equally many;
    `answer_first`: useful pairs' documents go through `lead_with_answer`. A pair's `targets` (what answers
    its query; the gold answers unless set, as by `hop_aware`) decide usefulness."""
    by = {USEFUL: [], NOISY: []}
    for p in pairs:
        targets = list(p.get("targets") or p["golden_answers"])
        lab = labeller(p["question"], targets, p["docs"])
        if lab not in by:
            raise ValueError(f"labeller returned {lab!r}; expected {USEFUL!r} or {NOISY!r}")
        docs = lead_with_answer(p["docs"], targets) if answer_first and lab == USEFUL else p["docs"]
        by[lab].append({**p, "targets": targets, "docs": list(docs), "label": lab})
    n = min(len(by[USEFUL]), len(by[NOISY]))
    if n == 0:
        raise ValueError(f"cannot balance the SFT set: {len(by[USEFUL])} useful and {len(by[NOISY])} "
                         "noisy pairs (one class is empty)")
    rng = random.Random(seed)
    rows = rng.sample(by[USEFUL], n) + rng.sample(by[NOISY], n)
    rng.shuffle(rows)
    return rows


def write_sft_set(rows: Sequence[dict], path: str) -> str:
    """Save as parquet through `datasets` (loads back with datasets.load_dataset('parquet'))."""
    import datasets

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    datasets.Dataset.from_list([dict(r) for r in rows]).to_parquet(path)
    return path


def load_rows(paths: Sequence[str]) -> list[dict]:
    """Rows of parquet / jsonl files (Search-R1 train parquet, trajectories jsonl)."""
    rows: list[dict] = []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"simulator SFT input not found: {p}")
        if p.endswith(".parquet"):
            import pyarrow.parquet as pq
            rows.extend(pq.read_table(p).to_pylist())
        else:
            with open(p) as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


# ---------------------------------------------------------------- model I/O ------------------------

def chat_text(tokenizer, user_text: str) -> str:
    """One user turn through the chat template when the tokenizer has one (else the raw text)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                             add_generation_prompt=True)
    return user_text


def encode_prompt(tokenizer, user_text: str) -> list[int]:
    # The template already holds any special tokens; adding BOS again would double it.
    return tokenizer(chat_text(tokenizer, user_text), add_special_tokens=False)["input_ids"]


def sft_example(tokenizer, row: dict, k: int, max_doc_words: int = 30,
                answer_weight: float = 1.0) -> tuple[list[int], list[float]]:
    """(input_ids, loss weights): 0 on the prompt, 1 on the documents, `answer_weight` on the tokens
    that copy the gold answer into them. Why: they are ~4 of ~130 target tokens, so plain SFT spends the
    2-layer CPU simulator on the rest; with weight 10 it wrote a held-out year into useful documents for
    98-100 % of one-hop year questions instead of 22-30 % (names: 99 % either way)."""
    prompt = simulator_prompt("simulate_sft", row["query"], row["question"], row["golden_answers"][0],
                              noisy=row["label"] == NOISY, k=k)
    docs = [" ".join(str(d).split()[:max_doc_words]) for d in row["docs"][:k]]
    p_ids = encode_prompt(tokenizer, prompt)
    t_ids = tokenizer(render_documents(docs), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    from .sft import Example, upweight  # torch: only where the SFT set is encoded

    ex = upweight(tokenizer, Example(p_ids + t_ids, [0.0] * len(p_ids) + [1.0] * len(t_ids)),
                  row["golden_answers"], answer_weight)
    return ex.ids, ex.mask


def train_sft(base_model: str, rows: Sequence[dict], out_dir: str, k: int = 5, steps: int = 300,
              batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 20,
              grad_clip: float = 1.0, max_doc_words: int = 30, answer_weight: float = 1.0, seed: int = 0,
              threads: int = 2, log_every: int = 50, log: Callable[[str], None] = print) -> dict:
    """Fine-tune on the SFT set with the project's one SFT loop (zs_ray/sft.py); loss on documents only."""
    from transformers import AutoTokenizer

    from .sft import Example, sft_train

    tok = AutoTokenizer.from_pretrained(base_model)
    examples = [Example(*sft_example(tok, r, k, max_doc_words, answer_weight)) for r in rows]
    if not examples:
        raise ValueError("train_sft: no SFT rows")
    res = sft_train(base_model, examples, tokenizer=tok, out_dir=out_dir, steps=steps, lr=lr,
                    batch_size=min(batch_size, len(examples)), weight_decay=weight_decay, warmup=warmup_steps,
                    grad_clip=grad_clip, seed=seed, threads=threads, log_every=log_every, progress=log,
                    label="simulator sft")
    return {"steps": res["steps"], "final_loss": res["final_loss"], "train_s": res["seconds"],
            "examples": len(examples)}


# ---------------------------------------------------------------- evaluation ----------------------

def generate_docs(model_path: str, requests: Sequence[dict], k: int = 5, temperature: float = 0.8,
                  max_new_tokens: int = 200, batch_size: int = 32, seed: int = 0, threads: int = 2) -> list[str]:
    """HF generate for {query, question, answer, noisy} requests (left-padded batches); raw texts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    outs: list[str] = []
    for i in range(0, len(requests), batch_size):
        chunk = requests[i:i + batch_size]
        prompts = [encode_prompt(tok, simulator_prompt("simulate_sft", r["query"], r["question"], r["answer"],
                                                       noisy=r["noisy"], k=k)) for r in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                 do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                 top_p=None, top_k=None, pad_token_id=pad, eos_token_id=tok.eos_token_id)
        outs.extend(tok.batch_decode(gen[:, width:], skip_special_tokens=True))
    return outs


def evaluate_simulator(model_path: str, questions: Sequence[dict], k: int = 5, temperature: float = 0.8,
                       max_new_tokens: int = 200, seed: int = 0, threads: int = 2) -> dict:
    """For each held-out {query?, question, golden_answers}: one useful and one noisy generation.
    useful_hit = fraction of useful generations containing a gold answer (want high);
    noisy_hit = the same for noisy generations (want low); well_formed = fraction with k parsed docs.
    `by_source` splits both by the rows' `data_source`: a two-hop question asked as one query has an
    answer no single retrieved passage states, unlike a one-hop one."""
    from .simulator_prompts import parse_documents

    reqs = []
    for row in questions:
        golds = golds_of(row)
        for noisy in (False, True):
            reqs.append(dict(query=str(row.get("query") or row["question"]), question=str(row["question"]),
                             answer=golds[0], golds=golds, noisy=noisy, source=str(row.get("data_source") or "")))
    texts = generate_docs(model_path, reqs, k, temperature, max_new_tokens, seed=seed, threads=threads)
    outcomes = []  # (source, noisy, hit, stated) per generation
    formed = []
    for r, t in zip(reqs, texts):
        docs = parse_documents(t, k).docs
        formed.append(len(docs) == k)
        outcomes.append((r["source"], r["noisy"], contains_answer(" ".join(docs), r["golds"]),
                         states_answer(docs, r["query"], r["golds"])))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731

    def rate(noisy: bool, source: Optional[str] = None, col: int = 2) -> float:
        return mean([o[col] for o in outcomes if o[1] == noisy and source in (None, o[0])])

    by_source = {src: {"useful_hit": rate(False, src), "useful_stated": rate(False, src, 3),
                       "noisy_hit": rate(True, src), "n": sum(o[0] == src and not o[1] for o in outcomes)}
                 for src in sorted({o[0] for o in outcomes if o[0]})}
    return {"useful_hit": rate(False), "useful_stated": rate(False, None, 3), "noisy_hit": rate(True),
            "well_formed": mean(formed), "n": len(questions), "by_source": by_source,
            "examples": [dict(query=r["query"], noisy=r["noisy"], text=t) for r, t in list(zip(reqs, texts))[:4]]}


# ---------------------------------------------------------------- the whole job ----------------------

def split_questions(questions: Sequence[dict], heldout_frac: float, seed: int = 0) -> tuple[list, list]:
    rows = list(questions)
    random.Random(seed).shuffle(rows)
    n_held = max(1, int(round(len(rows) * heldout_frac))) if heldout_frac > 0 else 0
    return rows[n_held:], rows[:n_held]


def run(base_model: str, out_dir: str, questions: Sequence[dict] = (), index=None, corpus: Optional[str] = None,
        trajectories: Sequence[dict] = (), topk: int = 5, heldout_frac: float = 0.1, eval_questions: int = 100,
        eval_temperature: float = 0.8, labeller: Labeller = answer_in_docs_label, answer_first: bool = True,
        answer_aware: bool = True, hop_aware: bool = False, seed: int = 0, log: Callable[[str], None] = print,
        **train_kw) -> dict:
    """Collect pairs -> label/balance -> write the set -> SFT -> evaluate on held-out questions."""
    if index is None and corpus and questions:
        from .retrieval import BM25Index
        index = BM25Index.build(corpus)
    train_q, held_q = split_questions(questions, heldout_frac, seed)
    pairs = pairs_from_trajectories(trajectories)
    if index is not None and train_q:
        pairs += pairs_from_corpus(index, train_q, topk=topk, seed=seed, answer_aware=answer_aware,
                                   hop_aware=hop_aware)
    if not pairs:
        raise ValueError("simulator SFT: no (query, documents) pairs; give trajectories, or a corpus and questions")
    rows = label_and_balance(pairs, labeller, seed, answer_first)
    data_path = write_sft_set(rows, os.path.join(out_dir, "sft_data", "train.parquet"))
    log(f"simulator sft: {len(pairs)} pairs -> {len(rows)} balanced rows ({data_path})")
    model_dir = os.path.join(out_dir, "model")
    train = train_sft(base_model, rows, model_dir, k=topk, seed=seed, log=log, **train_kw)
    result = {"model_dir": model_dir, "data": data_path, "pairs": len(pairs), "rows": len(rows), **train}
    if held_q:
        ev = evaluate_simulator(model_dir, held_q[:eval_questions], k=topk, temperature=eval_temperature,
                                seed=seed, threads=train_kw.get("threads", 2))
        result.update({f"eval_{k}": v for k, v in ev.items() if k not in ("examples", "by_source")})
        for src, m in ev["by_source"].items():
            result.update({f"eval_{src}_{k}": v for k, v in m.items() if k != "n"})
        log(f"simulator eval on {ev['n']} held-out questions: useful contain the answer {ev['useful_hit']:.1%}, "
            f"noisy contain it {ev['noisy_hit']:.1%}, well-formed {ev['well_formed']:.1%}"
            + "".join(f"; {src} ({m['n']}): useful {m['useful_hit']:.1%} (stating it about the query "
                      f"{m['useful_stated']:.1%}), noisy {m['noisy_hit']:.1%}"
                      for src, m in ev["by_source"].items()))
        with open(os.path.join(out_dir, "eval.json"), "w") as f:
            json.dump(ev, f, indent=1)
    return result
