"""Fine-tuning the search simulator in-project (ZeroSearch trained its simulators outside its code).

Steps 1 and 2 (pairs and labels) are in zs_ray/sft/simulator_data.py; 3 and 4 here.

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
from typing import Callable, Optional, Sequence

from zs_ray.core.protocol import render_documents
from zs_ray.core.simulator_prompts import simulator_prompt
from zs_ray.data.qa import golds_of
from zs_ray.sft.simulator_data import (NOISY, Labeller, answer_in_docs_label, contains_answer, label_and_balance,
                                       pairs_from_corpus, pairs_from_trajectories, split_questions, states_answer,
                                       targets_of, write_sft_set)

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
    that spell what answers the query (the row's `targets`: the gold answer, or with `hop_aware` the next
    hop's entity). Why: they are ~4 of ~130 target tokens, so plain SFT spends the 2-layer CPU simulator on
    the rest; with weight 10 it wrote a held-out year into useful documents for 98-100 % of one-hop year
    questions instead of 22-30 % (names: 99 % either way)."""
    prompt = simulator_prompt("simulate_sft", row["query"], row["question"], row["golden_answers"][0],
                              noisy=row["label"] == NOISY, k=k)
    docs = [" ".join(str(d).split()[:max_doc_words]) for d in row["docs"][:k]]
    p_ids = encode_prompt(tokenizer, prompt)
    t_ids = tokenizer(render_documents(docs), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    from zs_ray.sft.sft import Example, upweight  # torch: only where the SFT set is encoded

    ex = upweight(tokenizer, Example(p_ids + t_ids, [0.0] * len(p_ids) + [1.0] * len(t_ids)),
                  targets_of(row), answer_weight)
    return ex.ids, ex.mask


def train_sft(base_model: str, rows: Sequence[dict], out_dir: str, k: int = 5, steps: int = 300,
              batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 20,
              grad_clip: float = 1.0, max_doc_words: int = 30, answer_weight: float = 1.0, seed: int = 0,
              threads: int = 2, log_every: int = 50, trainable_layers: Optional[int] = None,
              log: Callable[[str], None] = print) -> dict:
    """Fine-tune on the SFT set with the project's one SFT loop (zs_ray/sft/sft.py); loss on documents only.
    `trainable_layers`: only the top N decoder layers of a pretrained base learn (the policy's rule,
    zs_ray.core.layers), which on a 2-core CPU trains a 135M model ~2.5x faster than full fine-tuning."""
    from transformers import AutoTokenizer

    from zs_ray.sft.sft import Example, sft_train

    tok = AutoTokenizer.from_pretrained(base_model)
    examples = [Example(*sft_example(tok, r, k, max_doc_words, answer_weight)) for r in rows]
    if not examples:
        raise ValueError("train_sft: no SFT rows")
    model = base_model
    if trainable_layers is not None:
        import torch
        from transformers import AutoModelForCausalLM

        from zs_ray.core.layers import freeze_lower_layers
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32, use_safetensors=True)
        freeze_lower_layers(model, trainable_layers)
    res = sft_train(model, examples, tokenizer=tok, out_dir=out_dir, steps=steps, lr=lr,
                    batch_size=min(batch_size, len(examples)), weight_decay=weight_decay, warmup=warmup_steps,
                    grad_clip=grad_clip, seed=seed, threads=threads, log_every=log_every, progress=log,
                    label="simulator sft")
    return {"steps": res["steps"], "final_loss": res["final_loss"], "train_s": res["seconds"],
            "examples": len(examples)}


# ---------------------------------------------------------------- evaluation ----------------------

def generate_docs(model_path: str, requests: Sequence[dict], k: int = 5, temperature: float = 0.8,
                  max_new_tokens: int = 200, batch_size: int = 32, seed: int = 0, threads: int = 2,
                  mode: str = "simulate_sft", engine: str = "hf", repetition_penalty: float = 1.0) -> list[str]:
    """Raw texts for {query, question, answer, noisy} requests with `mode`'s prompt (simulate_sft: a fine-tuned
    simulator; simulate_prompt: an instruct model). engine "hf": HF generate in left-padded batches; "vllm": the
    vLLM engine that serves the simulator in training (~3x faster for a 135M model on 2 cores; its sampling
    differs from HF's, so a figure is compared only with figures of the same engine)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    tok = AutoTokenizer.from_pretrained(model_path)
    if engine == "vllm":
        return _vllm_docs(model_path, tok, requests, k, temperature, max_new_tokens, seed, mode, repetition_penalty)
    if engine != "hf":
        raise ValueError(f"simulator_sft.eval_engine must be 'hf' or 'vllm', got {engine!r}")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    outs: list[str] = []
    for i in range(0, len(requests), batch_size):
        chunk = requests[i:i + batch_size]
        prompts = [encode_prompt(tok, simulator_prompt(mode, r["query"], r["question"], r["answer"],
                                                       noisy=r["noisy"], k=k)) for r in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                 do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                 top_p=None, top_k=None, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                 repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None)
        outs.extend(tok.batch_decode(gen[:, width:], skip_special_tokens=True))
    return outs


def _vllm_docs(model_path: str, tok, requests: Sequence[dict], k: int, temperature: float, max_new_tokens: int,
               seed: int, mode: str, repetition_penalty: float = 1.0) -> list[str]:
    """The requests on one vLLM engine at once (continuous batching), request i seeded seed + i; the engine
    stops at `Doc {k+1}:` as the Serve simulator does (actors/simulator.py)."""
    import asyncio
    import gc

    from zs_ray.engines.engine import VLLMEngine

    prompts = [encode_prompt(tok, simulator_prompt(mode, r["query"], r["question"], r["answer"], noisy=r["noisy"],
                                                   k=k)) for r in requests]
    eng = VLLMEngine(model_path, max_model_len=max(map(len, prompts), default=0) + max_new_tokens + 8, seed=seed,
                     max_num_seqs=64)

    async def run():
        return await asyncio.gather(*[eng.generate(p, max_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                                                   stop=[f"Doc {k + 1}:"], seed=seed + i, logprobs=False,
                                                   repetition_penalty=repetition_penalty)
                                      for i, p in enumerate(prompts)])
    gens = asyncio.run(run())
    del eng  # its KV cache goes before the caller's next stage
    gc.collect()
    return [tok.decode(g.token_ids, skip_special_tokens=True) for g in gens]


def evaluate_simulator(model_path: str, questions: Sequence[dict], k: int = 5, temperature: float = 0.8,
                       max_new_tokens: int = 200, seed: int = 0, threads: int = 2, mode: str = "simulate_sft",
                       engine: str = "hf", repetition_penalty: float = 1.0) -> dict:
    """For each held-out {query?, question, golden_answers}: one useful and one noisy generation.
    useful_hit = fraction of useful generations containing a gold answer (want high);
    noisy_hit = the same for noisy generations (want low); well_formed = fraction with k parsed docs.
    `by_source` splits both by the rows' `data_source`: a two-hop question asked as one query has an
    answer no single retrieved passage states, unlike a one-hop one."""
    from zs_ray.core.simulator_prompts import parse_documents

    reqs = []
    for row in questions:
        golds = golds_of(row)
        for noisy in (False, True):
            reqs.append(dict(query=str(row.get("query") or row["question"]), question=str(row["question"]),
                             answer=golds[0], golds=golds, noisy=noisy, source=str(row.get("data_source") or "")))
    texts = generate_docs(model_path, reqs, k, temperature, max_new_tokens, seed=seed, threads=threads, mode=mode,
                          engine=engine, repetition_penalty=repetition_penalty)
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


def evaluate_and_report(model_path: str, questions: Sequence[dict], out_json: str, mode: str = "simulate_sft",
                        log: Callable[[str], None] = print, **kw) -> dict:
    """`evaluate_simulator`, one summary line, and the full result (with example generations) in `out_json`."""
    ev = evaluate_simulator(model_path, questions, mode=mode, **kw)
    rep = kw.get("repetition_penalty", 1.0)
    log(f"simulator eval ({mode}, {model_path}{f', repetition penalty {rep}' if rep != 1.0 else ''}) on {ev['n']} "
        f"held-out questions: useful contain the answer "
        f"{ev['useful_hit']:.1%}, noisy contain it {ev['noisy_hit']:.1%}, well-formed {ev['well_formed']:.1%}"
        + "".join(f"; {src} ({m['n']}): useful {m['useful_hit']:.1%} (stating it about the query "
                  f"{m['useful_stated']:.1%}), noisy {m['noisy_hit']:.1%}" for src, m in ev["by_source"].items()))
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump({"mode": mode, "model": model_path, "repetition_penalty": rep, **ev}, f, indent=1)
    return ev


# ---------------------------------------------------------------- the whole job ----------------------

def run(base_model: str, out_dir: str, questions: Sequence[dict] = (), index=None, corpus: Optional[str] = None,
        trajectories: Sequence[dict] = (), topk: int = 5, heldout_frac: float = 0.1, eval_questions: int = 100,
        eval_temperature: float = 0.8, eval_max_tokens: int = 200, eval_engine: str = "hf",
        eval_repetition_penalty: float = 1.0,
        labeller: Labeller = answer_in_docs_label, answer_first: bool = True, answer_aware: bool = True,
        hop_aware: bool = False, seed: int = 0, log: Callable[[str], None] = print,
        **train_kw) -> dict:
    """Collect pairs -> label/balance -> write the set -> SFT -> evaluate on held-out questions."""
    if index is None and corpus and questions:
        from zs_ray.search.retrieval import BM25Index
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
        ev = evaluate_and_report(model_dir, held_q[:eval_questions], os.path.join(out_dir, "eval.json"), k=topk,
                                 temperature=eval_temperature, max_new_tokens=eval_max_tokens, engine=eval_engine,
                                 repetition_penalty=eval_repetition_penalty,
                                 seed=seed, threads=train_kw.get("threads", 2), log=log)
        result.update({f"eval_{k}": v for k, v in ev.items() if k not in ("examples", "by_source")})
        for src, m in ev["by_source"].items():
            result.update({f"eval_{src}_{k}": v for k, v in m.items() if k != "n"})
    return result
