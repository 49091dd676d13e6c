"""Stage 6, evaluate: accuracy on held-out pairs, in both response orders (method.md stage 6).

Every pair is judged as given and with its responses swapped (label swapped too), so a judge that
prefers a position cannot look better than it is; ``position_bias`` reports that preference as the
share of "1" answers minus one half. With ``voting_k`` > 1 each order is answered by the majority of
K sampled outputs (Voting@K, R1-Reward); a tie counts as no answer.

A scalar reward model (``scalar`` in evaluate.models) scores each response alone and prefers the
higher score (an exact tie is no answer); its "output" records the two scores. Order cannot matter
to it, and the same tables show that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch

from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.scalar import Response, ScalarRewardModel
from egt.judge import is_well_formed, parse_answer, swap_label
from egt.scoring.benchmarks import score_benchmark
from egt.spec import EvaluateSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, eval_format, eval_sets, load_pool, model_dir
from egt.stages.progress import bar
from egt.stages.sft import judge_input
from egt.storage.records import write_records

# What a benchmark's official scoring reads besides the judgements (egt.scoring.benchmarks), and
# the diagnostics column of synthetic (or any annotated) data that the per-kind accuracy reads.
SCORING_FIELDS = ("category", "subcategory", "group", "truth_kind")


def swapped(item: JudgeInput) -> JudgeInput:
    return JudgeInput(item.images, item.question, item.response_2, item.response_1)


def majority(answers: Sequence[int | None]) -> int | None:
    """The most frequent parsed answer; None when there is none or the top two tie."""
    counts = Counter(a for a in answers if a is not None).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def judge_order(judge: HFJudge, items: list[JudgeInput], spec: EvaluateSpec, seed: int) -> list[dict]:
    if spec.voting_k == 1:
        outputs = [[g.text] for g in judge.generate(items, spec.max_new_tokens, temperature=0.0)]
    else:
        outputs = [[] for _ in items]
        for k in range(spec.voting_k):
            for index, g in enumerate(
                judge.generate(items, spec.max_new_tokens, spec.voting_temperature, seed + k)
            ):
                outputs[index].append(g.text)
    return [
        {
            "output": texts[0],
            "prediction": majority([parse_answer(t) for t in texts]),
            "well_formed": is_well_formed(texts[0]),
        }
        for texts in outputs
    ]


def scalar_pair_scores(model: ScalarRewardModel, items: list[JudgeInput]) -> list[tuple[float, float]]:
    """Each pair's two response scores, each response scored once (so once for both orders)."""
    with torch.no_grad():
        first = model.scores([Response(i.images, i.question, i.response_1) for i in items]).tolist()
        second = model.scores([Response(i.images, i.question, i.response_2) for i in items]).tolist()
    return list(zip(first, second, strict=True))


def scalar_judgement(first: float, second: float) -> dict:
    """A scalar reward model's judgement of a pair: the response with the higher score."""
    prediction = 1 if first > second else 2 if second > first else None
    return {"output": f"scores {first:.6g} {second:.6g}", "prediction": prediction, "well_formed": True}


def evaluate_pairs(
    judge: HFJudge | ScalarRewardModel,
    records: list[dict],
    to_input: Callable[[dict], JudgeInput],
    spec: EvaluateSpec,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[list[dict], dict]:
    """Per-pair predictions in each order, and the summary (accuracy per order, bias, consistency)."""
    scalar = isinstance(judge, ScalarRewardModel)
    orders = ["original", "swapped"] if spec.both_orders else ["original"]
    rows = [{"id": r["id"], "label": r["label"], **{k: r.get(k) for k in SCORING_FIELDS}} for r in records]
    for start in range(0, len(records), spec.batch_size):
        batch = records[start : start + spec.batch_size]
        items = [to_input(r) for r in batch]
        scores = scalar_pair_scores(judge, items) if scalar else None
        for order in orders:
            if scalar:  # the swapped order is the same two scores the other way round
                judged = [scalar_judgement(*(ab if order == "original" else ab[::-1])) for ab in scores]
            else:
                order_items = items if order == "original" else [swapped(i) for i in items]
                judged = judge_order(judge, order_items, spec, start)
            for offset, result in enumerate(judged):
                label = batch[offset]["label"] if order == "original" else swap_label(batch[offset]["label"])
                rows[start + offset][order] = {**result, "correct": result["prediction"] == label}
        progress(len(batch))
    summary: dict = {"pairs": len(rows)}
    answers = []
    for order in orders:
        summary[f"accuracy_{order}"] = sum(r[order]["correct"] for r in rows) / len(rows)
        summary[f"well_formed_{order}"] = sum(r[order]["well_formed"] for r in rows) / len(rows)
        answers += [r[order]["prediction"] for r in rows]
    summary["accuracy"] = sum(summary[f"accuracy_{o}"] for o in orders) / len(orders)
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("truth_kind") is not None:
            by_kind.setdefault(row["truth_kind"], []).append(row)
    if by_kind:  # accuracy per truth kind, over the scored orders (against the set's labels)
        summary["accuracy_by_truth_kind"] = {
            kind: sum(r[o]["correct"] for r in of_kind for o in orders) / (len(of_kind) * len(orders))
            for kind, of_kind in sorted(by_kind.items())
        }
    answered = [a for a in answers if a is not None]
    summary["answered_ratio"] = len(answered) / len(answers)
    summary["position_bias"] = (sum(a == 1 for a in answered) / len(answered) - 0.5) if answered else None
    if spec.both_orders:
        # The same response preferred in both orders: answer 1 as given means answer 2 when swapped.
        summary["order_consistency"] = sum(
            r["original"]["prediction"] is not None
            and r["swapped"]["prediction"] == swap_label(r["original"]["prediction"])
            for r in rows
        ) / len(rows)
    return rows, summary


def export_benchmark(ctx: StageContext, model: str, set_name: str, scored: dict) -> None:
    """The benchmark's headline and per-category figures as metrics labelled by benchmark and category."""
    labels = {"model": model, "benchmark": set_name, "format": scored["benchmark"]}
    if scored["headline"] is not None:
        ctx.metrics.set(
            "eval_benchmark_headline", scored["headline"], "Benchmark headline accuracy", **labels
        )
    for category, stats in scored["categories"].items():
        for name in ("accuracy", "acc_plus"):
            if stats.get(name) is not None:
                ctx.metrics.set(
                    f"eval_benchmark_{name}",
                    stats[name],
                    f"Benchmark {name} per category",
                    category=category,
                    **labels,
                )


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.evaluate
    images = ImageLoader(ctx.spec.store.endpoint_url)
    sets = {name: load_pool(ctx, name) for name in eval_sets(ctx)}
    results: dict[str, dict[str, dict]] = {}
    outputs = {}
    for model_name in spec.models:
        load = ScalarRewardModel.from_dir if model_name == "scalar" else HFJudge.from_dir
        judge = load(model_dir(ctx, model_name), ctx.spec.model.dtype, ctx.spec.model.device)
        for set_name, records in sets.items():
            with bar(
                len(records), f"evaluate {model_name}/{set_name}", ctx.progress, unit="pair"
            ) as progress:
                rows, summary = evaluate_pairs(
                    judge, records, lambda r: judge_input(r, images), spec, progress.update
                )
            key = f"predictions/{model_name}-{set_name}.jsonl"
            write_records(ctx.store, ctx.key(key), rows)
            outputs[f"predictions_{model_name}_{set_name}"] = key
            summary["benchmark"] = score_benchmark(eval_format(ctx, set_name), rows)
            results.setdefault(model_name, {})[set_name] = summary
            export_benchmark(ctx, model_name, set_name, summary["benchmark"])
            for name in (
                "accuracy",
                "accuracy_original",
                "accuracy_swapped",
                "position_bias",
                "order_consistency",
            ):
                if summary.get(name) is not None:
                    ctx.metrics.set(
                        f"eval_{name}",
                        summary[name],
                        f"Evaluation {name}",
                        model=model_name,
                        benchmark=set_name,
                    )
    ctx.store.write_json(ctx.key("results.json"), results)
    outputs["results"] = "results.json"
    return StageResult(
        outputs=outputs, counts={n: len(r) for n, r in sets.items()}, metrics={"results": results}
    )
