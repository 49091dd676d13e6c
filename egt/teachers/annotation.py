"""Stage 1, teacher annotation (method.md): the first teacher trajectory that agrees with the label.

Each record is put to the teacher without its label, up to ``max_attempts`` times; the first
well-formed output whose answer equals the label is kept as the record's reasoning trajectory.
A record no attempt agreed with is discarded from SFT but still returned (``annotated`` False), so
the caller can count the discards and R1-Reward can treat ``attempts`` as difficulty (its RL pool is
the records that needed 2 or more attempts or failed).

Attempts go in rounds: every record's first attempt as one batch, then a second for those that
failed, and so on, so a remote teacher works through each round concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from egt.judge import is_well_formed, parse_answer
from egt.teachers import ImageInput, JudgeRequest, Teacher

logger = logging.getLogger(__name__)


OpenImages = Callable[[list[str]], list[ImageInput]]


def _request(record: dict, open_images: OpenImages, attempt: int) -> JudgeRequest:
    """The judge question for a record: everything but its label."""
    return JudgeRequest(
        images=open_images(record["images"]),
        question=record["query"],
        response_1=record["response_1"],
        response_2=record["response_2"],
        attempt=attempt,
    )


def annotate(
    records: list[dict], teacher: Teacher, open_images: OpenImages, max_attempts: int = 3
) -> list[dict]:
    """Each record plus ``teacher_output``, ``attempts``, ``annotated`` and ``teacher_error``.

    ``teacher_output`` is the kept trajectory (None when discarded); ``attempts`` is how many were
    made (for a kept record, the attempt that agreed; for a discarded one, ``max_attempts``);
    ``teacher_error`` is the message of a request that failed for good (its retries are the
    teacher's business), which ends that record's attempts without touching the others.
    ``open_images`` turns a record's image references into what the teacher takes (paths or
    images). The input records are not modified.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    for record in records:
        if record["label"] not in (1, 2):
            raise ValueError(f"record {record['id']!r} has label {record['label']!r}, expected 1 or 2")
    out = [
        {**record, "teacher_output": None, "attempts": 0, "annotated": False, "teacher_error": None}
        for record in records
    ]
    pending = list(range(len(records)))
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        outputs = teacher.judge_many([_request(records[i], open_images, attempt) for i in pending])
        if len(outputs) != len(pending):
            raise RuntimeError(f"teacher answered {len(outputs)} of {len(pending)} requests")
        failed, errors = [], 0
        for index, output in zip(pending, outputs, strict=True):
            record = out[index]
            record["attempts"] = attempt
            if isinstance(output, Exception):
                record["teacher_error"] = str(output) or type(output).__name__
                errors += 1
            elif is_well_formed(output) and parse_answer(output) == record["label"]:
                record["teacher_output"] = output
                record["annotated"] = True
            else:
                failed.append(index)
        logger.info(
            "attempt %d: %d asked, %d agreed with the label, %d teacher errors",
            attempt,
            len(pending),
            len(pending) - len(failed) - errors,
            errors,
        )
        pending = failed
    return out
