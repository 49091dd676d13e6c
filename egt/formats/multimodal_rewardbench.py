"""Multimodal RewardBench as published: ``data/all_data.json`` (facebookresearch/multimodal_rewardbench).

A JSON list of ``{ID, Text, Image, Output1, Output2, Better, Category}``; ``Image`` is a path relative
to the data folder, whose images the user fetches with the benchmark's ``scripts/0_download_data.py``
(they are not redistributed; that script also fills in the ``Text`` of some source datasets).
"""

from __future__ import annotations

from collections.abc import Iterator

from egt.formats.common import DatasetError, Source, at, field_value, iter_json_list

# The seven columns the R1-Reward and EGT tables report, as the benchmark's
# ``scripts/2_get_accuracy.py`` derives them: reasoning splits by ID into math and coding, safety
# (one column) into bias and toxicity.
COLUMNS = (
    "general/correctness",
    "general/preference",
    "knowledge",
    "reasoning/math",
    "reasoning/coding",
    "safety",
    "vqa",
)
SAFETY = ("bias", "toxicity")
_DIRECT = {
    "open_generation/correctness_task": "general/correctness",
    "open_generation/preference_task": "general/preference",
    "knowledge": "knowledge",
    "safety": "safety",
    "vqa": "vqa",
}


def category(published: str, row_id: str) -> tuple[str | None, str | None]:
    """(column, safety subcategory) of a row; (None, None) for a category the benchmark lacks."""
    lowered = row_id.lower()
    if published == "reasoning":
        return ("reasoning/math" if lowered.startswith("math") else "reasoning/coding"), None
    if published == "safety":
        return "safety", SAFETY[0] if lowered.startswith("pairs") else SAFETY[1]
    return _DIRECT.get(published), None


def read(source: Source) -> Iterator[dict]:
    unknown: dict[str, int] = {}
    for number, row in iter_json_list(source.path, source.name):
        row_id = field_value(row, "ID", at(source.name, number))
        where = at(source.name, number, row_id)
        if not row.get("Text"):
            raise DatasetError(
                f"{where}: field 'Text' is missing or empty; the benchmark's scripts/0_download_data.py "
                "fills in the prompts of some source datasets: run it and point egt at its all_data.json"
            )
        better = field_value(row, "Better", where)
        if better not in ("Output1", "Output2"):
            raise DatasetError(f"{where}: field 'Better' must be 'Output1' or 'Output2', got {better!r}")
        published = field_value(row, "Category", where)
        column, subcategory = category(published, row_id)
        if column is None:
            unknown[published] = unknown.get(published, 0) + 1
        yield {
            "id": row_id,
            "images": [source.media.image(field_value(row, "Image", where), where)],
            "query": field_value(row, "Text", where),
            "response_1": field_value(row, "Output1", where),
            "response_2": field_value(row, "Output2", where),
            "label": 1 if better == "Output1" else 2,
            "category": column or "other",
            "subcategory": subcategory,
            "source_row": number,
        }
    for published, count in unknown.items():
        source.note(
            f"{source.name}: {count} row(s) of unknown Category {published!r} are scored under 'other' "
            f"(known: {', '.join(sorted({'reasoning', *_DIRECT}))})"
        )
