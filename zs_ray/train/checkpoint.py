"""Atomic checkpoints: a step folder is written as `<name>.tmp` and renamed when complete.

A crash halfway leaves only a `.tmp` folder, which is ignored, so the previous checkpoint stays
usable. `LATEST` is rewritten atomically (write + os.replace) after the rename.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Optional

LATEST = "LATEST"
DRIVER_STATE = "driver_state.json"


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:06d}")


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(root: str, step: int, driver_state: dict, write_parts: Callable[[str], None], keep: int = 2) -> str:
    """Write a checkpoint: `write_parts(tmp_dir)` saves the workers' state, then the driver state."""
    os.makedirs(root, exist_ok=True)
    final = step_dir(root, step)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_parts(tmp)
    atomic_write_text(os.path.join(tmp, DRIVER_STATE), json.dumps(driver_state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(os.path.join(root, LATEST), os.path.basename(final))
    _prune(root, keep)
    return final


def _complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, DRIVER_STATE)) and not path.endswith(".tmp")


def _prune(root: str, keep: int) -> None:
    done = sorted(d for d in os.listdir(root) if d.startswith("step_") and _complete(os.path.join(root, d)))
    for d in done[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def latest(root: str) -> Optional[str]:
    """The newest complete checkpoint folder under root, or None."""
    if not os.path.isdir(root):
        return None
    ptr = os.path.join(root, LATEST)
    if os.path.isfile(ptr):
        cand = os.path.join(root, open(ptr).read().strip())
        if _complete(cand):
            return cand
    done = sorted(d for d in os.listdir(root) if d.startswith("step_") and _complete(os.path.join(root, d)))
    return os.path.join(root, done[-1]) if done else None


def load_driver_state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, DRIVER_STATE)) as f:
        return json.load(f)
