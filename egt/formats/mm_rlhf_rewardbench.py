"""MM-RLHF-RewardBench as published (yifanzhang114/MM-RLHF-RewardBench): JSON Lines.

``{id, prompt, chosen, rejected, chosen_reason, rejected_reason, image | video}``; ``image`` is a path
relative to the data folder, ``video`` a folder of frames. Rows sharing an ``id`` form a group (2–6
pairs on one prompt): Acc+ counts a group only when every pair in it is judged right.
"""

from __future__ import annotations

from collections.abc import Iterator

from egt.formats.common import DatasetError, Source, at, field_value, iter_jsonl, preferred_position

# The official ``cal_performance_mmreweard_bench.py``: the first of these words in the media path.
CATEGORIES = ("mcq", "long", "short", "safety", "video")


def category(media_path: str) -> str | None:
    return next((word for word in CATEGORIES if word in media_path), None)


def read(source: Source) -> Iterator[dict]:
    pairs_in_group: dict[str, int] = {}
    uncategorized = 0
    for index, (number, row) in enumerate(iter_jsonl(source.path, source.name)):
        group = field_value(row, "id", at(source.name, number))
        where = at(source.name, number, group)
        has_image, has_video = row.get("image") is not None, row.get("video") is not None
        if has_image == has_video:
            raise DatasetError(f"{where}: give exactly one of the fields 'image' and 'video'")
        media = row["image"] if has_image else row["video"]
        images = (
            [source.media.image(media, where)]
            if has_image
            else source.media.frames(media, source.video_frames, where)
        )
        found = category(media) if isinstance(media, str) else None
        uncategorized += found is None
        pairs_in_group[group] = pairs_in_group.get(group, 0) + 1
        chosen, rejected = field_value(row, "chosen", where), field_value(row, "rejected", where)
        label = preferred_position(source.position_seed, index)
        yield {
            "id": f"{group}#{pairs_in_group[group]}",
            "images": images,
            "query": field_value(row, "prompt", where),
            "response_1": chosen if label == 1 else rejected,
            "response_2": rejected if label == 1 else chosen,
            "label": label,
            "category": found or "other",
            "group": group,
            "source_row": number,
        }
    if uncategorized:
        source.note(
            f"{source.name}: {uncategorized} row(s) whose media path names none of "
            f"{', '.join(CATEGORIES)} are scored under 'other'"
        )
