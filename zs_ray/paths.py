"""Where zs-ray's own files are: the default configs and the root that relative outputs go under.

`configs/` at the top of the source tree is the only copy kept in git; a wheel ships it inside the package as
`zs_ray/configs` (pyproject.toml maps the package `zs_ray.configs` to that folder). So a source checkout and a
non-editable `pip install .` find the same files. Pure os: no Ray, torch or omegaconf.
"""
from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(PACKAGE_DIR)


def is_checkout() -> bool:
    """True when zs_ray runs from a source tree (an editable install or PYTHONPATH), not from site-packages."""
    root = _CHECKOUT
    return os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "configs"))


def project_root() -> str:
    """The source checkout zs_ray runs from; for an installed package, the current directory."""
    return _CHECKOUT if is_checkout() else os.getcwd()


def configs_dir() -> str:
    """The configs shipped in the wheel when they are there, else the source tree's `configs/`."""
    packaged = os.path.join(PACKAGE_DIR, "configs")
    if os.path.isfile(os.path.join(packaged, "cpu_default.yaml")):
        return packaged
    source = os.path.join(_CHECKOUT, "configs")
    if os.path.isdir(source):
        return source
    raise FileNotFoundError(f"zs-ray's default configs are in neither {packaged} nor {source}: "
                            "reinstall the package (pip install .) or run from the source tree")


def config_file(*parts: str) -> str:
    """A file or folder under the default configs, e.g. config_file("cpu_default.yaml")."""
    return os.path.join(configs_dir(), *parts)


def default_config() -> str:
    """The CPU default config, configs/cpu_default.yaml."""
    return config_file("cpu_default.yaml")


def resolve_config(path: str) -> str:
    """A config path as given; `configs/...` that is not there (an installed package run from another folder)
    is the shipped copy of that file."""
    parts = os.path.normpath(path).split(os.sep)
    if os.path.exists(path) or os.path.isabs(path) or parts[0] != "configs" or len(parts) < 2:
        return path
    shipped = config_file(*parts[1:])
    return shipped if os.path.exists(shipped) else path
