"""The CPU quickstart: the whole method, end to end, on one 2-core machine.

Stages: world (+ tokenizer + tiny models) -> policy prior (copy pre-training, then a format warm start
on clean single-search demonstrations) -> simulator fine-tuning -> held-out evaluation of the warm
start with real BM25 search -> GRPO with the fine-tuned simulator under the noise curriculum through
the real stack (Ray actors, FSDP2, vLLM rollout workers, the Serve simulator, MLflow) -> held-out
evaluation of the trained policy -> a results table.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from zs_ray.paths import default_config

# Budgets (optimiser steps / RL steps). "full" is the quickstart, fitted to 15 minutes on a 2-core CPU; "long" pre-
# trains 50 % longer for a policy that copies far better (held-out copy accuracy 26 % -> 44 %, warm-start EM 13.9 ->
# 26.7; 14:25 -> 17:12 on 2026-12-01); "smoke" is for tests.
PRESETS = {
    "full": dict(induction_steps=1000, pretrain_steps=2000, warm_steps=300, sim_steps=1200, rl_steps=60,
                 eval_rows=200),
    "long": dict(induction_steps=1000, pretrain_steps=3000, warm_steps=300, sim_steps=1500, rl_steps=60,
                 eval_rows=200),
    "smoke": dict(induction_steps=5, pretrain_steps=20, warm_steps=20, sim_steps=20, rl_steps=2, eval_rows=8),
}


class Stages:
    """Progress display: stage, elapsed, and time left from the stage weights."""

    def __init__(self, weights: dict[str, float], progress=print):
        self.weights, self.progress, self.t0, self.done = weights, progress, time.perf_counter(), 0.0
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, isolate: bool = False, **kw):
        """Run one stage; isolate=True runs it in a fresh child process (see `in_child_process`)."""
        total = sum(self.weights.values())
        elapsed = time.perf_counter() - self.t0
        left = f", ~{elapsed / self.done * (total - self.done):.0f}s left" if self.done else ""
        self.progress(f"\n=== [{name}] ({elapsed:.0f}s elapsed{left})")
        t = time.perf_counter()
        out = in_child_process(fn, *args, **kw) if isolate else fn(*args, **kw)
        self.times[name] = time.perf_counter() - t
        self.done += self.weights.get(name, 0)
        return out


def in_child_process(fn, *args, **kw):
    """fn(*args, **kw) in a spawned child process; its return value comes back pickled.

    A stage that trains or evaluates in the driver leaves memory behind in the process that ran it (the
    allocator keeps freed heap; an imported vLLM stays imported); run in a child, it goes back to the OS
    when the stage ends instead of staying resident in the driver through GRPO (the quickstart's 8 GiB budget).
    Arguments that do not pickle (a lambda as `progress`) make it run in this process instead.
    """
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    try:
        pickle.dumps((fn, args, kw))
    except Exception:  # e.g. a lambda as `progress`: run here rather than fail (only the memory saving is lost)
        return fn(*args, **kw)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kw).result()


def quickstart_paths(out: str) -> dict[str, str]:
    """Every path the quickstart writes under `out` and reads back: `build_world_assets(paths["assets"])`'s world
    files, tokenizer and tiny models, then the stages' outputs. configs/cpu_default.yaml names the same paths for
    out=runs/quickstart (tests/test_quickstart_paths.py holds the two together)."""
    from zs_ray.world.files import asset_paths, world_file_paths

    assets = f"{out}/world"
    a = asset_paths(assets)
    return {"assets": assets, **world_file_paths(a["world"]),
            "world": a["world"], "tokenizer": a["tokenizer"], "policy_init": a["policy"],
            "policy_pre": f"{out}/policy_pre", "policy_warm": f"{out}/policy_warm",
            "simulator_job": f"{out}/simulator_job", "simulator_sft": f"{out}/simulator_sft", "bm25": f"{out}/bm25",
            "grpo": f"{out}/grpo", "mlflow_db": f"{out}/mlflow.db", "logs": f"{out}/logs"}


def write_world(out: str, seed: int = 0, **world_kwargs) -> dict[str, str]:
    """The quickstart's first stage: the world files, tokenizer and tiny models under quickstart_paths(out)."""
    from zs_ray.world.files import build_world_assets

    return build_world_assets(quickstart_paths(out)["assets"], seed=seed, **world_kwargs)


def quickstart_config(out: str, overrides: Optional[list[str]] = None, config_path: Optional[str] = None):
    from zs_ray.config import load_config

    p = quickstart_paths(out)
    paths = [f"data.train_files=[{p['train']}]", f"data.test_files=[{p['test']}]",
             f"model.policy_path={p['policy_warm']}", f"search.simulator_model={p['simulator_sft']}",
             f"search.corpus={p['corpus']}", f"search.index_dir={p['bm25']}",
             f"trainer.output_dir={p['grpo']}", f"tracking.uri=sqlite:///{p['mlflow_db']}"]
    return load_config(config_path or default_config(), paths + list(overrides or []))


def copy_probe_items(world_dir: str, n: int = 100, split: str = "test") -> list[tuple[str, str, str, str]]:
    """(question, prompt, response prefix, answer) of `n` held-out clean demonstrations (real BM25 top-k, gold
    passage in), each response cut right after the final "<think> NAME ATTR is". Built once per probe set:
    it retrieves with BM25 over the whole corpus."""
    from zs_ray.world.files import load_world
    from zs_ray.world.prior_texts import warmstart_demos

    items = []
    for q, prompt, segs in warmstart_demos(load_world(world_dir), split, with_segments=True)[:n]:
        text = "".join(t for t, _ in segs)
        items.append((q.question, prompt, text[:text.rindex(" is ", 0, text.rindex("</think>")) + 3], q.answers[0]))
    return items


def copy_accuracy(model, tok, items, chat: bool) -> dict:
    """Share of `items` (copy_probe_items) whose answer the model copies from the documents, greedily.

    Copying the value out of the documents is the skill that limits a tiny policy (docs/experiments.md), so the
    prior stage reports it. `chat`: the chat-templated prompt (warm start) or the drills' "Question:" form.
    """
    import torch

    hits = {"year": [0, 0], "syllable": [0, 0]}
    for question, prompt, prefix, answer in items:
        ids = (tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True,
                                       return_dict=False) + tok.encode(prefix) if chat
               else tok.encode(f"Question: {question}\n" + prefix))
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)
        got = tok.decode(gen[0, len(ids):]).strip()
        kind = "year" if answer[0].isdigit() else "syllable"
        hits[kind][0] += got.startswith(answer + " .") or got == answer
        hits[kind][1] += 1
    total = [sum(h[i] for h in hits.values()) for i in (0, 1)]
    return {"all": total[0] / max(1, total[1]), **{k: h[0] / max(1, h[1]) for k, h in hits.items()}, "n": total[1]}


def warm_start(out: str, steps: int, seed: int = 0, progress=print, out_dir: Optional[str] = None,
               base: Optional[str] = None, warmup: int = 20, label: str = "warm-start") -> dict:
    """The format warm start: SFT of `base` (OUT/policy_pre) on the clean single-search demonstrations ->
    `out_dir` (OUT/policy_warm). The table's equal-compute SFT row continues it from the warm start."""
    from transformers import AutoTokenizer

    from zs_ray.sft.sft import encode_chat_example, sft_train

    p = quickstart_paths(out)
    tok = AutoTokenizer.from_pretrained(p["tokenizer"])
    demos = [json.loads(line) for line in open(p["warmstart"])]
    return sft_train(base or p["policy_pre"], [encode_chat_example(tok, d["prompt"], d["response"]) for d in demos],
                     tokenizer=tok, steps=steps, lr=1e-3, batch_size=8, warmup=warmup, seed=seed, threads=2,
                     out_dir=out_dir or p["policy_warm"], progress=progress, label=label, log_every=100)


def build_prior(out: str, pretrain_steps: int, warm_steps: int, seed: int = 0, progress=print,
                induction_steps: int = 0) -> dict:
    """The policy's prior, three steps (zs_ray/world/prior_texts.py says why; docs/experiments.md has the numbers):
    an induction head on clean repeats, then copy drills mixed with shuffled fact recall, then the format warm start.
    """
    import random

    from transformers import AutoTokenizer

    from zs_ray.sft.sft import encode_segments, encode_text_example, sft_train
    from zs_ray.world.prior_texts import PRETRAIN_SEPARATOR, fact_recall, induction_sequence
    from zs_ray.world.world import WORDS

    p = quickstart_paths(out)
    tok = AutoTokenizer.from_pretrained(p["tokenizer"])
    rng, model, seconds, tokens = random.Random(f"prior-{seed}"), p["policy_init"], 0.0, 0
    opt = dict(lr=2e-3, betas=(0.9, 0.95), warmup=50, seed=seed, threads=2, progress=progress, log_every=100)
    if induction_steps:
        ind = [encode_segments(tok, induction_sequence(rng, WORDS)) for _ in range(32 * induction_steps)]
        r = sft_train(model, ind, tokenizer=tok, steps=induction_steps, batch_size=32, label="induction", **opt)
        model, seconds, tokens = r["model"], r["seconds"], r["trained_tokens"]
        progress(f"[prior] induction: loss {r['final_loss']:.3f} on the repeats (~0.3 once an induction head formed)")
    texts = [t for t in open(p["pretrain"]).read().split(PRETRAIN_SEPARATOR) if t.strip()]
    # The drills' documents are context, not targets (as in RL): their values are random, so learning to predict
    # them only adds noise; masked, the loss is on the turns and recall answers that copy out of them. Held-out copy
    # accuracy after the warm start, 3,000 drill steps: 15 % -> 42 % / 35 % (seeds 0 / 1; 2026-12-01,
    # docs/experiments.md).
    examples = [encode_text_example(tok, t, mask_information=True) for t in texts]
    examples += [encode_segments(tok, segs) for t in texts for segs in fact_recall(rng, t)]
    pre = sft_train(model, examples, tokenizer=tok, steps=pretrain_steps, batch_size=8, out_dir=p["policy_pre"],
                    label="pretrain", **opt)
    warm = warm_start(out, warm_steps, seed, progress)
    items = copy_probe_items(p["world"])
    copy = {"prior": copy_accuracy(pre["model"], tok, items, chat=False),
            "warm": copy_accuracy(warm["model"], tok, items, chat=True)}
    progress(f"[prior] held-out copy accuracy: after pre-training {copy['prior']['all']:.1%}, "
             f"after the warm start {copy['warm']['all']:.1%}")
    return {"copy_accuracy": copy, "pretrain_loss": pre["final_loss"], "warm_loss": warm["final_loss"],
            "prior_seconds": seconds + pre["seconds"] + warm["seconds"],
            "prior_tokens": tokens + pre["trained_tokens"] + warm["trained_tokens"]}


def with_hops(rows: list[dict], world_dir: str) -> list[dict]:
    """The rows with each question's `hops` ([[entity, attribute], ...]) from the world's questions.jsonl: the
    parquet (Search-R1's columns) has none, and `simulator_sft.hop_aware` needs them."""
    with open(os.path.join(world_dir, "questions.jsonl"), encoding="utf-8") as f:
        hops = {q["id"]: q["hops"] for q in map(json.loads, f)}
    missing = [r.get("id") for r in rows if r.get("id") not in hops]
    if missing:
        raise ValueError(f"{world_dir}/questions.jsonl has no entry for {len(missing)} row ids, e.g. {missing[:3]}")
    return [{**r, "hops": hops[r["id"]]} for r in rows]


def train_simulator(out: str, steps: int, answer_weight: float, seed: int = 0, progress=print,
                    hop_aware: bool = False) -> dict:
    import shutil

    from zs_ray.data.qa import load_rows
    from zs_ray.sft.simulator_sft import run

    p = quickstart_paths(out)
    rows = load_rows(p["train"])
    if hop_aware:
        rows = with_hops(rows, p["world"])
    # Start from the copy-pre-trained model: a useful document must copy the answer from the prompt, the
    # same skill the policy needs (from random init the tiny simulator memorises instead of copying).
    res = run(p["policy_pre"], p["simulator_job"], questions=rows,
              corpus=p["corpus"], topk=3, steps=steps, seed=seed, log=progress,
              eval_questions=100, answer_weight=answer_weight, hop_aware=hop_aware)
    shutil.rmtree(p["simulator_sft"], ignore_errors=True)
    shutil.copytree(res["model_dir"], p["simulator_sft"])
    return {k: v for k, v in res.items() if isinstance(v, (int, float, str))}


def evaluate(cfg, model_path: str, max_rows: int, name: str, mode: str = "agent") -> dict:
    from omegaconf import OmegaConf

    from zs_ray.eval.evaluation import run_evaluation

    c = OmegaConf.merge(cfg, {"model": {"policy_path": model_path}})
    res = run_evaluation(c, mode=mode, max_rows=max_rows, out_dir=os.path.join(cfg.trainer.output_dir, os.pardir,
                                                                                f"eval_{name}"), progress=False,
                         search_choice="bm25")
    return res["summary"]


def run(out: str = "runs/quickstart", preset: str = "full", seed: int = 0, overrides=None, progress=print) -> dict:
    from zs_ray.runtime import quiet_logs

    out = os.path.abspath(out)
    b = PRESETS[preset]
    logs = quiet_logs(quickstart_paths(out)["logs"])
    where = (f"full logs (vLLM, Ray actors and Serve replicas) in {logs}; --verbose or ZS_RAY_VERBOSE=1 puts them on "
             f"the console" if logs else "verbose: every process logs to the console")
    progress(f"zs-ray quickstart, preset {preset}, outputs in {out}; {where}")
    cfg = quickstart_config(out, [f"trainer.steps={b['rl_steps']}", f"trainer.seed={seed}"] + list(overrides or []))
    # weights: the stages' seconds measured in the full preset (2026-12-01, runs/qs13; left = elapsed / done x left)
    st = Stages({"world": 10, "prior": 395, "simulator": 145, "eval warm start": 30, "grpo": 260, "eval grpo": 15},
                progress)
    results: dict = {"preset": preset, "seed": seed}
    st.run("world", write_world, out, seed=seed)
    # Training and evaluation (a vLLM engine) in child processes: their memory goes back to the OS before
    # the GRPO stage starts its actors (in_child_process).
    results.update(st.run("prior", build_prior, out, b["pretrain_steps"], b["warm_steps"], seed, progress,
                          b["induction_steps"], isolate=True))
    results["simulator"] = st.run("simulator", train_simulator, out, b["sim_steps"],
                                  cfg.simulator_sft.answer_weight, seed, progress, cfg.simulator_sft.hop_aware,
                                  isolate=True)
    warm = st.run("eval warm start", evaluate, cfg, f"{out}/policy_warm", b["eval_rows"], "warm", isolate=True)
    from zs_ray.train.trainer import run as train

    last = st.run("grpo", train, cfg, progress)
    final = st.run("eval grpo", evaluate, cfg, f"{out}/grpo/policy_hf", b["eval_rows"], "grpo")
    results.update({"warm": warm, "grpo": final, "grpo_last_step": last, "stage_seconds": st.times})
    table = results_table({"prior + warm start": warm, "GRPO + simulate_sft + curriculum": final})
    results["table"] = table
    progress("\n" + table)
    progress(f"\nMLflow: mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db --host 127.0.0.1  "
             f"(then open http://127.0.0.1:5000, experiment '{cfg.tracking.experiment}')")
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    progress(f"results in {out}/results.json" + (f"; full logs in {logs}" if logs else ""))
    return results


def results_table(rows: dict[str, dict]) -> str:
    lines = ["| row | held-out EM | cover-EM | F1 | searches/question |", "|---|---|---|---|---|"]
    for name, summ in rows.items():
        from zs_ray.eval.report import AVERAGE

        a = summ.get(AVERAGE) or next(iter(summ.values()))
        lines.append(f"| {name} | {100 * a['em']:.1f} | {100 * a['cover_em']:.1f} | {100 * a['f1']:.1f} | "
                     f"{a.get('searches', float('nan')):.2f} |")
    return "\n".join(lines)
