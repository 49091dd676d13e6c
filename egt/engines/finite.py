"""Training stops at the first step whose loss or gradient is not finite.

A NaN or infinite loss (a learning rate far too high, a bad sample) poisons every weight it touches;
training on would save a NaN model and report it as a success. The step is refused before it is
recorded or checkpointed, so the last checkpoint in the store is the last finite one.
"""

from __future__ import annotations

import math


class NonFiniteTrainingError(RuntimeError):
    """A training step's loss or gradient norm is NaN or infinite."""


def require_finite(where: str, **values: float | None) -> None:
    """Raise naming ``where`` (the step) and each non-finite value; None values are not checked."""
    bad = {name: value for name, value in values.items() if value is not None and not math.isfinite(value)}
    if bad:
        found = ", ".join(f"{name} {value}" for name, value in bad.items())
        raise NonFiniteTrainingError(
            f"{where}: {found} is not finite; training stopped before saving this step (the last "
            "checkpoint in the store is the last finite one). Lower the learning rate or check the data."
        )
