"""Rollout throughput with search: 16 prompts x 5 samples, multi-turn, BM25 over a small corpus.

    python -m zs_ray.bench.rollout_bench                 # vLLM in-process, CPU default tiny policy
    python -m zs_ray.bench.rollout_bench --engine hf     # transformers fallback
    python -m zs_ray.bench.rollout_bench --ray           # through a RolloutWorker actor
    python -m zs_ray.bench.rollout_bench --model PATH    # e.g. a warm-started policy (searches more)

Prints sampled tokens/s (policy tokens, mask 1) and all tokens/s (with the information blocks).
A random-init policy rarely emits tags, so most turns end as invalid actions with feedback.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time

from zs_ray.runtime import apply_local_env


def make_data(out_dir: str, n_docs: int = 400, n_prompts: int = 16, seed: int = 0):
    rng = random.Random(seed)
    syl = ["ka", "lo", "mer", "tan", "vo", "ril", "zan", "dor", "pe", "sul", "gra", "nim", "tho", "bex", "quo"]
    name = lambda: " ".join(rng.choice(syl) for _ in range(2))  # noqa: E731
    facts = [(name(), rng.choice(["capital", "river", "founder", "school"]), name()) for _ in range(n_docs)]
    corpus = os.path.join(out_dir, "corpus.jsonl")
    with open(corpus, "w") as f:
        for i, (e, a, v) in enumerate(facts):
            f.write(json.dumps({"id": str(i), "contents": f'"{e}"\n{e} {a} is {v} . {e} is a place .'}) + "\n")
    from zs_ray.core.protocol import make_prompt

    rows = [{"prompt_id": f"bench-{i}", "data_source": "bench", "question": f"what is the {a} of {e}",
             "golden_answers": [v], "prompt": [{"role": "user", "content": make_prompt(f"what is the {a} of {e}")}],
             "reward_model": {"ground_truth": {"target": [v]}}} for i, (e, a, v) in enumerate(facts[:n_prompts])]
    return corpus, rows


def summarize(trajs: list[dict], wall: float) -> dict:
    sampled = sum(sum(t["loss_mask"]) for t in trajs)
    total = sum(len(t["response_ids"]) for t in trajs)
    n = len(trajs)
    return {"trajectories": n, "wall_s": round(wall, 2), "sampled_tokens": sampled, "all_response_tokens": total,
            "sampled_tok_per_s": round(sampled / wall, 1), "all_tok_per_s": round(total / wall, 1),
            "turns_per_traj": round(sum(t["n_turns"] for t in trajs) / n, 2),
            "searches_per_traj": round(sum(t["searches"] for t in trajs) / n, 2),
            "invalid_per_traj": round(sum(t["invalid_actions"] for t in trajs) / n, 2),
            "answered": sum(t["answer"] is not None for t in trajs),
            "finish": {r: sum(t["finish_reason"] == r for t in trajs) for r in {t["finish_reason"] for t in trajs}}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--model", default=None, help="HF model dir (default: build the CPU default tiny policy)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-turn-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="run through a RolloutWorker actor")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP/torch threads; >1 oversubscribes a shared 2-core box (measured 10x slower under load)")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "zs_rollout_bench"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch / vLLM start their thread pools
    apply_local_env(args.work_dir)
    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    corpus, rows = make_data(args.work_dir, n_prompts=args.prompts)
    model = args.model
    if model is None:
        from zs_ray.world.tiny_models import build_test_assets

        model = build_test_assets(os.path.join(args.work_dir, "assets"), size="policy")["model"]
    rollout_cfg = dict(engine=args.engine, max_turns=args.max_turns, max_turn_tokens=args.max_turn_tokens,
                       max_obs_tokens=512, max_context_tokens=2048, max_num_seqs=128, kv_cache_gb=0.5)
    search_cfg = {"backend": "bm25", "corpus": corpus, "index_dir": os.path.join(args.work_dir, "bm25"), "topk": 3}
    t = time.perf_counter()
    if args.ray:
        import ray

        from actors.rollout_worker import RolloutWorker
        from zs_ray.core.rollout import RolloutRequest
        from zs_ray.runtime import init_ray

        init_ray(num_cpus=4)
        w = RolloutWorker.options(num_cpus=1).remote(model, rollout_cfg, search_cfg, 0, 0, "cpu")
        info = ray.get(w.ready.remote())
        run = lambda step: ray.get(w.rollout.remote(rows, RolloutRequest(args.samples, step)))  # noqa: E731
    else:
        from actors.rollout_worker import build_search_backend
        from zs_ray.core.rollout import run_rollouts
        from zs_ray.engines.engine import make_engine

        kw = dict(max_model_len=2048, max_num_seqs=128)
        if args.engine == "vllm":
            kw["kv_cache_gb"] = 0.5
        engine = make_engine(args.engine, model, **kw)
        search = build_search_backend(search_cfg)
        t_w = time.perf_counter()
        asyncio.run(engine.generate([engine.tokenizer.eos_token_id], max_tokens=2, temperature=0.0))
        info = {"startup_s": round(engine.startup_s, 2), "warmup_s": round(time.perf_counter() - t_w, 2)}

        def run(step):
            trajs = asyncio.run(run_rollouts(engine, search, rows, args.samples, rollout_cfg=rollout_cfg,
                                             step=step, seed=0))
            return [x.to_dict() for x in trajs]
    print(json.dumps({"engine": args.engine, "ray": args.ray, "threads": args.threads, "model": model, "up_s": round(time.perf_counter() - t, 2),
                      **{k: v for k, v in info.items() if k.endswith("_s")}}))
    for rep in range(args.repeats):  # the first repeat includes warm-up of new batch shapes
        t = time.perf_counter()
        trajs = run(rep)
        print(json.dumps({"repeat": rep, **summarize(trajs, time.perf_counter() - t)}))


if __name__ == "__main__":
    main()
