"""`zs-ray world build [--out DIR] [--seed N] [key=value ...]`: the synthetic world, its tokenizer and
the tiny policy and simulator models (Hugging Face format), all deterministic from the seed."""
import argparse
import json
import sys

from zs_ray.world.quickstart import quickstart_paths  # os and json only: no Ray, torch or vLLM


def main(argv):
    p = argparse.ArgumentParser(prog="zs-ray world", description=__doc__)
    p.add_argument("action", choices=["build"])
    p.add_argument("--out", default=quickstart_paths("runs/quickstart")["assets"],
                   help="folder of the world/, tokenizer/ and tiny models (default: where the quickstart puts them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--no-models", action="store_true", help="only the data files (in OUT/world), no tokenizer/models")
    p.add_argument("overrides", nargs="*", help="WorldParams fields, e.g. n_entities=200")
    a = p.parse_intermixed_args(argv)  # `build --no-models n_entities=30`: overrides after an option too
    kw = {}
    for ov in a.overrides:
        k, _, v = ov.partition("=")
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    from zs_ray.world.files import asset_paths, build_world, build_world_assets

    if a.no_models:  # the same place as with the models, so one config serves both
        paths = build_world(asset_paths(a.out)["world"], seed=a.seed, **kw)
    else:
        paths = build_world_assets(a.out, seed=a.seed, vocab_size=a.vocab_size, **kw)
    for k, v in paths.items():
        print(f"{k:>12}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
