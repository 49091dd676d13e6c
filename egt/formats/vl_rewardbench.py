"""VL-RewardBench as published: ``data/test-00000-of-00001.parquet`` (MMInstruction/VL-RewardBench).

Columns ``id, query, response`` (two answers), ``image`` (a Hugging Face Image struct holding the
encoded ``bytes``), ``human_ranking`` (``[0, 1]``: the first response is preferred; ``[1, 0]``: the
second), and ``models, judge, rationale, query_source, ground_truth``, which egt does not need.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from egt.formats.common import DatasetError, Source, at, field_value, file_stem, iter_parquet

# The benchmark's ``cal.py`` groups rows by the id's prefix (text before the first "_" or "-"):
# RLAIF-V, RLHF-V and POVID ("hallucination") pairs test hallucination; MathVerse and MMMU reasoning;
# WildVision and everything else (VLFeedback) general. Matched case-insensitively.
CATEGORY_BY_PREFIX = {
    "rlaif": "hallucination",
    "rlhf": "hallucination",
    "hallucination": "hallucination",
    "mathverse": "reasoning",
    "mmmu": "reasoning",
    "wildvision": "general",
}
CATEGORIES = ("reasoning", "hallucination", "general")


def category(row_id: str) -> str:
    prefix = re.split(r"[_-]", row_id, maxsplit=1)[0].lower()
    return CATEGORY_BY_PREFIX.get(prefix, "general")


def preferred(ranking: object, where: str) -> int:
    """The label (1 or 2) from ``human_ranking``: rank 0 is the preferred response."""
    if not isinstance(ranking, list) or sorted(ranking) != [0, 1]:
        raise DatasetError(f"{where}: field 'human_ranking' must be [0, 1] or [1, 0], got {ranking!r}")
    return 1 if ranking[0] == 0 else 2


def read(source: Source) -> Iterator[dict]:
    seen: set[str] = set()
    repeats: Counter[str] = Counter()
    renamed: list[str] = []
    for number, row in iter_parquet(source.path, source.name):
        row_id = field_value(row, "id", at(source.name, number))
        where = at(source.name, number, row_id)
        responses = field_value(row, "response", where, list)
        if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
            raise DatasetError(f"{where}: field 'response' must hold two strings")
        image = field_value(row, "image", where, dict)
        if not image.get("bytes"):
            raise DatasetError(f"{where}: field 'image' holds no bytes")
        unique = row_id
        # Older copies (1,250 rows) repeat 25 ids; the maintainers later renamed them with suffixes.
        while unique in seen:
            repeats[row_id] += 1
            unique = f"{row_id}-{repeats[row_id]}"
        seen.add(unique)
        if unique != row_id:
            renamed.append(f"{row_id} → {unique}")
        yield {
            "id": unique,
            "images": [source.write_image(image["bytes"], file_stem(unique, number), where)],
            "query": field_value(row, "query", where),
            "response_1": responses[0],
            "response_2": responses[1],
            "label": preferred(row.get("human_ranking"), where),
            "category": category(row_id),
            "source_row": number,
        }
    if renamed:
        source.note(
            f"{source.name}: {len(renamed)} duplicated id(s) made unique with a numeric suffix (older "
            f"copies of VL-RewardBench repeat 25 ids): {', '.join(renamed[:10])}"
            + (" …" if len(renamed) > 10 else "")
        )
