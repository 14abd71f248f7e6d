"""The ZeroSearch seed's launch scripts, on zs-ray: `KEY VALUE` pairs -> config overrides -> `zs-ray train`.

    bash scripts/train_grpo.sh NUM_GPUS_PER_NODE 4 MODEL_PATH Llama-3.2-3B DATA_PATH ZeroSearch_dataset \\
        TOTAL_STEPS 203 IP localhost SEARCH_MODE simulate_prompt SIMULATION_LLM Qwen2.5-14B-Instruct \\
        START_THRESHOLD 0.25 END_THRESHOLD 0.5
    python -m zs_ray.tools.seed_compat grpo [--dry-run] [--recipe FILE] KEY VALUE ... [key=value ...]

What each seed key becomes (recipe: configs/recipes/seed_<algo>.yaml):

  NUM_GPUS_PER_NODE N   resources.device=cuda, policy_workers=N, rollout_workers=N (the seed's
                        colocated layout: one FSDP shard and one vLLM engine per GPU)
  MODEL_PATH P          model.policy_path=P (a known short name such as Llama-3.2-3B that is not a
                        local folder becomes its hub id, meta-llama/Llama-3.2-3B)
  DATA_PATH D           data.train_files=[D/train.parquet], data.test_files=[D/test.parquet]
  TOTAL_STEPS M         trainer.steps=M, curriculum.total_steps=M
  IP H                  search.urls=[http://H:6001/v1]: the seed's simulation server (sglang on port
                        6001, OpenAI-compatible); H may also be host:port or a full http(s) URL
  SEARCH_MODE S         search.backend=S (simulate_prompt | simulate_sft | any zs-ray backend)
  SIMULATION_LLM L      search.model_name=L (the name that server answers to) and
                        search.simulator_model=the hub id of L when known, else L
  START_THRESHOLD p_s   curriculum.start=p_s
  END_THRESHOLD p_e     curriculum.end=p_e

Arguments containing '=' after the pairs are passed through as zs-ray overrides. The overrides are
checked against the config schema and the hardware preflight before training starts.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Callable, Optional

import yaml

from zs_ray.paths import config_file

ALGORITHMS = ("grpo", "ppo", "reinforce")
SIMULATOR_PORT = 6001  # the seed's sglang server: --port 6001


class SeedArgError(ValueError):
    """A seed-style argument problem; the message names the key."""


def _int(key: str, v: str, minimum: int = 1) -> int:
    try:
        n = int(v)
    except ValueError:
        raise SeedArgError(f"{key} must be an integer, got {v!r}") from None
    if n < minimum:
        raise SeedArgError(f"{key} must be >= {minimum}, got {n}")
    return n


def _prob(key: str, v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise SeedArgError(f"{key} must be a number in [0, 1], got {v!r}") from None
    if not 0.0 <= x <= 1.0:
        raise SeedArgError(f"{key} must be in [0, 1], got {v}")
    return x


def _scalar(s: str) -> str:
    """`s` as a YAML scalar that OmegaConf reads back as exactly this string."""
    try:
        plain_ok = yaml.safe_load(s) == s and not any(c in s for c in ",[]{}#&*!|>'\"%@`") and ": " not in s
    except yaml.YAMLError:
        plain_ok = False
    return s if plain_ok and s else "'" + s.replace("'", "''") + "'"


def _str_list(items: list[str]) -> str:
    return "[" + ",".join(_scalar(x) for x in items) + "]"


def simulator_url(ip: str) -> str:
    ip = ip.strip().rstrip("/")
    if not ip:
        raise SeedArgError("IP must be a host name or address, got an empty value")
    if ip.startswith(("http://", "https://")):
        return ip if ip.endswith("/v1") else ip + "/v1"
    if ip.count(":") == 1:  # host:port
        return f"http://{ip}/v1"
    if ":" in ip:  # bare IPv6
        return f"http://[{ip}]:{SIMULATOR_PORT}/v1"
    return f"http://{ip}:{SIMULATOR_PORT}/v1"


def _hub_id(name: str) -> Optional[str]:
    from zs_ray.tools.hub import resolve

    a = resolve(name)
    return a.repo_id if a is not None and a.repo_type == "model" else None


def _model_path(v: str) -> list[str]:
    if not v:
        raise SeedArgError("MODEL_PATH must not be empty")
    if not os.path.exists(v):
        hub = _hub_id(v)
        if hub:
            return [f"model.policy_path={_scalar(hub)}"]
    return [f"model.policy_path={_scalar(v)}"]


def _data_path(v: str) -> list[str]:
    d = v.rstrip("/") or v
    return [f"data.train_files={_str_list([d + '/train.parquet'])}",
            f"data.test_files={_str_list([d + '/test.parquet'])}"]


def _gpus(v: str) -> list[str]:
    n = _int("NUM_GPUS_PER_NODE", v)
    return ["resources.device=cuda", f"resources.policy_workers={n}", f"resources.rollout_workers={n}"]


def _steps(v: str) -> list[str]:
    m = _int("TOTAL_STEPS", v)
    return [f"trainer.steps={m}", f"curriculum.total_steps={m}"]


def _search_mode(v: str) -> list[str]:
    from zs_ray.config import SEARCH_BACKENDS

    if v not in SEARCH_BACKENDS:
        raise SeedArgError(f"SEARCH_MODE must be one of {', '.join(SEARCH_BACKENDS)}, got {v!r}")
    return [f"search.backend={v}"]


def _simulation_llm(v: str) -> list[str]:
    if not v:
        raise SeedArgError("SIMULATION_LLM must not be empty")
    model = v if os.path.exists(v) else (_hub_id(v) or v)
    return [f"search.model_name={_scalar(v)}", f"search.simulator_model={_scalar(model)}"]


SEED_KEYS: dict[str, Callable[[str], list[str]]] = {
    "NUM_GPUS_PER_NODE": _gpus,
    "MODEL_PATH": _model_path,
    "DATA_PATH": _data_path,
    "TOTAL_STEPS": _steps,
    "IP": lambda v: [f"search.urls={_str_list([simulator_url(v)])}"],
    "SEARCH_MODE": _search_mode,
    "SIMULATION_LLM": _simulation_llm,
    "START_THRESHOLD": lambda v: [f"curriculum.start={_prob('START_THRESHOLD', v)}"],
    "END_THRESHOLD": lambda v: [f"curriculum.end={_prob('END_THRESHOLD', v)}"],
}


def parse_pairs(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Seed `KEY VALUE` pairs, then pass-through `key=value` overrides."""
    pairs: dict[str, str] = {}
    extra: list[str] = []
    i = 0
    valid = ", ".join(SEED_KEYS)
    while i < len(args):
        a = args[i]
        if "=" in a and a.split("=", 1)[0] not in SEED_KEYS:
            extra.append(a)
            i += 1
            continue
        if a not in SEED_KEYS:
            raise SeedArgError(f"unknown key {a!r}; valid keys: {valid} (or zs-ray key=value overrides)")
        if i + 1 >= len(args):
            raise SeedArgError(f"missing value for {a}")
        v = args[i + 1]
        if v in SEED_KEYS:
            raise SeedArgError(f"missing value for {a} (the next argument is the key {v})")
        if a in pairs:
            raise SeedArgError(f"{a} is given twice")
        pairs[a] = v
        i += 2
    return pairs, extra


def seed_overrides(args: list[str]) -> list[str]:
    """The zs-ray overrides for a seed argument list (pairs first, pass-through overrides last)."""
    pairs, extra = parse_pairs(args)
    out: list[str] = []
    for key, fn in SEED_KEYS.items():  # fixed order: a stable command line
        if key in pairs:
            out.extend(fn(pairs[key]))
    return out + extra


def recipe_for(algo: str) -> str:
    if algo not in ALGORITHMS:
        raise SeedArgError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algo!r}")
    return config_file("recipes", f"seed_{algo}.yaml")


def build_command(algo: str, args: list[str], recipe: Optional[str] = None) -> list[str]:
    """`zs-ray train RECIPE overrides...` as an argument list; validates the overrides."""
    from zs_ray.config import load_config

    recipe = recipe or recipe_for(algo)
    rel = os.path.relpath(recipe)
    if not rel.startswith(".."):
        recipe = rel  # shorter, and the same file when run from the repository root (the scripts cd there)
    overrides = [f"algorithm.name={algo}"] + seed_overrides(args)
    load_config(recipe, overrides)  # ConfigError names the key
    return ["zs-ray", "train", recipe] + overrides


def main(argv: Optional[list[str]] = None) -> int:
    from zs_ray.config import ConfigError

    p = argparse.ArgumentParser(
        prog="python -m zs_ray.tools.seed_compat",
        description="Run a ZeroSearch seed command line (KEY VALUE pairs) on zs-ray.",
        epilog=f"seed keys: {', '.join(SEED_KEYS)}; arguments with '=' pass through as zs-ray overrides")
    p.add_argument("algorithm", choices=ALGORITHMS)
    p.add_argument("--dry-run", action="store_true", help="print the zs-ray command and exit")
    p.add_argument("--recipe", help="config file to start from (default configs/recipes/seed_<algorithm>.yaml)")
    p.add_argument("--skip-preflight", action="store_true",
                   help="do not check this machine's GPUs and the config's paths first")
    ns, rest = p.parse_known_args(argv)
    try:
        cmd = build_command(ns.algorithm, rest, ns.recipe)
    except (SeedArgError, ConfigError) as e:
        print(f"seed_compat: error: {e}", file=sys.stderr)
        return 2
    if ns.dry_run:
        print(shlex.join(cmd))
        return 0
    if not ns.skip_preflight:
        from zs_ray.config import load_config
        from zs_ray.preflight import PreflightError, check_config

        try:
            check_config(load_config(cmd[2], cmd[3:]), "train")
        except PreflightError as e:
            print(f"seed_compat: {e}", file=sys.stderr)
            return 3
    # `python -m zs_ray.cli` is the `zs-ray` console script, without depending on PATH.
    return subprocess.call([sys.executable, "-m", "zs_ray.cli"] + cmd[1:])


if __name__ == "__main__":
    sys.exit(main())
