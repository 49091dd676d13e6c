"""egt filter: flag the pairs a trained reward model disagrees with (egt.engines.filtering)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egt.cli import main
from egt.data.synthetic import generate_split
from egt.engines.filtering import by_truth_kind, flagged_indexes


def write_pool(folder: Path, n: int, flipped: float, seed: int = 3) -> Path:
    records = generate_split(folder, "pool", n, seed, flipped_fraction=flipped)
    pool = folder / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    return pool


def test_flagging_by_sign_or_by_the_lowest_share():
    margins = [0.5, -0.1, 2.0, -3.0, 0.0]
    assert flagged_indexes(margins, None) == {1, 3}
    assert flagged_indexes(margins, 0.4) == {3, 1}
    assert flagged_indexes(margins, 0.6) == {3, 1, 4}
    with pytest.raises(ValueError, match=r"--fraction must be in \(0, 1\)"):
        flagged_indexes(margins, 1.5)


def test_the_truth_table_sets_each_kind_beside_a_random_flagger():
    records = [{"truth_kind": k} for k in ("clean", "clean", "clean", "flipped")]
    table = by_truth_kind(records, {3, 0})
    assert table["flipped"] == {"pairs": 1, "flagged": 1, "share": 1.0, "random_share": 0.5}
    assert table["clean"]["share"] == pytest.approx(1 / 3)
    assert by_truth_kind([{"id": "x"}], set()) == {}


def test_a_scalar_model_flags_the_flipped_pairs(colour_scalar, tmp_path, capsys):
    pool = write_pool(tmp_path / "data", 80, flipped=0.25)
    out = tmp_path / "filtered"
    assert (
        main(["filter", str(colour_scalar.model_dir), str(pool), "--out-dir", str(out), "--device", "cpu"])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    flipped, clean = summary["by_truth_kind"]["flipped"], summary["by_truth_kind"]["clean"]
    # A random flagger of the same size flags each kind at the pool's flagged share (~25%).
    assert flipped["share"] >= 0.8 and flipped["share"] > 2 * flipped["random_share"], summary
    assert clean["share"] <= 0.1, summary
    kept = [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()]
    flagged = [json.loads(line) for line in (out / "flagged.jsonl").read_text().splitlines()]
    assert len(kept) + len(flagged) == 80 and all(r["filter_margin"] < 0 for r in flagged)
    assert all(Path(r["images"][0].removeprefix("file://")).exists() for r in kept)  # usable from anywhere
    assert f"{len(flagged)} of 80 pairs flagged (margin < 0, scalar model)" in capsys.readouterr().out


def test_a_reasoning_model_judges_both_orders(tiny_dir, tmp_path):
    pool = write_pool(tmp_path / "data", 4, flipped=0.0)
    out = tmp_path / "filtered"
    argv = ["filter", str(tiny_dir), str(pool), "--out-dir", str(out), "--fraction", "0.5",
            "--max-new-tokens", "8", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "reasoning" and summary["flagged"] == 2
    rows = [
        json.loads(line)
        for name in ("kept", "flagged")
        for line in (out / f"{name}.jsonl").read_text().splitlines()
    ]
    assert {r["filter_margin"] for r in rows} <= {-0.5, 0.0, 0.5}


def test_a_bad_pool_is_named(tiny_dir, tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        '{"id": "a", "images": [], "query": "q", "response_1": "x", "response_2": "y", "label": 3}\n'
    )
    assert main(["filter", str(tiny_dir), str(pool), "--out-dir", str(tmp_path / "o")]) == 2
    assert "row 1 (id 'a'): label is 3; expected 1 or 2" in capsys.readouterr().err
