"""`zs-ray COMMAND [CONFIG.yaml] [key=value ...]` — dispatches to the entry points in jobs/."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    # name: (jobs module, help)
    "quickstart": ("jobs.quickstart", "CPU quickstart: world, tiny models, simulator SFT, GRPO, evaluation"),
    "world": ("jobs.world", "build the synthetic world (`zs-ray world build [--out DIR] [--seed N]`)"),
    "train": ("jobs.train", "train a policy: zs-ray train CONFIG.yaml [key=value ...]"),
    "simulator": ("jobs.train_simulator", "simulator jobs: zs-ray simulator train CONFIG.yaml [key=value ...]"),
    "eval": ("jobs.evaluate", "evaluate a policy: zs-ray eval CONFIG.yaml [key=value ...]"),
    "serve": ("jobs.serve", "serve the trained agent: zs-ray serve CONFIG.yaml [key=value ...]"),
    "bench": ("jobs.bench", "benchmarks: zs-ray bench [--quick]"),
    "chaos": ("jobs.chaos", "kill a run's parts at random steps, check nothing was lost: zs-ray chaos [--steps N]"),
    "experiment": ("jobs.experiment", "the paper's table in miniature: zs-ray experiment table"),
    "models": ("jobs.models", "import a GGUF checkpoint as an HF folder: zs-ray models import [--gguf PATH] [--out DIR]"),
    "warmstart": ("jobs.warmstart", "format warm start of a pretrained model on real questions: zs-ray warmstart CONFIG"),
    "data": ("jobs.data", "real question sets and passages: zs-ray data real [--src DIR] [--out DIR]"),
    "download": ("zs_ray.tools.hub", "download public models/datasets from the Hugging Face hub"),
    "config": ("jobs.show_config", "print the resolved config: zs-ray config CONFIG.yaml [key=value ...]"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="zs-ray", description="Ray-native ZeroSearch: train LLM search agents with simulated search.",
        epilog="Run `zs-ray COMMAND --help` for a command's options.")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    ns = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[ns.command][0])
    from zs_ray.config import ConfigError
    from zs_ray.preflight import PreflightError

    try:
        rc = module.main(argv[1:])
        return rc if isinstance(rc, int) else 0  # some jobs return their results
    except ConfigError as e:
        print(f"zs-ray {ns.command}: config error: {e}", file=sys.stderr)
        return 2
    except PreflightError as e:  # the message lists every problem: a traceback would only hide it
        print(f"zs-ray {ns.command}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
