"""Each published format read into native records, from files written as their authors write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from egt.formats import DatasetError, convert
from egt.formats import common as formats_common
from egt.formats.common import iter_json_list, preferred_position, uniform_sample
from egt.spec import DatasetSpec
from egt.stages.data import validate_records
from tests.formats.published import (
    image_bytes,
    mm_rlhf_row,
    multimodal_rewardbench_item,
    r1_reward_row,
    vl_rewardbench_row,
    write_image,
    write_mm_rlhf,
    write_multimodal_rewardbench,
    write_r1_reward,
    write_vl_rewardbench,
)


def run_convert(tmp_path: Path, uri: Path | str, fmt: str, **options) -> tuple[list[dict], object, list[str]]:
    warnings: list[str] = []
    out = tmp_path / "out"
    converted = convert(
        DatasetSpec(uri=str(uri), format=fmt, **options),
        "set",
        out,
        tmp_path / "scratch",
        warn=warnings.append,
    )
    records = [json.loads(line) for line in (out / converted.records).read_text().splitlines()]
    validate_records(records, "converted")  # what every stage checks before reading a pool
    return records, converted, warnings


# --- VL-RewardBench ------------------------------------------------------------------------------------


def test_vl_rewardbench_rows_become_records_with_their_images_and_categories(tmp_path):
    ids = [
        "RLAIF-V_1",
        "rlhf-v_2",
        "hallucination_pair-3",
        "mathverse_4",
        "mmmu-5",
        "wildvision-battle_6",
        "vlfeedback_7",
    ]
    rows = [vl_rewardbench_row(row_id, label=1 + i % 2, colour="blue") for i, row_id in enumerate(ids)]
    path = write_vl_rewardbench(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    records, converted, warnings = run_convert(tmp_path, path, "vl-rewardbench")

    assert [r["id"] for r in records] == ids
    assert [r["category"] for r in records] == [
        "hallucination",
        "hallucination",
        "hallucination",
        "reasoning",
        "reasoning",
        "general",
        "general",
    ]
    assert [r["label"] for r in records] == [1, 2, 1, 2, 1, 2, 1]  # [0,1] → 1, [1,0] → 2
    first = records[0]
    assert first["query"] == "What colour is the image of RLAIF-V_1?"
    assert (first["response_1"], first["response_2"]) == ("RLAIF-V_1: answer one", "RLAIF-V_1: answer two")
    image = tmp_path / "out" / first["images"][0]  # relative to the records file
    assert Image.open(image).getpixel((0, 0)) == (0, 0, 255)
    assert image.read_bytes() == image_bytes("blue")  # written as published, not re-encoded
    assert converted.categories == {"hallucination": 3, "reasoning": 2, "general": 2}
    assert converted.labels == {"1": 4, "2": 3}
    assert warnings == []


def test_vl_rewardbench_duplicated_ids_get_suffixes_and_a_warning(tmp_path):
    rows = [
        vl_rewardbench_row(i, 1)
        for i in ["mathverse_1", "mathverse_1", "mmmu_2", "mathverse_1", "mathverse_1-1"]
    ]
    path = write_vl_rewardbench(tmp_path / "vl.parquet", rows)
    records, _, warnings = run_convert(tmp_path, path, "vl-rewardbench")
    assert [r["id"] for r in records] == [
        "mathverse_1",
        "mathverse_1-1",
        "mmmu_2",
        "mathverse_1-2",
        "mathverse_1-1-1",
    ]
    assert len(warnings) == 1 and "3 duplicated id(s)" in warnings[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"query": None}, "row 2 (id 'mmmu_2'): field 'query' is missing"),
        ({"human_ranking": [0, 0]}, "row 2 (id 'mmmu_2'): field 'human_ranking' must be [0, 1] or [1, 0]"),
        ({"response": ["only one"]}, "row 2 (id 'mmmu_2'): field 'response' must hold two strings"),
        (
            {"image": {"bytes": b"not an image", "path": None}},
            "row 2 (id 'mmmu_2'): the image does not decode",
        ),
    ],
)
def test_vl_rewardbench_bad_rows_are_named(tmp_path, override, message):
    rows = [vl_rewardbench_row("mmmu_1", 1), vl_rewardbench_row("mmmu_2", 1, **override)]
    path = write_vl_rewardbench(tmp_path / "vl.parquet", rows)
    with pytest.raises(DatasetError, match=r"vl\.parquet") as error:
        run_convert(tmp_path, path, "vl-rewardbench")
    assert message in str(error.value)


# --- Multimodal RewardBench ------------------------------------------------------------------------------


def test_multimodal_rewardbench_maps_the_official_columns(tmp_path):
    items = [
        multimodal_rewardbench_item("nocaps_1", "open_generation/correctness_task"),
        multimodal_rewardbench_item("vlfeedback_2", "open_generation/preference_task", better="Output2"),
        multimodal_rewardbench_item("mmmu-pro_3", "knowledge"),
        multimodal_rewardbench_item("Mathvista_4", "reasoning"),
        multimodal_rewardbench_item("emma-coding_5", "reasoning"),
        multimodal_rewardbench_item("PAIRS_6", "safety"),
        multimodal_rewardbench_item("hatefulmemes_7", "safety"),
        multimodal_rewardbench_item("mmbench_8", "vqa"),
        multimodal_rewardbench_item("new_9", "fairness"),
    ]
    path = write_multimodal_rewardbench(tmp_path / "data", items)
    records, _, warnings = run_convert(tmp_path, path, "multimodal-rewardbench")
    assert [(r["category"], r["subcategory"]) for r in records] == [
        ("general/correctness", None),
        ("general/preference", None),
        ("knowledge", None),
        ("reasoning/math", None),  # the ID starts with "math", case-insensitively
        ("reasoning/coding", None),
        ("safety", "bias"),  # the ID starts with "pairs"
        ("safety", "toxicity"),
        ("vqa", None),
        ("other", None),
    ]
    assert [r["label"] for r in records][:2] == [1, 2]
    assert records[0]["images"] == [(tmp_path / "data" / "images/nocaps/nocaps_1.jpg").as_uri()]
    assert len(warnings) == 1 and "'fairness'" in warnings[0] and "'other'" in warnings[0]


def test_multimodal_rewardbench_without_downloaded_prompts_says_what_to_run(tmp_path):
    path = write_multimodal_rewardbench(tmp_path, [multimodal_rewardbench_item("nocaps_1", "vqa", Text="")])
    with pytest.raises(DatasetError, match=r"row 1 \(id 'nocaps_1'\): field 'Text'.*0_download_data.py"):
        run_convert(tmp_path, path, "multimodal-rewardbench")


@pytest.mark.parametrize(
    "image", ["/etc/hostname", "../outside.jpg", "file:///etc/hostname", "s3://bucket/x.jpg"]
)
def test_media_paths_outside_the_root_are_refused(tmp_path, image):
    write_image(tmp_path / "outside.jpg")
    folder = tmp_path / "data"
    folder.mkdir()
    path = write_multimodal_rewardbench(folder, [multimodal_rewardbench_item("a_1", "vqa", Image=image)])
    with pytest.raises(DatasetError, match=r"row 1 \(id 'a_1'\): media path .* leaves the data root"):
        run_convert(tmp_path, path, "multimodal-rewardbench")


def test_a_missing_image_is_named(tmp_path):
    item = multimodal_rewardbench_item("a_1", "vqa")
    path = tmp_path / "all_data.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(DatasetError, match=r"image 'images/a/a_1.jpg' not found under"):
        run_convert(tmp_path, path, "multimodal-rewardbench")


def test_the_json_list_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    items = [{"n": n, "text": "x" * (n * 7 % 50), "nested": {"list": [n, "]", "},{"]}} for n in range(40)]
    path = tmp_path / "list.json"
    path.write_text(" \n[\n" + ",\n  ".join(json.dumps(i) for i in items) + "\n]\n")
    monkeypatch.setattr(formats_common, "_CHUNK", 16)  # elements straddle many chunk boundaries
    assert [row for _, row in iter_json_list(path, "list.json")] == items
    path.write_text('[{"a": 1}, {"a": 2} {"a": 3}]')
    with pytest.raises(DatasetError, match="after element 2: expected ','"):
        list(iter_json_list(path, "list.json"))


# --- MM-RLHF-RewardBench ---------------------------------------------------------------------------------


def test_mm_rlhf_groups_categories_frames_and_balanced_positions(tmp_path):
    rows = [
        mm_rlhf_row("g/1.png_7", "mcq/1.png"),
        mm_rlhf_row("g/1.png_7", "mcq/1.png"),
        mm_rlhf_row("g/1.png_7", "mcq/1.png"),
        mm_rlhf_row("p2", "long/2.png"),
        mm_rlhf_row("p2", "long/2.png"),
        mm_rlhf_row("v3", "video/clip_3", video=True),
        mm_rlhf_row("v3", "video/clip_3", video=True),
        mm_rlhf_row("s4", "safety/4.jpg"),
        mm_rlhf_row("x5", "misc/5.png"),
    ]
    path = write_mm_rlhf(tmp_path, rows, frames={"video/clip_3": 11})
    records, converted, warnings = run_convert(tmp_path, path, "mm-rlhf-rewardbench", video_frames=4)

    assert [r["id"] for r in records][:4] == ["g/1.png_7#1", "g/1.png_7#2", "g/1.png_7#3", "p2#1"]
    assert [r["group"] for r in records] == [r["id"] for r in rows]
    assert [r["category"] for r in records] == ["mcq"] * 3 + ["long"] * 2 + ["video"] * 2 + [
        "safety",
        "other",
    ]
    assert "misc" not in warnings[0] and "1 row(s)" in warnings[0]
    frames = [Path(uri).name for uri in records[5]["images"]]
    assert frames == ["frame_000.jpg", "frame_003.jpg", "frame_007.jpg", "frame_010.jpg"]  # 0, 10/3, 20/3, 10
    # The chosen response sits where the label says, and the positions are balanced pair by pair.
    for record, row in zip(records, rows, strict=True):
        assert record[f"response_{record['label']}"] == row["chosen"]
        assert record[f"response_{3 - record['label']}"] == row["rejected"]
    labels = [r["label"] for r in records]
    assert all(sorted(labels[i : i + 2]) == [1, 2] for i in range(0, 8, 2))
    assert labels == [preferred_position(0, i) for i in range(9)]
    _, again, _ = run_convert(tmp_path / "again", path, "mm-rlhf-rewardbench", video_frames=4)
    assert again.labels == converted.labels  # seeded: the same file converts the same way
    reseeded, _, _ = run_convert(tmp_path / "seed", path, "mm-rlhf-rewardbench", position_seed=1)
    assert [r["label"] for r in reseeded] != labels


def test_mm_rlhf_empty_frame_folder_and_missing_media_are_named(tmp_path):
    (tmp_path / "video/empty").mkdir(parents=True)
    path = write_mm_rlhf(tmp_path, [mm_rlhf_row("v1", "video/empty", video=True)])
    with pytest.raises(
        DatasetError, match=r"row 1 \(id 'v1'\): video frame folder 'video/empty' .* has no images"
    ):
        run_convert(tmp_path, path, "mm-rlhf-rewardbench")
    path = write_mm_rlhf(
        tmp_path, [{k: v for k, v in mm_rlhf_row("v1", "mcq/1.png").items() if k != "image"}]
    )
    with pytest.raises(DatasetError, match="give exactly one of the fields 'image' and 'video'"):
        run_convert(tmp_path, path, "mm-rlhf-rewardbench")


def test_positions_stay_balanced_over_any_prefix():
    for seed in range(5):
        labels = [preferred_position(seed, i) for i in range(101)]
        for end in range(1, 102):
            ones = labels[:end].count(1)
            assert abs(ones - (end - ones)) <= 1


def test_uniform_sample_spreads_from_first_to_last():
    assert uniform_sample(list(range(10)), 3) == [0, 4, 9]  # round(4.5) is 4: banker's rounding
    assert uniform_sample(list(range(3)), 8) == [0, 1, 2]
    assert uniform_sample(list(range(5)), 1) == [0]


# --- R1-Reward RL data and generic preference pairs ------------------------------------------------------


def test_r1_reward_rows_parse_the_prompt_and_map_the_authors_paths(tmp_path):
    write_image(tmp_path / "images/RLAIF-V-image/cake.jpg")
    rows = [
        r1_reward_row(
            "Describe the artwork.",
            "A print of a shop.",
            "A cake shop, painted.\nTwo lines.",
            2,
            "/mmu_mllm_hdd/yfzhang/data/RLAIF-V-image/cake.jpg",
        ),
        r1_reward_row(
            "Which is right?",
            "It is 4.",
            "It is 5 ####",
            1,
            "/mmu_mllm_hdd/yfzhang/data/RLAIF-V-image/cake.jpg",
        ),
    ]
    path = write_r1_reward(tmp_path / "r1" / "train.parquet", rows)
    records, _, _ = run_convert(
        tmp_path,
        path,
        "r1-reward-rl",
        root=str(tmp_path / "images"),
        strip_prefix="/mmu_mllm_hdd/yfzhang/data/",
    )
    assert [(r["query"], r["response_1"], r["response_2"], r["label"]) for r in records] == [
        ("Describe the artwork.", "A print of a shop.", "A cake shop, painted.\nTwo lines.", 2),
        ("Which is right?", "It is 4.", "It is 5", 1),
    ]
    assert records[0]["images"] == [(tmp_path / "images/RLAIF-V-image/cake.jpg").as_uri()]
    with pytest.raises(DatasetError, match=r"row 1 \(id 'row-1'\): media path '/mmu_mllm_hdd/.*strip_prefix"):
        run_convert(tmp_path / "unmapped", path, "r1-reward-rl", root=str(tmp_path / "images"))


def test_preference_pairs_in_jsonl(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    rows = [
        {"id": 7, "prompt": "Q1", "chosen": "good", "rejected": "bad", "images": ["img/a.png"]},
        {"prompt": "Q2", "chosen": "good2", "rejected": "bad2", "images": [], "category": "text"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _, _ = run_convert(tmp_path, path, "preference-pairs")
    assert [r["id"] for r in records] == ["7", "row-2"]
    assert [r[f"response_{r['label']}"] for r in records] == ["good", "good2"]
    assert sorted(r["label"] for r in records) == [1, 2]
    assert records[1]["images"] == [] and records[1]["category"] == "text"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "c", "images": []}) + "\n")
    with pytest.raises(DatasetError, match=r"pairs.jsonl: row 1 \(id 'row-1'\): field 'rejected' is missing"):
        run_convert(tmp_path, path, "preference-pairs")


def test_preference_pairs_as_a_json_list_and_as_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Q{n}", "chosen": "c", "rejected": "r", "images": []} for n in range(3)]
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    for name in ("pairs.json", "pairs.parquet"):
        records, _, _ = run_convert(tmp_path / name.replace(".", "-"), tmp_path / name, "preference-pairs")
        assert [r["query"] for r in records] == ["Q0", "Q1", "Q2"]
    (tmp_path / "pairs.csv").write_text("prompt,chosen\n")
    with pytest.raises(DatasetError, match=r"pairs\.csv: cannot tell the file's format"):
        run_convert(tmp_path / "csv", tmp_path / "pairs.csv", "preference-pairs")
