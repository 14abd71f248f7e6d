"""Entry point: `zs-ray serve CONFIG.yaml [--once] [--name agent] [--route-prefix /] [key=value ...]`
(or, on a cluster, `ray job submit --working-dir . -- python jobs/serve.py CONFIG.yaml ...`).

Deploys the trained agent (model.policy_path on rollout.engine, greedy) with the configured search
backend as a Ray Serve app on search.http_host:search.http_port (127.0.0.1:8000 by default):
`POST /ask {"question": ...}` and `POST /v1/chat/completions`. A Serve-hosted simulator backend
(simulate_* without search.urls) is deployed first, at /simulator. Blocks until Ctrl-C;
`--once` deploys, checks /healthz, prints the URL and returns (Serve stays up on a shared cluster).
The paper serves with real search: e.g. `search.backend=bm25 search.corpus=corpus.jsonl`.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script


def parse_args(argv):
    p = argparse.ArgumentParser(prog="zs-ray serve", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--once", action="store_true", help="deploy, print the URL and return")
    p.add_argument("--name", default="agent", help="Serve application name")
    p.add_argument("--route-prefix", default="/", help="HTTP route prefix of the app")
    ns, rest = p.parse_known_args(argv)
    bad = [a for a in rest if a.startswith("-") or "=" not in a]
    if bad:
        p.error(f"unknown arguments {bad} (config overrides are key=value)")
    return ns, rest


def deploy(cfg, name: str = "agent", route_prefix: str = "/"):
    """Deploy the agent (and a Serve simulator when the backend needs one); returns (handle, url)."""
    from actors.agent_server import deploy_agent
    from zs_ray.config import to_dict
    from zs_ray.preflight import serves_simulator

    d = to_dict(cfg)
    r = cfg.resources
    if serves_simulator(cfg):
        from actors.simulator import deploy_simulator
        deploy_simulator(d["search"], cfg.search.simulator_model, name=d["search"].get("app_name", "simulator"),
                         replicas=r.simulator_replicas, num_cpus=r.cpus_per_simulator, num_gpus=r.gpus_per_simulator,
                         seed=cfg.trainer.seed, threads=r.threads_per_actor, route_prefix="/simulator")
    return deploy_agent(d, name=name, route_prefix=route_prefix, num_cpus=r.cpus_per_rollout_worker,
                        num_gpus=r.gpus_per_rollout_worker, threads=r.threads_per_actor)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from zs_ray.config import load_config
    from zs_ray.runtime import apply_local_env, init_ray

    ns, overrides = parse_args(argv)
    apply_local_env()
    cfg = load_config(ns.config, overrides)
    from zs_ray.preflight import check_config

    check_config(cfg, "serve")  # the paths it reads, before Ray
    init_ray(num_cpus=cfg.resources.num_cpus)
    try:
        _, url = deploy(cfg, ns.name, ns.route_prefix)
    except RuntimeError as e:  # DeployError, or Serve's own for a simulator that failed to start
        print(f"zs-ray serve: {e}", file=sys.stderr)
        return 1

    import requests
    health = requests.get(f"{url}/healthz", timeout=30).json()
    print(f"zs-ray agent '{ns.name}' serving {cfg.model.policy_path} with {health.get('search')} search at {url}")
    print(f"  curl -s {url}/ask -H 'Content-Type: application/json' -d '{{\"question\": \"...\"}}'")
    print(f"  OpenAI-compatible: {url}/v1/chat/completions")
    if ns.once:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve
        serve.delete(ns.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
