"""Which prompts each step trains on, and the staleness rule. Pure functions, no state.

Prompt order: step j takes positions [j*P, (j+1)*P) of an endless sequence of epochs; epoch e is
a permutation of all rows seeded by (seed, e), adjusted so that the step straddling two epochs holds no row
twice (`epoch_order`). Because the batch of a step is a function of the
step alone, a resumed run consumes exactly the prompts an uninterrupted run would: none twice,
none skipped, whatever was in flight when the driver died.

Staleness (AReaL-style bounded off-policyness): the policy at training step s has version s
(s updates applied). A sample generated with version v may be trained at step s only if

    s - v <= staleness          (staleness 0 = fully synchronous on-policy)

and so rollouts for a future step g may start while the policy has version v only if g - v <= staleness.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable


def _permutation(n_rows: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    order = list(range(n_rows))
    if shuffle:
        random.Random(f"{seed}/epoch/{epoch}").shuffle(order)
    return order


def epoch_order(n_rows: int, epoch: int, seed: int, shuffle: bool = True, per_step: int = 1) -> list[int]:
    """Epoch `epoch`'s permutation. When a step straddles the epoch boundary (it takes the last r rows of the
    previous epoch and the first per_step - r of this one), rows it already took are swapped behind it, so no
    step holds a row twice (given n_rows >= 2 * per_step; with fewer rows some step must). Swap targets lie
    outside the last rows the next epoch's straddling step reads, so every epoch's tail is its plain
    permutation and no epoch depends on another's adjustment."""
    order = _permutation(n_rows, epoch, seed, shuffle)
    r = epoch * n_rows % per_step
    if epoch == 0 or r == 0 or n_rows < 2 * per_step:
        return order
    taken = set(_permutation(n_rows, epoch - 1, seed, shuffle)[n_rows - r:])
    head, stop = per_step - r, n_rows - (epoch + 1) * n_rows % per_step
    free = (j for j in range(head, stop) if order[j] not in taken)
    for i in range(head):
        if order[i] in taken:
            j = next(free)
            order[i], order[j] = order[j], order[i]
    return order


def prompts_for_step(n_rows: int, step: int, per_step: int, seed: int, shuffle: bool = True) -> list[int]:
    if n_rows <= 0:
        raise ValueError("no training rows")
    out, cache = [], {}
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(pos, n_rows)
        if epoch not in cache:
            cache[epoch] = epoch_order(n_rows, epoch, seed, shuffle, per_step)
        out.append(cache[epoch][i])
    return out


def may_train(sample_version: int, step: int, staleness: int) -> bool:
    return 0 <= step - sample_version <= staleness


def may_launch(gen_step: int, policy_version: int, staleness: int) -> bool:
    return gen_step - policy_version <= staleness


class LaunchQueue:
    """The rollouts launched ahead of training: with trainer.staleness = k, step s + k may start generating while
    step s trains. Launches are kept in step order with whatever `launch(step)` returned for them."""

    def __init__(self):
        self.pending: deque = deque()  # (step, what launch returned)
        self.next_launch = 0

    def clear(self) -> None:
        self.pending.clear()

    def take(self, step: int, version: int, staleness: int, until: int, launch: Callable[[int], Any]) -> Any:
        """Launch every step below `until` that the staleness rule allows now, then hand over step `step`'s
        launch. Launches made for another position (the run resumed elsewhere) are dropped and redone."""
        if self.pending and self.pending[0][0] != step:
            self.pending.clear()
        if not self.pending:
            self.next_launch = step
        while self.next_launch < max(until, step + 1) and may_launch(self.next_launch, version, staleness):
            self.pending.append((self.next_launch, launch(self.next_launch)))
            self.next_launch += 1
        return self.pending.popleft()[1]


def split_groups(rows: list, n_workers: int) -> list[list]:
    """Rows spread round-robin over workers; every sample of one prompt stays on its row's worker."""
    n = max(1, int(n_workers))
    return [rows[w::n] for w in range(n)]
