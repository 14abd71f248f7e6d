"""`zs-ray chaos [--steps 30] [--seed 0] [--out runs/chaos]`: one training run during which a rollout worker, a
simulator replica, the MLflow server and the driver are each killed at a random step; then checks that it ended
as an unfaulted run would (zs_ray/bench/chaos.py). Exit 1 when a check fails. On 2 CPU cores a 6-step run
took 5.6 min (2026-12-07), most of it starting and restarting engines; a step without a fault takes ~4 s."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script


def main(argv=None):
    p = argparse.ArgumentParser(prog="zs-ray chaos", description=__doc__)
    p.add_argument("--steps", type=int, default=30, help="training steps (at least 5: one fifth per fault)")
    p.add_argument("--seed", type=int, default=0, help="where the faults strike, and the run's seed")
    p.add_argument("--out", default="runs/chaos", help="work folder (world, logs, MLflow store, chaos.json)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.steps < 5:
        p.error("--steps must be at least 5")
    from zs_ray.bench.chaos import run_chaos

    return 0 if run_chaos(a.out, steps=a.steps, seed=a.seed)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
