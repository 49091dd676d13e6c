"""Does the run show the EGT effect? Measured from the probe's and curate's own outputs.

The EGT paper's claim (§2.3, Figure 2; method.md stage 3) is that a judge's answer-token entropy
(eq. 3) tells reliable samples from unreliable ones: accuracy falls as entropy rises, and keeping the
lowest-entropy samples drops the noise. On data with known noise (the synthetic pools' ``truth_kind``)
that is checked directly:

- the probe is right on clean pairs (it learned the task at all);
- entropy separates ambiguous pairs (no right answer) from clean ones: AUROC, for the answer-token
  entropy and, because reasoning can settle the uncertainty before the answer is written, for the
  mean token entropy (eq. 4) too;
- accuracy in the lowest-entropy fifth of the pool is above the highest fifth's (the probe stage's
  own bins, ``accuracy_by_entropy_bin``);
- entropy curation removes more of the ambiguous pairs than a random selection of the same size.

Flipped pairs (a wrong label on a clean pair) are a different kind of noise: a judge that learned the
task answers them confidently *against* the label, so entropy is not expected to remove them. Going
beyond the paper, :func:`likely_flips` flags confident probe answers that disagree with the label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A two-way answer is "confident" when its entropy is at most that of a 90/10 choice:
# -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.325 nats.
CONFIDENT_ENTROPY = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney U statistic).

    ``+inf`` (no parseable answer) ranks above every finite score. None when either side is empty.
    """
    if not positives or not negatives:
        return None
    ordered = sorted([(x, 1) for x in positives] + [(x, 0) for x in negatives])
    # Average ranks over ties, then U = rank sum of the positives minus its minimum.
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2
        rank_sum += mean_rank * sum(label for _, label in ordered[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _accuracy(records: Sequence[dict]) -> float:
    return sum(bool(r["probe_correct"]) for r in records) / len(records)


@dataclass(frozen=True)
class FlipFlags:
    flagged: int  # confident answers that disagree with the label
    true_flips: int  # of those, pairs whose label really was flipped
    flips: int  # flipped pairs in the pool
    flips_answered_against_label: int  # flipped pairs the probe answered against their (wrong) label

    @property
    def precision(self) -> float | None:
        return self.true_flips / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.true_flips / self.flips if self.flips else None


def likely_flips(records: Sequence[dict], max_entropy: float = CONFIDENT_ENTROPY) -> FlipFlags:
    """Flag probe answers that are confident (answer entropy ≤ ``max_entropy``) and disagree with the
    label: likely label flips. Counted against ``truth_kind`` where the records carry it."""
    flagged = [
        r
        for r in records
        if r.get("probe_prediction") is not None
        and r["answer_entropy"] <= max_entropy
        and r["probe_prediction"] != r["label"]
    ]
    flips = [r for r in records if r.get("truth_kind") == "flipped"]
    return FlipFlags(
        flagged=len(flagged),
        true_flips=sum(r.get("truth_kind") == "flipped" for r in flagged),
        flips=len(flips),
        flips_answered_against_label=sum(
            r.get("probe_prediction") is not None and r["probe_prediction"] != r["label"] for r in flips
        ),
    )


def clean_accuracy(records: Sequence[dict]) -> float | None:
    """Probe accuracy on the clean pairs (their label is the truth); None when there are none."""
    clean = [r for r in records if r.get("truth_kind") == "clean"]
    return _accuracy(clean) if clean else None


def separation(records: Sequence[dict], key: str) -> float | None:
    """AUROC of ``key`` for ambiguous (positive) against clean pairs: 0.5 is chance, 1 is perfect."""
    return auroc(
        [r[key] for r in records if r.get("truth_kind") == "ambiguous"],
        [r[key] for r in records if r.get("truth_kind") == "clean"],
    )


def reward_trend(history: Sequence[dict], key: str = "reward_mean") -> tuple[float, float] | None:
    """Mean ``key`` over the first and the last quarter of RL steps (single steps are too noisy).

    None with fewer than 2 steps carrying a finite value.
    """
    values = [float(h[key]) for h in history if h.get(key) is not None and math.isfinite(float(h[key]))]
    if len(values) < 2:
        return None
    quarter = max(1, len(values) // 4)
    return sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter


def removed_share_by_lowest(records: Sequence[dict], key: str, keep: int, kind: str) -> float | None:
    """Share of ``kind`` pairs a curation keeping the ``keep`` lowest-``key`` records would remove.

    Lets a run compare what each entropy (answer, mean token, mix) would have removed at the size
    curation actually kept. Ties are broken by record order. None when the pool has no ``kind``.
    """
    in_pool = sum(r.get("truth_kind") == kind for r in records)
    if not in_pool:
        return None
    kept = sorted(records, key=lambda r: r[key])[:keep]
    return 1 - sum(r.get("truth_kind") == kind for r in kept) / in_pool
