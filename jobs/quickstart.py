"""`zs-ray quickstart [--out DIR] [--preset full|long|smoke] [--seed N] [key=value ...]`: the whole
ZeroSearch method on this CPU — world, tiny models, simulator fine-tuning, GRPO with the simulated
search engine under the curriculum, evaluation with real BM25 search, and the results table."""
import argparse
import sys

from zs_ray.world.quickstart import PRESETS  # a dict; importing it loads no Ray, torch or vLLM


def main(argv):
    p = argparse.ArgumentParser(prog="zs-ray quickstart", description=__doc__)
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true",
                   help="every process's log on the console (default: progress and results; the logs in OUT/logs)")
    p.add_argument("overrides", nargs="*", help="config overrides for the GRPO run, key=value")
    a = p.parse_args(argv)
    import os

    if a.verbose:
        os.environ["ZS_RAY_VERBOSE"] = "1"
    from zs_ray.runtime import apply_local_env

    apply_local_env()
    from zs_ray.world.quickstart import run

    run(a.out, a.preset, a.seed, a.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
