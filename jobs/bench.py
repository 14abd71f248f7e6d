"""`zs-ray bench [--quick] [--config CONFIG.yaml] [key=value ...]`: the framework's figures as ratios of two
variants measured alternately in the same run (zs_ray/bench/runner.py); prints the table, writes BENCHMARKS.md
and logs to MLflow (experiment "zs-ray-bench", runs/bench/mlflow.db). The device comes from the config
(resources.device), so the same command runs on a GPU cluster."""
import argparse
import os
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(prog="zs-ray bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small preset (~10 min on 2 CPU cores); quickstart 'smoke'")
    p.add_argument("--config", default=None, help="base config (default configs/cpu_default.yaml)")
    p.add_argument("--work", default=None, help="work dir (default runs/bench/{quick,full})")
    p.add_argument("--out", default=None, help="markdown file to update (default BENCHMARKS.md)")
    p.add_argument("--models", default=None, help="a finished quickstart's output dir (`zs-ray quickstart --out`): "
                   "the figures run its world, warm-started policy and simulator (default: figure 5's quickstart "
                   "in the full preset, else the bench's own small models)")
    p.add_argument("--skip", action="append", default=[], help="skip a figure by its name, e.g. '5. quickstart'")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return p.parse_args(argv)


def main(argv):
    a = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool
    from zs_ray.bench.runner import run

    rows = run(quick=a.quick, config=a.config, overrides=a.overrides, work=a.work, out_md=a.out, skip=a.skip,
               models=a.models)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
