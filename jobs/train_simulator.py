"""`zs-ray simulator train|eval CONFIG`: fine-tune the search simulator (zs_ray/sft/simulator_sft.py), or measure one.

train: reads the `simulator_sft` section (zs_ray.config.SimulatorSFTConfig) and falls back to the
run config: corpus <- search.corpus, questions <- data.train_files, base model <- a fresh tiny
simulator on the tokenizer of model.policy_path. Writes <output_dir>/model (safetensors +
tokenizer: point search.simulator_model at it), the SFT set and eval.json; prints and returns the
held-out numbers (useful generations containing the answer, noisy ones containing it).

eval [--mode simulate_sft|simulate_prompt] [--model PATH] [--out FILE]: the same held-out numbers, on the
same held-out questions, for any simulator: by default the fine-tuned one (<output_dir>/model), with
--mode simulate_prompt the instruct model of search.simulator_model and the paper's prompt. Writes
<output_dir>/eval_<mode>.json.
"""
from __future__ import annotations

import json
import os
import sys


def _as_dict(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return dict(cfg or {})


def main(cfg) -> dict:
    """`cfg`: a loaded config, or CLI args `[train] CONFIG.yaml key=value ...` (from `zs-ray simulator`)."""
    if isinstance(cfg, (list, tuple)):
        args = list(cfg)
        command = args.pop(0) if args and args[0] in ("train", "eval") else "train"
        if not args or args[0] in ("-h", "--help"):
            print(__doc__)
            return {}
        from zs_ray.config import load_config
        from zs_ray.preflight import check_config
        if command == "eval":
            return evaluate(args)
        cfg = load_config(args[0], args[1:])
        check_config(cfg, "simulator")  # the model, questions, corpus it reads, before anything starts
    from zs_ray.config import SimulatorSFTConfig
    from zs_ray.runtime import apply_local_env
    from zs_ray.sft.simulator_data import load_rows
    from zs_ray.sft.simulator_sft import run

    c = _as_dict(cfg)
    sft = SimulatorSFTConfig(**(c.get("simulator_sft") or {}))  # keys already checked by the schema
    apply_local_env(os.path.dirname(os.path.abspath(sft.output_dir)))
    search, data, model = c.get("search") or {}, c.get("data") or {}, c.get("model") or {}
    corpus = sft.corpus or search.get("corpus")
    questions = _questions(sft, data)
    trajectories = load_rows(sft.trajectories)
    base = sft.base_model
    if base is None:  # the CPU default: a fresh tiny simulator sharing the policy's tokenizer
        from zs_ray.world.tiny_models import make_tiny_model
        tok_dir = model.get("policy_path")
        if not tok_dir:
            raise ValueError("simulator_sft.base_model is unset and model.policy_path has no tokenizer to reuse")
        base = make_tiny_model(tok_dir, os.path.join(sft.output_dir, "base"), size="simulator", seed=sft.seed)
    index = None
    if corpus and questions:
        from zs_ray.search.retrieval import BM25Index
        index_dir = search.get("index_dir")
        index = BM25Index.load_or_build(corpus, index_dir) if index_dir else BM25Index.build(corpus)
    result = run(base, sft.output_dir, questions=questions, index=index, trajectories=trajectories,
                 topk=sft.topk, heldout_frac=sft.heldout_frac, eval_questions=sft.eval_questions,
                 eval_temperature=sft.eval_temperature, eval_max_tokens=sft.eval_max_tokens,
                 eval_engine=sft.eval_engine, eval_repetition_penalty=float(search.get("repetition_penalty", 1.0)),
                 answer_first=sft.answer_first, answer_aware=sft.answer_aware,
                 hop_aware=sft.hop_aware, seed=sft.seed, steps=sft.steps, batch_size=sft.batch_size,
                 lr=sft.lr, weight_decay=sft.weight_decay, warmup_steps=sft.warmup_steps, grad_clip=sft.grad_clip,
                 max_doc_words=sft.max_doc_words, answer_weight=sft.answer_weight, threads=sft.threads,
                 trainable_layers=sft.trainable_layers)
    print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
    print(f"set search.simulator_model={result['model_dir']}")
    return result


def _questions(sft, data: dict) -> list[dict]:
    from zs_ray.sft.simulator_data import load_rows
    questions = load_rows(sft.questions or data.get("train_files") or [])
    return questions[: sft.max_questions] if sft.max_questions else questions


def evaluate(args: list[str]) -> dict:
    """`zs-ray simulator eval CONFIG [--mode M] [--model PATH] [--out FILE] [key=value ...]`."""
    import argparse

    from zs_ray.config import SimulatorSFTConfig, load_config
    from zs_ray.core.simulator_prompts import MODES
    from zs_ray.runtime import apply_local_env
    from zs_ray.sft.simulator_data import split_questions
    from zs_ray.sft.simulator_sft import evaluate_and_report

    ap = argparse.ArgumentParser(prog="zs-ray simulator eval")
    ap.add_argument("config")
    ap.add_argument("--mode", choices=MODES, default="simulate_sft")
    ap.add_argument("--model", default=None, help="default: <simulator_sft.output_dir>/model for simulate_sft, "
                                                  "search.simulator_model for simulate_prompt")
    ap.add_argument("--out", default=None, help="default: <simulator_sft.output_dir>/eval_<mode>.json")
    ns, overrides = ap.parse_known_args(args)
    c = _as_dict(load_config(ns.config, overrides))
    sft = SimulatorSFTConfig(**(c.get("simulator_sft") or {}))
    model = ns.model or (os.path.join(sft.output_dir, "model") if ns.mode == "simulate_sft"
                         else (c.get("search") or {}).get("simulator_model"))
    if not model or not os.path.isdir(model):
        key = "--model" if ns.model else ("simulator_sft.output_dir" if ns.mode == "simulate_sft"
                                          else "search.simulator_model")
        raise SystemExit(f"zs-ray simulator eval: {key}: no model folder at {model!r}"
                         + (" (run `zs-ray simulator train` first)" if key == "simulator_sft.output_dir" else ""))
    apply_local_env(os.path.dirname(os.path.abspath(sft.output_dir)))
    _, held = split_questions(_questions(sft, c.get("data") or {}), sft.heldout_frac, sft.seed)
    if not held:
        raise SystemExit("zs-ray simulator eval: no held-out questions (simulator_sft.heldout_frac is 0)")
    out = ns.out or os.path.join(sft.output_dir, f"eval_{ns.mode}.json")
    ev = evaluate_and_report(model, held[: sft.eval_questions], out, mode=ns.mode, k=sft.topk,
                             temperature=sft.eval_temperature, max_new_tokens=sft.eval_max_tokens,
                             engine=sft.eval_engine, seed=sft.seed, threads=sft.threads,
                             repetition_penalty=float((c.get("search") or {}).get("repetition_penalty", 1.0)))
    print(f"wrote {out}")
    return ev


if __name__ == "__main__":  # python -m jobs.train_simulator CONFIG [key=value ...]
    main(sys.argv[1:])
