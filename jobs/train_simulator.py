"""`zs-ray simulator train CONFIG`: fine-tune the search simulator (zs_ray/sft/simulator_sft.py).

Reads the `simulator_sft` section (zs_ray.config.SimulatorSFTConfig) and falls back to the
run config: corpus <- search.corpus, questions <- data.train_files, base model <- a fresh tiny
simulator on the tokenizer of model.policy_path. Writes <output_dir>/model (safetensors +
tokenizer: point search.simulator_model at it), the SFT set and eval.json; prints and returns the
held-out numbers (useful generations containing the answer, noisy ones containing it).
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
        if args and args[0] == "train":
            args = args[1:]
        if not args or args[0] in ("-h", "--help"):
            print(__doc__)
            return {}
        from zs_ray.config import load_config
        from zs_ray.preflight import check_config
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
    questions = load_rows(sft.questions or data.get("train_files") or [])
    if sft.max_questions:
        questions = questions[: sft.max_questions]
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
                 eval_temperature=sft.eval_temperature, answer_first=sft.answer_first,
                 answer_aware=sft.answer_aware, hop_aware=sft.hop_aware, seed=sft.seed,
                 steps=sft.steps, batch_size=sft.batch_size,
                 lr=sft.lr, weight_decay=sft.weight_decay, warmup_steps=sft.warmup_steps, grad_clip=sft.grad_clip,
                 max_doc_words=sft.max_doc_words, answer_weight=sft.answer_weight, threads=sft.threads)
    print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
    print(f"set search.simulator_model={result['model_dir']}")
    return result


if __name__ == "__main__":  # python -m jobs.train_simulator CONFIG [key=value ...]
    main(sys.argv[1:])
