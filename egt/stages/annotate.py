"""Stage 1, annotate: teacher trajectories for the SFT pool (method.md, "Stage 1").

Work goes in resumable shards; a killed job restarts at the first unfinished shard. A pair whose
teacher requests failed for good (the endpoint down past its retries) is not done: beyond
``annotate.teacher_error_budget`` the stage fails naming the endpoint and the error, and within it the
stage finishes without those pairs; either way the answered pairs are kept and the next run asks the
teacher again for exactly the failed ones.
"""

from __future__ import annotations

from collections import Counter

from egt.spec import AnnotateSpec, TeacherSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, load_pool
from egt.stages.progress import sharded
from egt.storage.records import write_records
from egt.teachers import Teacher
from egt.teachers.annotation import annotate


def make_teacher(spec: TeacherSpec) -> Teacher:
    if spec.kind == "scripted":
        from egt.teachers.scripted import ScriptedTeacher

        return ScriptedTeacher(error_rate=spec.error_rate, seed=spec.seed, style=spec.style)
    from egt.teachers.openai_compat import OpenAICompatTeacher

    return OpenAICompatTeacher(
        base_url=spec.base_url,
        model=spec.model,
        api_key_env=spec.api_key_env,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        timeout_s=spec.timeout_seconds,
        max_retries=spec.max_retries,
        max_concurrency=spec.max_concurrency,
    )


class TeacherUnavailableError(RuntimeError):
    """More teacher requests failed for good than annotate.teacher_error_budget allows."""


def unanswered(record: dict) -> bool:
    return record.get("teacher_error") is not None


def endpoint(spec: TeacherSpec) -> str:
    return f"the teacher at {spec.base_url} ({spec.model})" if spec.kind == "openai" else "the teacher"


def check_errors(out: list[dict], spec: AnnotateSpec) -> int:
    """The number of unanswered pairs, if within the budget; else the stage fails saying so."""
    failed = [r for r in out if unanswered(r)]
    if len(failed) > spec.teacher_error_budget * len(out):
        raise TeacherUnavailableError(
            f"{endpoint(spec.teacher)} failed for good on {len(failed)} of {len(out)} pairs (first: "
            f"record {failed[0]['id']!r}: {failed[0]['teacher_error']}); the {len(out) - len(failed)} "
            "answered pairs are kept, and a rerun asks again only for the failed ones "
            f"(annotate.teacher_error_budget is {spec.teacher_error_budget:g})"
        )
    return len(failed)


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.annotate
    records = load_pool(ctx, "sft")
    teacher = make_teacher(spec.teacher)
    images = ImageLoader(ctx.spec.store.endpoint_url)
    out = sharded(
        ctx,
        records,
        spec.shard_size,
        lambda shard: annotate(shard, teacher, images, spec.max_attempts),
        "pair",
        unfinished=unanswered,
    )
    errors = check_errors(out, spec)
    write_records(ctx.store, ctx.key("annotated.jsonl"), out)
    kept = [r for r in out if r["annotated"]]
    attempts = Counter(r["attempts"] for r in kept)
    ctx.metrics.set("annotate_pairs_total", len(out), "Pairs put to the teacher")
    ctx.metrics.set("annotate_kept_total", len(kept), "Pairs with a trajectory agreeing with the label")
    ctx.metrics.set("annotate_teacher_errors_total", errors, "Pairs whose teacher requests failed for good")
    for n, count in attempts.items():
        ctx.metrics.set("annotate_attempts_needed", count, "Kept pairs by attempts needed", attempts=str(n))
    kinds = Counter(r.get("truth_kind", "unknown") for r in out)
    kept_kinds = Counter(r.get("truth_kind", "unknown") for r in kept)
    return StageResult(
        unfinished=errors,
        outputs={"annotated": "annotated.jsonl"},
        counts={
            "pairs": len(out),
            "kept": len(kept),
            "discarded": len(out) - len(kept),
            "teacher_errors": errors,
        },
        metrics={
            "attempts_needed": {str(k): v for k, v in sorted(attempts.items())},
            "kept_share_by_truth_kind": {k: kept_kinds[k] / n for k, n in kinds.items()},
        },
    )
