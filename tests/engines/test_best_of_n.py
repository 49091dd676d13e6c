"""egt score: best of N with a scalar reward model and with a reasoning one (egt.engines.best_of_n)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from egt.cli import main
from egt.data.synthetic import COLOURS, generate_split


def designed_prompts(data: Path, out: Path, n: int = 12, candidates: int = 4) -> list[int]:
    """Clean synthetic pairs as best-of-``candidates`` prompts: the right response, the wrong one and
    the right one's sentence with other colours, shuffled; returns the right candidate's index."""
    records = [r for r in generate_split(data, "best-of-n", n, 1) if r["truth_kind"] == "clean"]
    rng = random.Random(0)
    right_indexes, lines = [], []
    for record in records:
        right, wrong = record[f"response_{record['label']}"], record[f"response_{3 - record['label']}"]
        colour = next(c for c in COLOURS if f" {c}." in right)
        others = [c for c in COLOURS if f" {c}." not in right and f" {c}." not in wrong]
        texts = [right, wrong] + [right.replace(f" {colour}.", f" {c}.") for c in others[: candidates - 2]]
        rng.shuffle(texts)
        right_indexes.append(texts.index(right))
        images = [str(data / image) for image in record["images"]]  # absolute paths
        lines.append(
            json.dumps({"id": record["id"], "images": images, "query": record["query"], "candidates": texts})
        )
    out.write_text("\n".join(lines) + "\n")
    return right_indexes


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_scalar_model_picks_the_best_of_four(colour_scalar, tmp_path, capsys):
    candidates = tmp_path / "candidates.jsonl"
    right = designed_prompts(colour_scalar.data, candidates)
    out = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                "score",
                str(colour_scalar.model_dir),
                str(candidates),
                "--out",
                str(out),
                "-q",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = read_rows(out)
    assert [row["kind"] for row in rows] == ["scalar"] * len(right)
    assert all(row["model_calls"] == 4 and len(row["scores"]) == 4 for row in rows)
    assert all(row["best_response"] == json.loads(line)["candidates"][row["best"]]
               for row, line in zip(rows, candidates.read_text().splitlines(), strict=True))  # fmt: skip
    picked = sum(row["best"] == index for row, index in zip(rows, right, strict=True))
    # Random picking gets a quarter right; the trained model (97.5% pairwise) nearly all.
    assert picked >= 0.75 * len(right), (picked, len(right))
    assert (
        f"{len(right)} prompts, {4 * len(right)} candidates, scalar: {4 * len(right)} model calls"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(("tournament", "calls"), [("round_robin", 6), ("knockout", 4)])
def test_a_reasoning_model_runs_a_tournament_in_both_orders(
    tiny_dir, colour_scalar, tmp_path, tournament, calls
):
    # The untrained tiny judge answers whatever it answers: this checks the bookkeeping, not the pick.
    candidates = tmp_path / "candidates.jsonl"
    designed_prompts(colour_scalar.data, candidates, n=2, candidates=3)
    out = tmp_path / "scores.jsonl"
    argv = ["score", str(tiny_dir), str(candidates), "--out", str(out), "--tournament", tournament,
            "--max-new-tokens", "8", "-q", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    rows = read_rows(out)
    assert rows and all(
        row["model_calls"] == calls and row["kind"] == f"reasoning ({tournament})" for row in rows
    )
    if tournament == "round_robin":
        assert all(sum(row["scores"]) == pytest.approx(3.0) for row in rows)  # 3 comparisons, 1 point each
    else:
        assert all(max(row["scores"]) == 2.0 and row["scores"][row["best"]] == 2.0 for row in rows)


def test_bad_candidate_files_are_named_by_line_and_field(tiny_dir, tmp_path, capsys):
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text('{"id": "a", "query": "q", "candidates": ["x"]}\n{"id": "b", "query": "q"}\n')
    assert main(["score", str(tiny_dir), str(candidates), "--out", str(tmp_path / "o.jsonl"), "-q"]) == 2
    assert f"{candidates}:2: lacks candidates" in capsys.readouterr().err
    candidates.write_text('{"id": "a", "query": "q", "candidates": []}\n')
    assert main(["score", str(tiny_dir), str(candidates), "--out", str(tmp_path / "o.jsonl"), "-q"]) == 2
    assert "(id 'a'): candidates must be a non-empty list of strings" in capsys.readouterr().err
    candidates.write_text('{"id": "a", "images": ["missing.png"], "query": "q", "candidates": ["x"]}\n')
    assert main(["score", str(tiny_dir), str(candidates), "--out", str(tmp_path / "o.jsonl"), "-q"]) == 2
    assert "prompt 'a': an image cannot be read" in capsys.readouterr().err


def test_the_score_stage_resolves_candidate_images_only_inside_the_files_folder(tmp_path):
    """The score stage reads with the pipeline's credentials: a candidates file names images inside
    its own folder, as a dataset does (egt score by hand reads any path the user can)."""
    from egt.engines.best_of_n import parse_prompts
    from egt.formats.common import DatasetError, MediaRoot

    folder = tmp_path.as_uri()
    inside = {"id": "a", "images": ["img/x.png"], "query": "q", "candidates": ["x"]}
    [prompt] = parse_prompts([inside], "c.jsonl", folder, MediaRoot(folder))
    assert prompt.images == [f"{folder}/img/x.png"]
    for ref in ("../x.png", "/etc/passwd", "s3://other/x.png"):
        outside = {**inside, "images": [ref]}
        with pytest.raises(DatasetError, match=r"c.jsonl:1: media path .* leaves the data root"):
            parse_prompts([outside], "c.jsonl", folder, MediaRoot(folder))
        assert parse_prompts([outside], "c.jsonl", folder)  # the CLI's own files: as given
