"""`zs-ray warmstart CONFIG.yaml [--base DIR] [--out DIR] [--steps N] [--batch-size B] [--lr LR] [key=value ...]`

The format warm start of a pretrained instruct model (--base, default the imported SmolLM2) on clean
demonstrations built from data.train_files with real BM25 search over search.corpus (zs_ray/sft/real_warmstart.py).
It writes the folder that the config's model.policy_path names (or --out), so `zs-ray train CONFIG` trains it."""
import argparse
import json
import sys


def main(argv):
    from zs_ray.config import load_config
    from zs_ray.runtime import apply_local_env
    from zs_ray.sft.real_warmstart import warm_start
    from zs_ray.tools.model_import import DEFAULT_OUT

    p = argparse.ArgumentParser(prog="zs-ray warmstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--base", default=DEFAULT_OUT, help=f"the model to warm-start (default {DEFAULT_OUT})")
    p.add_argument("--out", default=None, help="output folder (default: the config's model.policy_path)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config key=value overrides")
    a = p.parse_args(argv)
    apply_local_env()
    cfg = load_config(a.config, a.overrides)
    out = a.out or cfg.model.policy_path
    r = warm_start(cfg, a.base, out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    print(json.dumps({"out": out, "demos": r["demos"], "steps": r["steps"], "final_loss": round(r["final_loss"], 4),
                      "seconds": round(r["seconds"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
