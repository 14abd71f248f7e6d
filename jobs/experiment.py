"""`zs-ray experiment table [--out DIR] [--preset full|long|smoke] [--rl-steps N] [--warm-steps N] [--seed N] [--rows NAME ...]`:
the paper's table in miniature (warm start, equal-compute SFT, GRPO with real search, ZeroSearch, prompt-based
simulator, no curriculum, PPO, REINFORCE, no search at test time) as markdown, CSV and a PNG plot.

`zs-ray experiment collect ROW=EVAL_DIR ... [--out FILE.md]`: the same table's columns (EM per source, the
average with its standard error, F1) from `zs-ray eval` output folders, e.g. the rows of the real-model table."""
import argparse
import sys

from zs_ray.world.quickstart import PRESETS  # a dict; importing it loads no Ray, torch or vLLM


def main(argv):
    p = argparse.ArgumentParser(prog="zs-ray experiment", description=__doc__)
    p.add_argument("action", choices=["table", "collect"])
    p.add_argument("rows_dirs", nargs="*", metavar="ROW=EVAL_DIR", help="collect: a row name and its eval folder")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--preset", default="full", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rl-steps", type=int, default=None,
                   help="RL steps of every RL row (default: the preset's); the SFT row gets as many demonstrations "
                        "as RL samples trajectories; results go to OUT/table_rlN")
    p.add_argument("--warm-steps", type=int, default=None,
                   help="start every row from a warm start of N steps (OUT/policy_warmN, built from OUT/policy_pre if "
                        "missing) instead of the preset's; results go to OUT/table[_rlM]_warmN")
    p.add_argument("--rows", nargs="*", default=None, help="only these RL rows (names as in the table)")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate rows whose policy is already trained under OUT/table (OUT/table_rlN with --rl-steps) "
                        "instead of training again")
    a = p.parse_args(argv)
    if a.action == "collect":
        return collect(p, a.rows_dirs, a.out if a.out.endswith(".md") else None)
    from zs_ray.runtime import apply_local_env

    apply_local_env()
    from zs_ray.world.experiment import run_table

    for flag, v in (("--rl-steps", a.rl_steps), ("--warm-steps", a.warm_steps)):
        if v is not None and v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    run_table(a.out, a.preset, a.seed, a.rows, reuse=a.reuse, rl_steps=a.rl_steps, warm_steps=a.warm_steps)
    return 0


def collect(p, pairs, out_md):
    from zs_ray.eval.real_table import table

    bad = [x for x in pairs if "=" not in x]
    if not pairs or bad:
        p.error(f"collect needs ROW=EVAL_DIR arguments{', got ' + ' '.join(bad) if bad else ''}")
    try:
        md, csv_text = table(dict(x.split("=", 1) for x in pairs))
    except FileNotFoundError as e:
        print(f"zs-ray experiment collect: {e}", file=sys.stderr)
        return 2
    print(md)
    if out_md:
        with open(out_md, "w") as f:
            f.write(md + "\n")
        with open(out_md[:-3] + ".csv", "w") as f:
            f.write(csv_text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
