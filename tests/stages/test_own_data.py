"""Bring your own data: a dataset of one's own in the native format, as the README describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from egt.storage.manifest import read_manifest
from egt.storage.store import open_store
from tests.stages.test_faults import native_dataset, own_data_run, quiet

pytestmark = pytest.mark.slow


def test_truth_columns_of_ones_own_data_are_counted_at_prepare(small_run_doc, tmp_path: Path) -> None:
    """External data with truth_kind columns: prepare counts them per pool, as for synthetic data, so
    the annotation table can set kept shares beside the pool's kinds (it showed '—')."""
    data = native_dataset(tmp_path / "data", {"sft": 12, "rl": 6, "eval": 4})
    quiet(own_data_run(small_run_doc, tmp_path, data), tmp_path / "work", stop="prepare")
    metrics = read_manifest(open_store(str(tmp_path / "store")), "small", "prepare").metrics
    assert sum(metrics["sft_truth_kinds"].values()) == 12 and "clean" in metrics["sft_truth_kinds"]
    assert sum(metrics["held_truth_kinds"].values()) == 4


README = Path(__file__).parents[2] / "README.md"
SHAPES = ("circle", "square", "triangle")


def byod_section() -> str:
    text = README.read_text()
    return text[text.index("### Bring your own data") : text.index("### Secrets")]


def block(section: str, language: str) -> str:
    start = section.index(f"```{language}\n") + len(f"```{language}\n")
    return section[start : section.index("```", start)]


def draw(shape: str, path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (112, 112), "white")
    pen = ImageDraw.Draw(image)
    box = (20, 20, 92, 92)
    {"circle": pen.ellipse, "square": pen.rectangle}.get(shape, lambda b, fill: pen.polygon(
        [(56, 20), (92, 92), (20, 92)], fill=fill))(box, fill="black")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def shape_pairs(folder: Path, name: str, n: int) -> None:
    """Pairs in the README's record format: the drawn shape against another, some labels flipped."""
    import json
    import random

    rng, lines = random.Random(name), []
    example = json.loads(block(byod_section(), "json"))
    for k in range(n):
        shape, other = rng.sample(SHAPES, 2)
        image = f"images/{name}-{k}.png"
        draw(shape, folder / image)
        right = rng.choice((1, 2))
        flipped = name != "eval" and k % 5 == 4
        responses = {right: f"A {shape}.", 3 - right: f"A {other}."}
        record = {
            "id": f"{name}-{k}", "images": [image], "query": example["query"],
            "response_1": responses[1], "response_2": responses[2],
            "label": 3 - right if flipped else right, "truth_kind": "flipped" if flipped else "clean",
        }  # fmt: skip
        assert record.keys() - {"truth_kind"} == example.keys()
        lines.append(json.dumps(record))
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def test_the_readmes_bring_your_own_data_section_works_as_written(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The README's section followed literally: shape pairs in its record format, its run file in
    my-project/, the offline teacher server, run from another working directory."""
    import time

    from egt.cli import main
    from egt.teachers.server import serve

    project = tmp_path / "my-project"
    for name, n in (("sft", 16), ("rl", 12), ("eval", 6)):
        shape_pairs(project / "data", name, n)
    server, _ = serve()
    try:
        run_file = block(byod_section(), "yaml").replace(
            "127.0.0.1:8000", f"127.0.0.1:{server.server_address[1]}"
        )
        (project / "run.yaml").write_text(run_file)
        monkeypatch.chdir(tmp_path)  # the folder above my-project, as the README's commands assume
        assert main(["validate", "my-project/run.yaml"]) == 0
        began = time.monotonic()
        assert main(["run", "my-project/run.yaml", "--local", "-q"]) == 0
        took = time.monotonic() - began
    finally:
        server.close()
    printed = capsys.readouterr().out
    report = tmp_path / ".cache" / "egt" / "my-run" / "report" / "report.md"
    assert report.exists() and (tmp_path / "runs" / "my-run" / "report" / "report.md").exists()
    text = report.read_text()
    assert "Kept share by truth kind" in text and "| flipped |" in text
    assert "Truth kinds from the datasets' truth_kind columns" in text  # not "injected by synthetic data"
    print(f"README run: {took:.0f} s\n{printed}")
