"""`zs-ray data real [--src DIR ...] [--out DIR] [--seed N] [--test-size SOURCE=N ...]`: the real question
sets and passages as train/test parquet, a corpus, its BM25 index and a manifest (zs_ray/data/real.py;
docs/real_data.md)."""
import argparse
import sys


def _test_size(text):
    src, sep, n = text.partition("=")
    if not sep or not src:
        raise argparse.ArgumentTypeError(f"expected SOURCE=N or SOURCE=all, got {text!r}")
    if n == "all":
        return src, None
    try:
        return src, int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--test-size {text!r}: N must be an integer or 'all'") from None


def main(argv):
    from zs_ray.data import real as rd

    sizes = ", ".join(f"{k}={'all' if v is None else v}" for k, v in rd.TEST_SIZES.items())
    p = argparse.ArgumentParser(prog="zs-ray data", description=__doc__)
    p.add_argument("action", choices=["real"])
    p.add_argument("--src", action="append", metavar="DIR",
                   help=f"source folder: the shared data layout (SOURCES.md) or a folder `zs-ray download "
                        f"zerosearch-dataset` filled; repeat to combine (default: ${rd.ENV_VAR}, else "
                        f"<repo>/../shared/data)")
    p.add_argument("--out", default="runs/real")
    p.add_argument("--seed", type=int, default=0, help="seed of the test draw")
    p.add_argument("--test-size", type=_test_size, action="append", default=[], metavar="SOURCE=N",
                   help=f"held-out questions of a source (N or all; defaults: {sizes})")
    p.add_argument("--test-only", default=",".join(rd.TEST_ONLY),
                   help="comma-separated sources never used for training")
    a = p.parse_args(argv)
    srcs = a.src or [rd.default_src()]
    try:
        manifest = rd.prepare(srcs, a.out, seed=a.seed, test_sizes=dict(a.test_size),
                              test_only=[s for s in a.test_only.split(",") if s])
    except (rd.DataError, OSError) as e:
        print(f"zs-ray data: error: {e}", file=sys.stderr)
        return 2
    print(rd.summary_table(manifest))
    for k, v in manifest["outputs"].items():
        print(f"{k:>9}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
