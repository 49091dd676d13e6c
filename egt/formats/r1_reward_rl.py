"""The R1-Reward RL data as published (yifanzhang114/R1-Reward-RL): Parquet shards.

``question`` (the question alone), ``message`` (a JSON list of chat turns: the user turn's content is
the full judge prompt, holding the question and both responses, plus ``{"type": "image", "image":
PATH}`` items), ``answer`` (e.g. ``["<answer>2</answer>"]``: the preferred response) and ``image``.
The image paths are on the authors' servers: the dataset's ``root`` and ``strip_prefix`` map them to
the user's copy. The responses keep their published positions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from egt.formats.common import DatasetError, Source, at, field_value, iter_parquet
from egt.judge import parse_answer

# The judge prompt in ``message`` marks the responses "[Response 1]:" and "[Response 2]:" (with
# Markdown heading marks around them) and may end with the output-format instructions.
_RESPONSES = re.compile(
    r"\[Response 1\]:?(?P<r1>.*?)\[Response 2\]:?(?P<r2>.*?)(?:\n[#*\s]*Output Format|\Z)", re.DOTALL
)


def _clean(text: str) -> str:
    return text.strip().rstrip("#").strip()


def user_turn(message: object, where: str) -> tuple[str, list[str]]:
    """(prompt text, image paths) of the first user turn."""
    if isinstance(message, str):
        try:
            message = json.loads(message)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: field 'message' is not valid JSON: {e.msg}") from e
    turns = (
        [t for t in message if isinstance(t, dict) and t.get("role") == "user"]
        if isinstance(message, list)
        else []
    )
    if not turns:
        raise DatasetError(f"{where}: field 'message' holds no user turn")
    content = turns[0].get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise DatasetError(f"{where}: field 'message': the user turn's content must be text or a list")
    texts = [
        item.get("text", "") for item in content if isinstance(item, dict) and item.get("type") == "text"
    ]
    images = [item.get("image") for item in content if isinstance(item, dict) and item.get("type") == "image"]
    return "\n".join(texts), images


def read(source: Source) -> Iterator[dict]:
    for number, row in iter_parquet(source.path, source.name):
        row_id = str(row["id"]) if row.get("id") is not None else f"row-{number}"
        where = at(source.name, number, row_id)
        prompt, images = user_turn(field_value(row, "message", where), where)
        match = _RESPONSES.search(prompt)
        if match is None:
            raise DatasetError(f"{where}: field 'message': the prompt has no [Response 1] / [Response 2]")
        answer = field_value(row, "answer", where, (list, str))
        label = parse_answer(answer[0] if isinstance(answer, list) and answer else str(answer))
        if label is None:
            raise DatasetError(f"{where}: field 'answer' holds no <answer>1</answer> or <answer>2</answer>")
        if not images and row.get("image"):
            images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        yield {
            "id": row_id,
            "images": [source.media.image(ref, where) for ref in images],
            "query": field_value(row, "question", where),
            "response_1": _clean(match["r1"]),
            "response_2": _clean(match["r2"]),
            "label": label,
            "source_row": number,
        }
