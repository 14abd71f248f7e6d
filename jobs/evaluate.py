"""Entry point: `zs-ray eval CONFIG.yaml [--mode agent|direct|rag] [--search bm25|retriever|simulator]
[--max-rows N] [--out DIR] [--no-progress] [--no-tracking] [key=value ...]` (or `python jobs/evaluate.py ...`).

Evaluates `model.policy_path` (a zs-ray export or any HF model path) on `data.test_files` with greedy
decoding and, as the paper does, real search: BM25 over `search.corpus` (or `search.index_dir`), or with
`--search retriever` (the default when search.backend=retriever) the retrieval server at `search.urls`.
search.backend, the training back-end, is used only with `--search simulator`. `eval_mode=rag` works like
`--mode rag`. `--max-rows N` keeps the first N rows of each data source. Writes summary.md / summary.csv /
summary.json / trajectories.jsonl / summary.png to `--out` (default `<trainer.output_dir>/eval_<mode>`) and
logs them to MLflow; the header and summary.json say which search answered.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script


def parse_args(argv):
    """(config path, our options, key=value overrides); `eval_mode=` is ours, not a config key."""
    p = argparse.ArgumentParser(prog="zs-ray eval", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--mode", choices=("agent", "direct", "rag"), default=None)
    p.add_argument("--search", choices=("bm25", "retriever", "simulator"), default=None,
                   help="real BM25 (default), a retrieval server at search.urls, or the training simulator")
    p.add_argument("--max-rows", type=int, default=None, help="first N rows of each data source")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    ns, rest = p.parse_known_args(argv)
    overrides = []
    for a in rest:
        if a.startswith("eval_mode="):
            ns.mode = a.split("=", 1)[1]
        elif a.startswith("-"):
            p.error(f"unknown option {a}")
        else:
            overrides.append(a)
    ns.mode = ns.mode or "agent"
    if ns.mode not in ("agent", "direct", "rag"):
        p.error(f"eval_mode must be agent, direct or rag, got {ns.mode!r}")
    return ns, overrides


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from zs_ray.config import load_config
    from zs_ray.runtime import apply_local_env

    ns, overrides = parse_args(argv)
    apply_local_env()
    cfg = load_config(ns.config, overrides)
    from zs_ray.preflight import check_config

    check_config(cfg, "eval", search=ns.mode != "direct")  # the paths it reads, before any engine or Ray
    from zs_ray.eval.evaluation import describe_search, run_evaluation

    searched = describe_search(cfg, ns.mode, choice=ns.search)
    print(f"zs-ray eval {ns.mode}: {cfg.model.policy_path} on {len(cfg.data.test_files)} test file(s), "
          f"search: {searched['label']}", flush=True)
    result = run_evaluation(cfg, mode=ns.mode, max_rows=ns.max_rows, out_dir=ns.out, search_choice=ns.search,
                            progress=not ns.no_progress, tracking=not ns.no_tracking)
    print(result["markdown"])
    print(f"outputs in {result['out_dir']}")
    if result.get("tracking"):
        print(result["tracking"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
