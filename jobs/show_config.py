"""`zs-ray config CONFIG.yaml key=value ...`: print the resolved, validated config (secrets redacted)."""
import sys


def main(argv):
    from omegaconf import OmegaConf

    from zs_ray.config import load_config
    from zs_ray.redaction import redacted

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    print(OmegaConf.to_yaml(OmegaConf.create(redacted(load_config(argv[0], argv[1:])))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
