"""How fast does the tiny CPU-default policy learn to copy an answer out of documents?

Pre-trains a fresh policy on the world's drills and prints, every `--probe-every` steps, the held-out copy
accuracy (zs_ray.quickstart.copy_accuracy: clean BM25 demonstration cut after the final "<think> NAME ATTR is",
the greedy continuation must be the value). `--task repeat` instead trains the most basic content copy — a
random syllable sequence repeated after a random-length prefix — and prints the loss on the repeat only;
`--task induction` the same with *distinct* words (zs_ray.prior_texts.induction_sequence): an induction head
forms there ~7x sooner (2026-11-24: 2 layers, batch 32, loss 0.32 at 1,000 steps vs ~7,500 with repeats).

    python benchmarks/copy_skill.py --out runs/copy_skill --steps 1500 --recall 4 --topk 3
    python benchmarks/copy_skill.py --out runs/copy_skill --task repeat --steps 1500 --batch 16
    python benchmarks/copy_skill.py --out runs/copy_skill --task repeat --steps 3000 --batch 16 --layers 2
    python benchmarks/copy_skill.py --out runs/copy_skill --task repeat --steps 1500 --batch 16 --prev-token-heads 1
    python benchmarks/copy_skill.py --out runs/copy_skill --task induction --steps 1500 --batch 32 --layers 2 --ffn 128
    python benchmarks/copy_skill.py --out runs/copy_skill --layers 2 --ffn 128 --induction-steps 1500 --fact-recall

Not a test: a measurement (minutes of CPU). What it found is in docs/experiments.md ("The quickstart and the prior").
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def repeat_batches(tok, rng, batch: int, syllables: list[str]):
    import torch

    while True:
        rows, n_copy = [], []
        for _ in range(batch):
            pre = [rng.choice(syllables) for _ in range(rng.randint(0, 15))]
            seq = [rng.choice(syllables) for _ in range(rng.randint(8, 20))]
            rows.append(tok.encode(" " + " ".join(pre + seq + [";"] + seq)))
            n_copy.append(len(seq))  # every syllable is one token (token_stats checks it)
        T = max(map(len, rows))
        ids = torch.full((batch, T), tok.pad_token_id)
        labels = torch.full((batch, T), -100)
        attn = torch.zeros((batch, T), dtype=torch.long)
        for i, (r, k) in enumerate(zip(rows, n_copy)):
            ids[i, :len(r)], attn[i, :len(r)] = torch.tensor(r), 1
            labels[i, len(r) - k:len(r)] = torch.tensor(r[len(r) - k:])  # loss on the repeat only
        yield ids, attn, labels


def init_previous_token_heads(model, offsets: list[int], amplitude: float = 10.0) -> None:
    """Layer 0, head h attends (content-independently) to the token `offsets[h]` back, from step 0.

    q and k come from biases only (weights zeroed): per RoPE frequency pair i, q = (a, 0) and
    k = a (cos d*theta_i, sin d*theta_i), so q.k = a^2 cos((m - n - d) theta_i), largest at m - n = d;
    six pairs and a^2 = amplitude * sqrt(head_dim) put ~0.998 of the attention there. V reads an
    orthonormal slice of the (normed) token, O writes it at embedding scale. A test of whether the
    previous-token feature is what the copy circuit lacks (measured on 2026-11-24: it is not).
    """
    import math

    import torch

    att, hd = model.model.layers[0].self_attn, model.config.head_dim
    base = getattr(model.config, "rope_theta", None) or (getattr(model.config, "rope_parameters", None) or {}).get(
        "rope_theta", 10000.0)
    theta = [base ** (-2 * i / hd) for i in range(hd // 2)]
    amp = math.sqrt(amplitude * math.sqrt(hd))
    H = model.config.hidden_size
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.zero_()
        v_basis, o_basis = torch.linalg.qr(torch.randn(H, H))[0], torch.linalg.qr(torch.randn(H, H))[0]
        for h, d in enumerate(offsets):
            sl = slice(h * hd, (h + 1) * hd)
            att.q_proj.weight[sl] = 0
            att.k_proj.weight[sl] = 0
            qb, kb = torch.zeros(hd), torch.zeros(hd)
            for i in range(6):  # rotate_half pairs (i, i + hd/2)
                qb[i], kb[i], kb[i + hd // 2] = amp, amp * math.cos(d * theta[i]), amp * math.sin(d * theta[i])
            att.q_proj.bias[sl], att.k_proj.bias[sl] = qb, kb
            att.v_proj.weight[sl] = v_basis[:, sl].T
            att.o_proj.weight[:, sl] = 0.02 * o_basis[:, :hd]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/copy_skill")
    p.add_argument("--task", choices=["drills", "repeat", "induction"], default="drills")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--recall", type=int, default=4, help="recall questions per drill")
    p.add_argument("--topk", type=int, default=3, help="documents per search in the drills")
    p.add_argument("--probe-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, help="override the policy's depth (a fresh model of that shape)")
    p.add_argument("--hidden", type=int, help="override the policy's width (FFN 4x, head size kept at 32)")
    p.add_argument("--ffn", type=int, help="override the policy's FFN width")
    p.add_argument("--prev-token-heads", default="", help="comma-separated offsets, e.g. 1 or 1,2,3: layer-0 heads "
                   "initialised to attend that many tokens back (init_previous_token_heads)")
    p.add_argument("--induction-steps", type=int, default=0, help="drills: first train this many steps (batch 32) "
                   "on induction_sequence")
    p.add_argument("--fact-recall", action="store_true", help="drills: mix in fact_recall examples (one per "
                   "information block)")
    p.add_argument("--betas", default="0.9,0.95", help="AdamW betas")
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zs_ray.prior_texts import fact_recall, induction_sequence, pretrain_texts
    from zs_ray.quickstart import copy_accuracy, copy_probe_items
    from zs_ray.sft import _batches, encode_segments, encode_text_example
    from zs_ray.world import WORDS
    from zs_ray.world_files import build_world_assets

    torch.set_num_threads(2)
    if not os.path.exists(f"{a.out}/world/policy/model.safetensors"):
        build_world_assets(f"{a.out}/world", seed=a.seed, n_pretrain=0, topk=a.topk)
    tok = AutoTokenizer.from_pretrained(f"{a.out}/world/tokenizer")
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_pretrained(f"{a.out}/world/policy", dtype=torch.float32, use_safetensors=True)
    offsets = [int(x) for x in a.prev_token_heads.split(",") if x]
    if a.layers or a.hidden or a.ffn or offsets:  # same config otherwise, fresh weights
        cfg = model.config
        cfg.attention_bias = bool(offsets) or cfg.attention_bias
        cfg.num_hidden_layers = a.layers or cfg.num_hidden_layers
        if a.hidden:
            cfg.hidden_size, cfg.intermediate_size = a.hidden, 4 * a.hidden
            cfg.num_attention_heads = cfg.num_key_value_heads = a.hidden // cfg.head_dim
        cfg.intermediate_size = a.ffn or cfg.intermediate_size
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        if offsets:
            init_previous_token_heads(model, offsets)
    print(f"policy: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"FFN {model.config.intermediate_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters",
          flush=True)
    rng, words = random.Random(a.seed), WORDS
    items = None

    def induction_batches(batch):
        while True:
            ex = [encode_segments(tok, induction_sequence(rng, words)) for _ in range(batch)]
            yield from _batches(ex, batch, tok.pad_token_id, rng, 1024)

    def train(batches, steps, label):
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01,
                                betas=tuple(float(x) for x in a.betas.split(",")))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))  # 50-step warm-up
        t0, losses = time.perf_counter(), []
        for step in range(1, steps + 1):
            ids, attn, labels = next(batches)
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step % a.probe_every == 0 or step == steps:
                line = f"[{label}] step {step} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} " \
                       f"({time.perf_counter() - t0:.0f}s)"
                if items is not None:
                    model.eval()
                    acc = copy_accuracy(model, tok, items, chat=False)
                    model.train()
                    line += (f" held-out copy accuracy {acc['all']:.1%} (years {acc['year']:.1%}, "
                             f"syllables {acc['syllable']:.1%})")
                print(line, flush=True)

    if a.task == "repeat":
        train(repeat_batches(tok, rng, a.batch, words), a.steps, "repeat")
    elif a.task == "induction":
        train(induction_batches(a.batch), a.steps, "induction")
    else:
        if a.induction_steps:
            train(induction_batches(32), a.induction_steps, "induction")
        texts = list(pretrain_texts(a.steps * a.batch, a.seed + 1, a.topk, recall=a.recall))
        examples = [encode_text_example(tok, t) for t in texts]
        if a.fact_recall:
            examples += [encode_segments(tok, s) for t in texts for s in fact_recall(rng, t)]
        items = copy_probe_items(f"{a.out}/world/world")  # once: it runs BM25 over the corpus

        def drill_batches():
            while True:
                yield from _batches(examples, a.batch, tok.pad_token_id, rng, 1024)
        train(drill_batches(), a.steps, "drills")


if __name__ == "__main__":
    main()
