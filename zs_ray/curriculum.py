"""The noise curriculum (ZeroSearch §3.4).

    p_i = p_s + (b^(i/m) - 1) / (b - 1) * (p_e - p_s),   i = step, m = total steps, b = base (4)

For i >= m, p = p_e. One coin per search call decides useful vs noisy for all k documents.
The coin is a hash of (seed, step, call key), so a resumed run flips exactly the same coins.
"""
from __future__ import annotations

import hashlib


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


def uniform_from_key(*parts) -> float:
    """A deterministic number in [0, 1) from any key (reproducible across processes and resumes)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def is_noisy(p: float, seed: int, step: int, call_key: str) -> bool:
    """One coin per search call: True means the simulator writes noisy documents."""
    return uniform_from_key(seed, step, call_key) < p
