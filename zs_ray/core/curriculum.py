"""The noise curriculum (ZeroSearch §3.4).

    p_i = p_s + (b^(i/m) - 1) / (b - 1) * (p_e - p_s),   i = step, m = total steps, b = base (4)

For i >= m, p = p_e; curriculum.enabled=false: p = p_e from the first step (`noise_at`, the one rule).
One coin per search call decides useful vs noisy for all k documents. The coin is a hash of
(seed, step, call key), so a resumed run flips exactly the same coins.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Mapping, Optional

from zs_ray.config import CurriculumConfig


def noise_probability(step: int, total_steps: int, start: float = 0.0, end: float = 0.5,
                      base: float = 4.0) -> float:
    if total_steps <= 0:
        return float(end)
    frac = min(max(step, 0), total_steps) / total_steps
    if base == 1.0:  # limit of (b^x - 1)/(b - 1) as b -> 1 is x (linear)
        shape = frac
    else:
        shape = (base ** frac - 1.0) / (base - 1.0)
    return float(start + shape * (end - start))


def noise_at(cfg: Optional[Mapping], step: int) -> float:
    """The noise probability at `step` from a curriculum section: the one rule that the driver's log and the
    search clients' coins both follow. None or {}: 0 (no noise: evaluation, the served agent). enabled=false: a
    constant p = end from the first step (no easy-to-hard schedule). Otherwise the schedule above."""
    if not cfg:
        return 0.0
    c = {**asdict(CurriculumConfig()), **cfg}
    if not c["enabled"]:
        return float(c["end"])
    if c["total_steps"] is None:
        raise ValueError("curriculum.total_steps is None: set it (the driver uses trainer.steps)")
    return noise_probability(step, int(c["total_steps"]), float(c["start"]), float(c["end"]), float(c["base"]))


def uniform_from_key(*parts) -> float:
    """A deterministic number in [0, 1) from any key (reproducible across processes and resumes)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def is_noisy(p: float, seed: int, step: int, call_key: str) -> bool:
    """One coin per search call: True means the simulator writes noisy documents."""
    return uniform_from_key(seed, step, call_key) < p
