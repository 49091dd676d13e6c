"""Generic preference pairs (e.g. an MM-RLHF export): JSON Lines, JSON list or Parquet rows of
``{prompt, chosen, rejected, images}``, with optional ``id`` and ``category``.

``images`` lists paths relative to the data root (may be empty for text-only pairs). Published pairs
often put the chosen response first; each row's preferred position is drawn balanced and seeded.
"""

from __future__ import annotations

from collections.abc import Iterator

from egt.formats.common import Source, at, field_value, iter_rows, preferred_position


def read(source: Source) -> Iterator[dict]:
    for index, (number, row) in enumerate(iter_rows(source.path, source.name)):
        row_id = row.get("id")
        row_id = str(row_id) if row_id is not None else f"row-{number}"
        where = at(source.name, number, row_id)
        chosen, rejected = field_value(row, "chosen", where), field_value(row, "rejected", where)
        label = preferred_position(source.position_seed, index)
        category = row.get("category")
        yield {
            "id": row_id,
            "images": [source.media.image(ref, where) for ref in field_value(row, "images", where, list)],
            "query": field_value(row, "prompt", where),
            "response_1": chosen if label == 1 else rejected,
            "response_2": rejected if label == 1 else chosen,
            "label": label,
            "category": str(category) if category is not None else None,
            "source_row": number,
        }
