import pytest

from egt.algorithms.reward import accuracy_reward, combined_reward, format_reward

# R = R_acc · (1 + 0.5 · R_logic) + 0.5 · R_format, written out by hand.
TABLE = [
    # acc, logic, fmt, R
    (0, -1, 0, 0.0),
    (0, -1, 1, 0.5),
    (0, 0, 0, 0.0),
    (0, 0, 1, 0.5),
    (0, 1, 0, 0.0),
    (0, 1, 1, 0.5),
    (1, -1, 0, 0.5),
    (1, -1, 1, 1.0),
    (1, 0, 0, 1.0),
    (1, 0, 1, 1.5),
    (1, 1, 0, 1.5),
    (1, 1, 1, 2.0),
]


@pytest.mark.parametrize(("acc", "logic", "fmt", "expected"), TABLE)
def test_combined_reward_table(acc, logic, fmt, expected):
    assert combined_reward(acc, logic, fmt) == expected


def test_combined_reward_weights():
    assert combined_reward(1.0, -1.0, 1.0, alpha=0.2, beta=0.1) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("acc", "logic", "fmt"), [(0.5, 0, 1), (1, 2, 1), (1, 0.5, 1), (1, 0, -1), (2, 0, 0)]
)
def test_combined_reward_rejects_out_of_range(acc, logic, fmt):
    with pytest.raises(ValueError):
        combined_reward(acc, logic, fmt)


def test_accuracy_reward():
    assert accuracy_reward(1, 1) == 1.0
    assert accuracy_reward(2, 1) == 0.0
    assert accuracy_reward(None, 2) == 0.0
    with pytest.raises(ValueError, match="label"):
        accuracy_reward(1, 3)
    with pytest.raises(ValueError, match="prediction"):
        accuracy_reward(0, 1)


def test_format_reward():
    assert format_reward(True) == 1.0
    assert format_reward(False) == 0.0
