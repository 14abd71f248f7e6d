"""`zs-ray bench [--quick] [--config CONFIG.yaml] [key=value ...]`: the framework's figures as ratios of two
variants measured alternately in the same run (zs_ray/bench/runner.py); prints the table, writes BENCHMARKS.md
and logs to MLflow (experiment "zs-ray-bench", runs/bench/mlflow.db). The device comes from the config
(resources.device), so the same command runs on a GPU cluster.

`zs-ray bench peer [--config CONFIG.yaml] [--steps N] [key=value ...]`: zs-ray beside TRL's GRPOTrainer on the
same single-turn task and settings (zs_ray/bench/peer.py); writes the `peer` section of BENCHMARKS.md."""
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


def peer_main(argv):
    p = argparse.ArgumentParser(prog="zs-ray bench peer", description="zs-ray beside TRL's GRPOTrainer on the same "
                                "single-turn task, model and settings (zs_ray/bench/peer.py)")
    p.add_argument("--config", default="configs/real_smollm2.yaml", help="both sides' settings (default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="training steps per side (default %(default)s)")
    p.add_argument("--eval-rows", type=int, default=100, help="held-out questions for the final evaluation")
    p.add_argument("--format-steps", type=int, default=30, help="SFT steps on the answer tags before both sides "
                   "start (0: start from model.policy_path as it is; default %(default)s)")
    p.add_argument("--work", default="runs/bench/peer", help="work dir (default %(default)s)")
    p.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose `peer` section is rewritten")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (both sides)")
    a = p.parse_args(argv)
    import importlib.util
    import json

    if importlib.util.find_spec("trl") is None:
        print("zs-ray bench peer: TRL is not installed: pip install -e '.[bench]' (or bash scripts/install.sh "
              "cpu,dev,bench)", file=sys.stderr)
        return 2
    from zs_ray.bench.peer import compare, markdown
    from zs_ray.bench.report import machine, write_section

    res = compare(a.config, a.overrides, steps=a.steps, eval_rows=a.eval_rows, work=a.work,
                  format_steps=a.format_steps)
    command = " ".join(["zs-ray bench peer", f"--config {a.config}", f"--steps {a.steps}",
                        f"--eval-rows {a.eval_rows}", f"--format-steps {a.format_steps}", *a.overrides])
    md = markdown(res, machine(), command)
    with open(os.path.join(a.work, "result.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(md)
    write_section(a.out, "peer", md)
    print(f"[bench peer] written: the `peer` section of {a.out}; every step of both sides in {a.work}/result.json")
    return 0


def main(argv):
    if argv[:1] == ["peer"]:
        return peer_main(argv[1:])
    a = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool
    from zs_ray.bench.runner import run

    rows = run(quick=a.quick, config=a.config, overrides=a.overrides, work=a.work, out_md=a.out, skip=a.skip,
               models=a.models)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
