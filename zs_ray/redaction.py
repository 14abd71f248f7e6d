"""Secrets out of everything a run writes or logs: the saved config.yaml, MLflow params, `zs-ray config`."""
from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

SECRET_KEYS = ("api_key", "token", "password", "secret")
# A whole `_`-separated part of the key must be a secret word: `hf_token` is secret, `max_tokens` is not.
_SECRET_RE = re.compile(r"(^|_)(" + "|".join(SECRET_KEYS) + r")(_|$)")


def redacted(cfg: DictConfig | dict) -> dict:
    """A plain dict with secrets replaced by '***' (for logs and MLflow params)."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg

    def walk(x):
        if isinstance(x, dict):
            return {k: ("***" if _SECRET_RE.search(str(k).lower()) and v else walk(v)) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x
    return walk(d)
