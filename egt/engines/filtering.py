"""``egt filter``: flag the preference pairs a trained reward model disagrees with (data cleaning).

The IXC-2.5-Reward paper's third application (§4.3): low reward marks problematic samples. For a
labelled pair the model's *margin* says how much it agrees with the label:

- a scalar reward model: ``r(x, y_label) − r(x, y_other)``;
- a reasoning reward model: the share of the two response orders in which it picked the labelled
  response (1, 0.5, 0; an unparseable order counts for neither), minus one half.

A pair is flagged when its margin is below zero (the model prefers the other response), or, with
``fraction``, when it is among that share of the pool with the lowest margins. The pool is written
back split in two, every record with its ``filter_margin``; records with ``truth_kind`` (synthetic
data) get a table of what was flagged per kind, beside what a random flagger of the same size
would flag.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from egt.algorithms.tournament import order_share
from egt.engines.best_of_n import load_reward_model
from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.scalar import Response, ScalarRewardModel
from egt.judge import parse_answer
from egt.stages.data import ImageLoader, absolutize_images, validate_records

if TYPE_CHECKING:
    from egt.engines.vllm_engine import VLLMEngine
    from egt.engines.vllm_scalar import VLLMScalar


def scalar_margins(
    model: ScalarRewardModel | VLLMScalar, records: list[dict], images: ImageLoader, batch_size: int
) -> list[float]:
    margins = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        opened = [images(r["images"]) for r in batch]
        with torch.no_grad():
            labelled = model.scores(
                [
                    Response(i, r["query"], r[f"response_{r['label']}"])
                    for i, r in zip(opened, batch, strict=True)
                ]
            )
            other = model.scores(
                [
                    Response(i, r["query"], r[f"response_{3 - r['label']}"])
                    for i, r in zip(opened, batch, strict=True)
                ]
            )
        margins += [float(a) - float(b) for a, b in zip(labelled, other, strict=True)]
    return margins


def judge_margins(
    judge: HFJudge | VLLMEngine,
    records: list[dict],
    images: ImageLoader,
    batch_size: int,
    max_new_tokens: int,
) -> list[float]:
    margins = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        items = []
        for record in batch:
            opened = images(record["images"])
            items += [
                JudgeInput(opened, record["query"], record["response_1"], record["response_2"]),
                JudgeInput(opened, record["query"], record["response_2"], record["response_1"]),
            ]
        answers = [parse_answer(g.text) for g in judge.generate(items, max_new_tokens, temperature=0.0)]
        for k, record in enumerate(batch):
            as_given, swapped = answers[2 * k], answers[2 * k + 1]
            # In the swapped order the labelled response is number 3 − label.
            verdicts = [
                None if as_given is None else as_given == record["label"],
                None if swapped is None else swapped == 3 - record["label"],
            ]
            margins.append(order_share(verdicts) - 0.5)
    return margins


def flagged_indexes(margins: list[float], fraction: float | None) -> set[int]:
    """Pairs whose margin is below zero; with ``fraction``, the lowest ``fraction`` of the pool instead
    (ties broken by position)."""
    if fraction is None:
        return {k for k, margin in enumerate(margins) if margin < 0}
    if not 0 < fraction < 1:
        raise ValueError(f"--fraction must be in (0, 1), got {fraction}")
    count = round(fraction * len(margins))
    return set(sorted(range(len(margins)), key=lambda k: (margins[k], k))[:count])


def by_truth_kind(records: list[dict], flagged: set[int]) -> dict[str, dict[str, float]]:
    """Per ``truth_kind``: pairs, flagged, the share flagged, and the share a random flagger of the
    same size would flag (the pool's flagged share)."""
    if not records or "truth_kind" not in records[0]:
        return {}
    totals = Counter(r["truth_kind"] for r in records)
    hits = Counter(records[k]["truth_kind"] for k in flagged)
    random_share = len(flagged) / len(records)
    return {
        kind: {"pairs": n, "flagged": hits[kind], "share": hits[kind] / n, "random_share": random_share}
        for kind, n in sorted(totals.items())
    }


def filter_records(
    model: ScalarRewardModel | VLLMScalar | HFJudge | VLLMEngine,
    scalar: bool,
    records: list[dict],
    images: ImageLoader,
    fraction: float | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 512,
) -> tuple[list[dict], list[dict], dict]:
    """(kept, flagged, summary): the pool's records (absolute image references) split by the model,
    each with its ``filter_margin``."""
    if scalar:
        margins, kind = scalar_margins(model, records, images, batch_size), "scalar"
    else:
        margins, kind = judge_margins(model, records, images, batch_size, max_new_tokens), "reasoning"
    flagged = flagged_indexes(margins, fraction)
    split: tuple[list[dict], list[dict]] = ([], [])
    for k, (record, margin) in enumerate(zip(records, margins, strict=True)):
        split[k in flagged].append({**record, "filter_margin": margin})
    summary = {
        "model": kind,
        "pairs": len(records),
        "flagged": len(flagged),
        "rule": "margin < 0" if fraction is None else f"lowest {fraction:g} of margins",
        "by_truth_kind": by_truth_kind(records, flagged),
        "mean_margin": sum(margins) / len(margins) if all(math.isfinite(m) for m in margins) else None,
    }
    return *split, summary


def filter_pool(
    model_dir: Path,
    pool: Path,
    out_dir: Path,
    fraction: float | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 512,
    device: str = "auto",
    dtype: str = "float32",
    engine: str = "hf",
) -> dict:
    """Write ``kept.jsonl``, ``flagged.jsonl`` and ``summary.json`` to ``out_dir``; returns the summary."""
    records = [json.loads(line) for line in pool.read_text().splitlines() if line.strip()]
    validate_records(records, str(pool))
    readable = absolutize_images(records, pool.parent.resolve().as_uri())
    model, scalar = load_reward_model(model_dir, engine, dtype, device)
    kept, flagged, summary = filter_records(
        model, scalar, readable, ImageLoader(), fraction, batch_size, max_new_tokens
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("kept", kept), ("flagged", flagged)):
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
