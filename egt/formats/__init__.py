"""Readers for datasets as their authors publish them, converting each row into egt's native record.

A native record is ``{id, images, query, response_1, response_2, label}`` plus ``category`` (the
benchmark's reported category), ``subcategory``, ``group`` (MM-RLHF-RewardBench) and ``source_row``
(the row's number in the published file). One module per format knows that format's layout and its
benchmark's official category rules; docs/data.md lists them. The prepare stage calls
:func:`convert` for every dataset whose format is not ``egt``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egt.formats import (
    mm_rlhf_rewardbench,
    multimodal_rewardbench,
    preference_pairs,
    r1_reward_rl,
    vl_rewardbench,
)
from egt.formats.common import DatasetError, MediaRoot, Source
from egt.spec import DatasetSpec
from egt.storage.store import split_uri

READERS: dict[str, Callable[[Source], Iterator[dict]]] = {
    "vl-rewardbench": vl_rewardbench.read,
    "multimodal-rewardbench": multimodal_rewardbench.read,
    "mm-rlhf-rewardbench": mm_rlhf_rewardbench.read,
    "r1-reward-rl": r1_reward_rl.read,
    "preference-pairs": preference_pairs.read,
}

__all__ = ["READERS", "Converted", "DatasetError", "convert"]


@dataclass
class Converted:
    """What a conversion wrote and saw."""

    records: str  # the JSON Lines file, relative to the output folder
    pairs: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "labels": self.labels,
            "categories": self.categories,
            "warnings": self.warnings,
        }


def convert(
    dataset: DatasetSpec,
    name: str,
    out_dir: Path,
    scratch: Path,
    endpoint_url: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
    warn: Callable[[str], None] = print,
) -> Converted:
    """Read ``dataset`` as published and write ``<out_dir>/<name>.jsonl`` plus ``<out_dir>/<name>/`` images.

    Rows stream from the file to the records file; only ids are remembered (to refuse duplicates).
    """
    store, key = split_uri(dataset.uri, endpoint_url)
    images_dir = out_dir / name
    images_dir.mkdir(parents=True, exist_ok=True)
    source = Source(
        path=store.local_file(key, scratch),
        name=store.uri_for(key),
        media=MediaRoot(dataset.root or store.uri_for(""), endpoint_url, dataset.strip_prefix),
        images_dir=images_dir,
        images_ref=name,
        video_frames=dataset.video_frames,
        position_seed=dataset.position_seed,
        warn=warn,
    )
    converted = Converted(records=f"{name}.jsonl", warnings=source.warnings)
    labels: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    seen: set[str] = set()
    with (out_dir / converted.records).open("w", encoding="utf-8") as out:
        for record in READERS[dataset.format](source):
            if record["id"] in seen:
                raise DatasetError(
                    f"{source.name}: row {record['source_row']}: id {record['id']!r} appears twice"
                )
            seen.add(record["id"])
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            labels[str(record["label"])] += 1
            if record.get("category") is not None:
                categories[record["category"]] += 1
            converted.pairs += 1
            progress(1)
    if not converted.pairs:
        raise DatasetError(f"{source.name}: the dataset has no rows")
    converted.labels, converted.categories = dict(labels), dict(categories)
    return converted
