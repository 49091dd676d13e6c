"""The order RL visits the curated samples in (method.md stage 5; EGT §2.4, Table 2).

EGT's curriculum walks the curated set from low to high entropy every epoch. The paper's Table 2
ablation "+ Selection" trains on the same set without that order; ``shuffled`` is that arm, a fresh
seeded permutation per epoch, and ``as_curated`` keeps whatever order curate wrote.
"""

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Order = Literal["ascending", "shuffled", "as_curated"]


def epoch_order(records: Sequence[dict], order: Order, column: str, seed: int, epoch: int) -> list[dict]:
    """The records in the order epoch ``epoch`` visits them.

    ascending: by ``column`` ascending (``+inf`` last), ties by id; shuffled: a permutation drawn from
    ``numpy.random.default_rng([seed, epoch])``, so every epoch differs and a resumed run draws the
    same; as_curated: as given.
    """
    if order == "ascending":
        return sorted(records, key=lambda r: (float(r[column]), r["id"]))
    if order == "shuffled":
        return [records[i] for i in np.random.default_rng([seed, epoch]).permutation(len(records))]
    if order == "as_curated":
        return list(records)
    raise ValueError(f"unknown order {order!r}; expected ascending, shuffled or as_curated")


def batch_for_step(
    records: Sequence[dict],
    step: int,
    batch_size: int,
    order: Order = "as_curated",
    column: str = "answer_entropy",
    seed: int = 0,
) -> list[dict]:
    """The batch of update ``step``: its slice of its epoch's order (the last slice may be short)."""
    per_epoch = math.ceil(len(records) / batch_size)
    epoch, index = divmod(step, per_epoch)
    visited = epoch_order(records, order, column, seed, epoch)
    return visited[index * batch_size : (index + 1) * batch_size]
