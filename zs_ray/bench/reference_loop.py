"""The baseline for `zs-ray bench`: a rollout loop written the way the ZeroSearch / Search-R1 reference
code does it, NOT how zs-ray does it (each point below is what zs-ray's rollout avoids):

- one synchronous batch, turn by turn: every active trajectory generates, then every search runs,
  then the next turn starts (a slow trajectory or search holds up the whole batch);
- transformers `generate` with NO stop strings: each turn runs to `max_turn_tokens`, then the
  decoded text is cut at the first `</search>` or `</answer>` (the tokens after it are wasted);
- decode -> cut -> re-tokenize: the next turn's input is the re-tokenized text;
- at most 10 simulator calls in flight (a thread pool of 10, like the reference's request pool),
  each a blocking call to the same Ray Serve simulator zs-ray uses.

Only the loop's structure differs from zs-ray's: same prompts, model, sampling settings, max tokens
per turn, number of turns, simulator and documents. It returns the kept policy tokens per
trajectory, so both sides are measured in the same unit (sampled tokens that end up in a trajectory).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import torch

from zs_ray.core.protocol import INVALID_FEEDBACK, observation_text, parse_action, render_documents
from zs_ray.data.qa import golds_of, question_of

_CUT = re.compile(r"</(search|answer)>")


def cut_at_action(text: str) -> str:
    """Keep the text up to and including the first `</search>` or `</answer>` (the reference's postprocess)."""
    m = _CUT.search(text)
    return text[: m.end()] if m else text


def prompt_text(tokenizer, row: dict) -> str:
    msgs = [dict(m) for m in row["prompt"]]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return msgs[0]["content"]


def reference_rollout(model, tokenizer, simulate, rows: list[dict], n_samples: int, *, max_turns: int,
                      max_turn_tokens: int, temperature: float = 1.0, top_p: float = 0.95, topk: int = 3,
                      mode: str = "simulate_sft", pool_size: int = 10, seed: int = 0) -> list[dict]:
    """`simulate` is the Serve handle's `simulate` method (a DeploymentHandle attribute). Returns one dict
    per trajectory: kept_tokens (policy tokens kept after the cut), generated_tokens (all sampled), searches."""
    torch.manual_seed(seed)
    tok = tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    items = [(r, prompt_text(tok, r)) for r in rows for _ in range(n_samples)]
    texts = [p for _, p in items]  # prompt + response so far, as TEXT (re-tokenized every turn)
    trajs = [dict(kept_tokens=0, generated_tokens=0, searches=0, answer=None) for _ in items]
    active = list(range(len(items)))
    with ThreadPoolExecutor(max_workers=pool_size) as pool:
        for turn in range(max_turns + 1):
            if not active:
                break
            tok.padding_side = "left"
            enc = tok([texts[i] for i in active], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_turn_tokens, do_sample=True, temperature=temperature,
                                     top_p=top_p, top_k=0, pad_token_id=pad)
            new = out[:, enc["input_ids"].shape[1]:]
            decoded = tok.batch_decode(new, skip_special_tokens=True)
            searches, still = [], []
            for i, ids, text in zip(active, new, decoded):
                kept = cut_at_action(text)
                trajs[i]["generated_tokens"] += int((ids != pad).sum())
                trajs[i]["kept_tokens"] += len(tok.encode(kept, add_special_tokens=False))
                texts[i] += kept
                action = parse_action(kept)
                if action.kind == "answer":
                    trajs[i]["answer"] = action.content
                elif turn < max_turns:  # the final turn executes no search
                    still.append(i)
                    if action.kind == "search":
                        searches.append((i, action.content))
                    else:
                        texts[i] += INVALID_FEEDBACK
            row_of = lambda i: items[i][0]  # noqa: E731

            def call(job):
                i, query = job
                r = row_of(i)
                golds = golds_of(r)
                return simulate.remote(query, question_of(r), str(golds[0]) if golds else "", False, topk,
                                       mode).result()
            for (i, _), res in zip(searches, pool.map(call, searches)):
                trajs[i]["searches"] += 1
                texts[i] += observation_text(render_documents(res["docs"]))
            active = still
    return trajs
