"""Teachers: the strong judges that write stage-1 reasoning trajectories (method.md, "Stage 1").

A teacher answers the judge prompt for a preference pair without ever seeing its label. Stage 1
talks to teachers in batches through :class:`Teacher`, so a remote teacher can run its requests
concurrently and an offline one (:mod:`egt.teachers.scripted`) can stand in for it in the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

ImageInput = Image.Image | str | Path


@dataclass(frozen=True)
class JudgeRequest:
    """One judge question. It has no label field: a teacher cannot be given what it must not see.

    ``images`` are decoded images or paths (opened only when the request is sent, so a large batch
    does not hold every image in memory). ``attempt`` counts from 1; a teacher may use it to vary
    its answer on a retry.
    """

    images: list[ImageInput]
    question: str
    response_1: str
    response_2: str
    attempt: int = 1


class Teacher(Protocol):
    """Anything that judges a batch; a failed request comes back as its exception, in its place."""

    def judge_many(self, requests: list[JudgeRequest]) -> Sequence[str | Exception]: ...
