"""An offline teacher for the demo and the tests: it reads the image's pixels, never the label.

It judges the synthetic colour pairs (:mod:`egt.data.synthetic`) the way a strong model would,
from what the image shows: :func:`perceive` measures each palette colour's share of the pixels, and
the response naming the colour that covers more of the image wins. With probability ``error_rate``
it misperceives (the shares of the two named colours trade places) and so picks the other response
with reasoning that still reads consistently; that is the kind of confident mistake a real teacher
makes, and what stage 1's label check is there to catch. Its outputs are deterministic for
(seed, question, responses, attempt): a rerun is identical, a retry may differ.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import numpy as np
from PIL import Image

from egt.data.synthetic import COLOURS
from egt.judge import JUDGE_PROMPT
from egt.teachers import ImageInput, JudgeRequest

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)
# Shares closer than this are a tie: the image does not decide (synthetic "ambiguous" pairs are 50/50,
# clean "majority" pairs at least 60/40).
TIE_MARGIN = 0.1
_SHOWN_SHARE = 0.05  # colours below this share are left out of the description


def perceive(image: Image.Image) -> dict[str, float]:
    """Colour name → share of the image's pixels nearest to it, largest first; absent colours left out."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    distances = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(axis=2)
    counts = np.bincount(distances.argmin(axis=1), minlength=len(COLOURS))
    shares = {name: count / len(pixels) for name, count in zip(COLOURS, counts.tolist(), strict=True)}
    return {name: share for name, share in sorted(shares.items(), key=lambda kv: -kv[1]) if share > 0}


def named_colour(text: str) -> str | None:
    """The first palette colour a response names, lower-cased, or None if it names none."""
    match = _COLOUR_WORD.search(text)
    return match.group(1).lower() if match else None


def open_image(image: ImageInput) -> Image.Image:
    """A decoded image, loaded now so the file is closed before judging."""
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        opened.load()
        return opened


def _merged_shares(images: list[Image.Image]) -> dict[str, float]:
    """Mean share of each colour over all images (an empty dict for a text-only pair)."""
    total: dict[str, float] = {}
    for image in images:
        for name, share in perceive(image).items():
            total[name] = total.get(name, 0.0) + share / len(images)
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _misperceive(shares: dict[str, float], colour_1: str | None, colour_2: str | None) -> dict[str, float]:
    """The teacher's mistake: the two named colours' shares trade places, so the other response wins.

    With fewer than two distinct named colours there is nothing to confuse and the shares stand.
    """
    if colour_1 is None or colour_2 is None or colour_1 == colour_2:
        return shares
    swapped = {**shares, colour_1: shares.get(colour_2, 0.0), colour_2: shares.get(colour_1, 0.0)}
    return {name: share for name, share in sorted(swapped.items(), key=lambda kv: -kv[1]) if share > 0}


def _describe(shares: dict[str, float]) -> str:
    shown = [(name, share) for name, share in shares.items() if share >= _SHOWN_SHARE]
    if not shown:
        return "I cannot make out any of the colours I know in the image."
    if shown[0][1] >= 0.9:
        return f"The image is almost entirely {shown[0][0]} ({shown[0][1]:.0%})."
    return "The image shows " + " and ".join(f"{name} ({share:.0%})" for name, share in shown) + "."


def _claim(number: int, colour: str | None, shares: dict[str, float]) -> str:
    if colour is None:
        return f"Response {number} names no colour."
    share = shares.get(colour, 0.0)
    if share < _SHOWN_SHARE:
        return f"Response {number} says {colour}, which is not in the image."
    return f"Response {number} says {colour}, which covers {share:.0%} of the image."


def _steps(colours: tuple[str | None, str | None], shares: dict[str, float], tie: bool, answer: int) -> str:
    """Reasoning whose every step reads at most two tokens a short, fixed distance back (docs/demo.md).

    What the image shows first; then, per response, the colour it names and a verdict against that
    statement; then the answer, which follows from the two verdicts: ``right``/``wrong`` decide it,
    ``tie`` (the image is split evenly) leaves it open. The answer is not restated in the reasoning, so
    a judge's doubt about a tie stays on the answer token, where eq. 3 measures it.

    Colours are quoted: ``"red"`` is a different Qwen token from the prompt's ``" red"``, so the one
    earlier token equal to a response's quoted colour is the image statement, and a verdict is a
    plain token-equality check (a tiny model did not learn it in the demo's budget while the prompt
    held copies of the same token).
    """
    if tie and None not in colours:
        seen, verdicts = "The image is half each.", ("tie", "tie")
    elif shares:
        seen = f'The image is mostly "{next(iter(shares))}".'
        verdicts = ("right", "wrong") if answer == 1 else ("wrong", "right")
    else:
        seen, verdicts = "I cannot make out the colours of the image.", ("unclear", "unclear")
    claims = " ".join(
        f'Response {n} says "{colour or "no colour"}": {verdict}.'
        for n, (colour, verdict) in enumerate(zip(colours, verdicts, strict=True), start=1)
    )
    return f"<think>{seen} {claims}</think><answer>{answer}</answer>"


class ScriptedTeacher:
    """A judge that sees the image and errs at ``error_rate``; it is never given the label.

    ``style`` "detailed" writes the shares it perceived; "steps" writes ~30 tokens of local steps
    (:func:`_steps`), which a tiny demo model can learn in a few CPU minutes.
    """

    def __init__(self, error_rate: float = 0.1, seed: int = 0, style: str = "detailed") -> None:
        if not 0 <= error_rate <= 1:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        if style not in ("detailed", "steps"):
            raise ValueError(f"style must be 'detailed' or 'steps', got {style!r}")
        self.error_rate = error_rate
        self.seed = seed
        self.style = style

    def __repr__(self) -> str:
        return f"ScriptedTeacher(error_rate={self.error_rate}, seed={self.seed}, style={self.style!r})"

    def _rng(self, question: str, response_1: str, response_2: str, attempt: int) -> random.Random:
        key = json.dumps([self.seed, question, response_1, response_2, attempt]).encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def judge(
        self, images: list[Image.Image], question: str, response_1: str, response_2: str, attempt: int
    ) -> str:
        """A well-formed judge output whose reasoning ends "Therefore Response N is better."."""
        rng = self._rng(question, response_1, response_2, attempt)
        erring = rng.random() < self.error_rate
        shares = _merged_shares(images)
        colours = named_colour(response_1), named_colour(response_2)
        if erring:
            shares = _misperceive(shares, *colours)
        share_1, share_2 = (shares.get(colour, 0.0) if colour else 0.0 for colour in colours)
        tie = abs(share_1 - share_2) < TIE_MARGIN
        answer = rng.choice((1, 2)) if tie else (1 if share_1 > share_2 else 2)
        if self.style == "steps":
            return _steps(colours, shares, tie, answer)
        lines = [_describe(shares), _claim(1, colours[0], shares), _claim(2, colours[1], shares)]
        if tie:
            lines.append(
                "The image supports both responses about equally, so neither is clearly right; "
                f"on balance I prefer Response {answer}."
            )
        else:
            winner = colours[answer - 1]
            lines.append(
                f"Of the two colours named, {winner} covers more of the image, so Response {answer} is right."
            )
        lines.append(f"Therefore Response {answer} is better.")
        return f"<think>{' '.join(lines)}</think><answer>{answer}</answer>"

    def judge_text(self, prompt_text: str, images: list[Image.Image], attempt: int = 1) -> str:
        """Judge from the judge prompt's text (as an HTTP server receives it) instead of its fields."""
        return self.judge(images, *parse_judge_prompt(prompt_text), attempt)

    def judge_many(self, requests: list[JudgeRequest]) -> list[str]:
        """The :class:`~egt.teachers.Teacher` batch call, judged one by one (it is fast and offline)."""
        return [
            self.judge(
                [open_image(image) for image in r.images], r.question, r.response_1, r.response_2, r.attempt
            )
            for r in requests
        ]


def _prompt_pattern() -> re.Pattern[str]:
    """A regex for :data:`egt.judge.JUDGE_PROMPT` built from the template itself, so the two cannot drift."""
    markers = {"question": "\x00Q\x00", "answer1": "\x00A\x00", "answer2": "\x00B\x00"}
    pattern = re.escape(JUDGE_PROMPT.format(**markers))
    for field, marker in markers.items():
        pattern = pattern.replace(re.escape(marker), f"(?P<{field}>.*?)")
    return re.compile(f"^{pattern}$", re.DOTALL)


_PROMPT = _prompt_pattern()


def parse_judge_prompt(prompt_text: str) -> tuple[str, str, str]:
    """(question, response_1, response_2) out of a judge prompt written by :func:`egt.judge.judge_prompt`."""
    match = _PROMPT.match(prompt_text)
    if match is None:
        raise ValueError("text is not a judge prompt (egt.judge.JUDGE_PROMPT)")
    return match["question"], match["answer1"], match["answer2"]
