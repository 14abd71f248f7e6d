"""The format warm start of a pretrained instruct model on real questions (`zs-ray warmstart CONFIG`).

Prompted with the Search-R1 prompt, SmolLM2-135M-Instruct writes prose, not tags (98 % invalid actions
on NQ): RL cannot start from there. A short SFT on clean demonstrations teaches the protocol — one
`<search>` with the question, the real BM25 passages as the `<information>` block (masked out of the
loss, as in RL), `<answer> gold </answer>` — and leaves reading to RL. Only training questions whose
passages hold a gold answer become demonstrations, so the model is shown answers it could have read.
"""
from __future__ import annotations

import random
from typing import Callable, Optional

from zs_ray.core.protocol import observation_text, render_documents
from zs_ray.core.reward import normalize_answer
from zs_ray.data.qa import golds_of, load_dataset_files, question_of


def demonstration(question: str, gold: str, docs: list[str]) -> str:
    """The policy's side of one clean trajectory: search with the question, then answer."""
    return (f"<search> {question.strip()} </search>" + observation_text(render_documents(docs))
            + f"<answer> {gold.strip()} </answer>")


def answer_in(docs: list[str], golds: list[str]) -> Optional[str]:
    """The first gold answer that the documents contain (normalised, whole words), or None."""
    text = f" {normalize_answer(' '.join(docs))} "
    for g in golds:
        n = normalize_answer(g)
        if n and f" {n} " in text:
            return g
    return None


def build_demos(rows: list[dict], index, topk: int, n: int, seed: int = 0) -> list[dict]:
    """Up to `n` demonstrations {prompt, response} from training rows whose top-k passages hold a gold
    answer (rows taken in a seeded order)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = []
    for start in range(0, len(order), 256):  # retrieve in batches until there are enough
        chunk = [rows[i] for i in order[start:start + 256]]
        hits = index.search_with_ids([question_of(r) for r in chunk], topk)
        for row, h in zip(chunk, hits):
            docs = [x.text for x in h]
            gold = answer_in(docs, golds_of(row)) if docs else None
            if gold is None:
                continue
            prompt = row["prompt"][0]["content"] if row.get("prompt") is not None and len(row["prompt"]) else None
            out.append({"prompt": prompt, "question": question_of(row),
                        "response": demonstration(question_of(row), gold, docs)})
            if len(out) >= n:
                return out
    return out


def sft_top_layers(base: str, pairs: list[tuple[str, str]], trainable_layers: Optional[int], out_dir: str,
                   **sft_kw) -> dict:
    """SFT of the model at `base` on (user prompt, response) chat pairs (`<information>` blocks masked) with only
    its top `trainable_layers` learning, as in RL; saved to `out_dir`. `sft_kw`: zs_ray.sft.sft.sft_train's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zs_ray.core.layers import freeze_lower_layers
    from zs_ray.sft.sft import encode_chat_example, sft_train

    tok = AutoTokenizer.from_pretrained(base)
    examples = [encode_chat_example(tok, prompt, response) for prompt, response in pairs]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    freeze_lower_layers(model, trainable_layers)
    result = sft_train(model, examples, tokenizer=tok, out_dir=out_dir, **sft_kw)
    result.pop("model", None)
    return result


def warm_start(cfg, base: str, out_dir: str, steps: int = 60, batch_size: int = 4, lr: float = 1e-4, seed: int = 0,
               progress: Callable[[str], None] = print) -> dict:
    """SFT of `base` on `steps x batch_size` demonstrations from data.train_files with BM25 over search.corpus
    (top search.topk, passages cut to search.max_doc_words) -> `out_dir`; only model.trainable_layers learn."""
    from zs_ray.core.protocol import make_prompt
    from zs_ray.search.retrieval import BM25Index

    s = cfg.search
    index = BM25Index.from_search_config(s.corpus, s.index_dir, s.max_doc_words)
    rows = load_dataset_files(list(cfg.data.train_files), split="train")
    demos = build_demos(rows, index, s.topk, steps * batch_size, seed)
    progress(f"[warm-start] {len(demos)} demonstrations from {len(rows)} training questions "
             f"(those whose top-{s.topk} passages hold a gold answer)")
    pairs = [(d["prompt"] or make_prompt(d["question"]), d["response"]) for d in demos]
    result = sft_top_layers(base, pairs, cfg.model.trainable_layers, out_dir, steps=steps, lr=lr,
                            batch_size=batch_size, warmup=5, seed=seed, threads=2, progress=progress,
                            label="warm-start", log_every=10, max_len=cfg.rollout.max_context_tokens)
    return {**result, "demos": len(demos)}

