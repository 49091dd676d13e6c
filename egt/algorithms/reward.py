"""Rule-based reward of the RL stage (method.md stage 5; EGT §2.4 "Reward Design", after R1-Reward)."""


def accuracy_reward(prediction: int | None, label: int) -> float:
    """``R_acc``: 1 if the predicted preference (1 or 2; ``None`` if unparseable) equals the label, else 0."""
    if label not in (1, 2):
        raise ValueError(f"label must be 1 or 2, got {label!r}")
    if prediction not in (None, 1, 2):
        raise ValueError(f"prediction must be 1, 2 or None, got {prediction!r}")
    return float(prediction == label)


def format_reward(well_formed: bool) -> float:
    """``R_format``: 1 if the output matches ``<think>…</think><answer>…</answer>`` (method.md), else 0."""
    return float(bool(well_formed))


def combined_reward(acc: float, logic: float, fmt: float, alpha: float = 0.5, beta: float = 0.5) -> float:
    """``R = R_acc · (1 + α · R_logic) + β · R_format`` (method.md stage 5), α = β = 0.5 in the paper.

    Args:
        acc: ``R_acc`` in {0, 1}.
        logic: ``R_logic`` in {-1, 0, 1}: the referee's verdict that the reasoning contradicts, cannot be
            judged against, or supports the answer.
        fmt: ``R_format`` in {0, 1}.
    """
    if acc not in (0, 1):
        raise ValueError(f"acc must be 0 or 1, got {acc!r}")
    if logic not in (-1, 0, 1):
        raise ValueError(f"logic must be -1, 0 or 1, got {logic!r}")
    if fmt not in (0, 1):
        raise ValueError(f"fmt must be 0 or 1, got {fmt!r}")
    return float(acc * (1 + alpha * logic) + beta * fmt)
