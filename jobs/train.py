"""Entry point: `zs-ray train CONFIG.yaml key=value ...` or, on a cluster,
`ray job submit --working-dir . -- python jobs/train.py CONFIG.yaml key=value ...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script


def main(argv=None):
    from zs_ray.config import load_config
    from zs_ray.runtime import apply_local_env

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    apply_local_env()
    cfg = load_config(argv[0], argv[1:])
    from zs_ray.preflight import check_config

    check_config(cfg, "train")  # hardware and paths, before Ray or any model starts
    from zs_ray.train.trainer import run

    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
