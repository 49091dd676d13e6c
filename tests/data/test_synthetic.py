from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from egt.data.synthetic import ANSWERS, COLOUR_TOKEN_INDEX, COLOURS, generate_split
from egt.judge import swap_label
from egt.models.tokenizer import build_qwen_tokenizer
from egt.teachers.scripted import named_colour, perceive


def _generate(tmp_path: Path, n: int = 40, seed: int = 0, **kwargs) -> list[dict]:
    return generate_split(tmp_path, "train", n, seed, **kwargs)


def test_same_seed_gives_same_records_and_identical_png_bytes(tmp_path):
    first = _generate(tmp_path / "a", ambiguous_fraction=0.2, flipped_fraction=0.2)
    second = _generate(tmp_path / "b", ambiguous_fraction=0.2, flipped_fraction=0.2)
    assert first == second
    for record in first:
        path = record["images"][0]
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_other_seed_or_split_gives_other_pairs(tmp_path):
    base = _generate(tmp_path / "a")
    assert _generate(tmp_path / "b", seed=1) != base
    other_split = generate_split(tmp_path / "c", "test", 40, 0)
    assert [r["response_1"] for r in other_split] != [r["response_1"] for r in base]


def test_schema_ids_and_images(tmp_path):
    records = _generate(tmp_path, n=12, image_size=32)
    assert [r["id"] for r in records] == [f"train-{i:06d}" for i in range(12)]
    for record in records:
        assert record["images"] == [f"images/{record['id']}.png"]
        assert record["source"] == "synthetic"
        assert record["category"] in {"colour", "majority"}
        assert record["label"] in (1, 2)
        with Image.open(tmp_path / record["images"][0]) as image:
            assert (image.size, image.mode) == ((32, 32), "RGB")


@pytest.mark.parametrize(("n", "ambiguous", "flipped"), [(100, 0.1, 0.15), (37, 0.3, 0.0), (3, 0.5, 0.5)])
def test_exact_noise_counts(tmp_path, n, ambiguous, flipped):
    records = _generate(tmp_path, n=n, ambiguous_fraction=ambiguous, flipped_fraction=flipped)
    counts = Counter(r["truth_kind"] for r in records)
    assert len(records) == n
    assert counts["ambiguous"] == round(n * ambiguous)
    assert counts["flipped"] == min(round(n * flipped), n - counts["ambiguous"])
    assert counts["clean"] == n - counts["ambiguous"] - counts["flipped"]


def test_noise_positions_are_shuffled(tmp_path):
    kinds = [r["truth_kind"] for r in _generate(tmp_path, n=100, ambiguous_fraction=0.2)]
    assert kinds[:20] != ["ambiguous"] * 20
    assert "ambiguous" in kinds[50:]


def test_labels_are_balanced(tmp_path):
    records = _generate(tmp_path, n=400, ambiguous_fraction=0.1, flipped_fraction=0.1)
    ones = sum(r["label"] == 1 for r in records)
    assert 160 <= ones <= 240  # binomial(400, 0.5): ±4 standard deviations


def test_truth_columns(tmp_path):
    for record in _generate(tmp_path, n=60, ambiguous_fraction=0.25, flipped_fraction=0.25):
        kind, truth = record["truth_kind"], record["truth_label"]
        if kind == "clean":
            assert record["label"] == truth
        elif kind == "flipped":
            assert record["label"] == swap_label(truth)
        else:
            assert truth is None


def test_the_image_decides_the_answer(tmp_path):
    records = _generate(tmp_path, n=80, ambiguous_fraction=0.25)
    for record in records:
        with Image.open(tmp_path / record["images"][0]) as image:
            shares = perceive(image)
        named = [named_colour(record["response_1"]), named_colour(record["response_2"])]
        assert None not in named and named[0] != named[1]
        if record["truth_kind"] == "ambiguous":
            assert shares == {named[0]: 0.5, named[1]: 0.5} or shares == {named[1]: 0.5, named[0]: 0.5}
            continue
        right, wrong = named[record["truth_label"] - 1], named[2 - record["truth_label"]]
        assert next(iter(shares)) == right  # the dominant colour is the right answer's
        assert shares[right] >= 0.6 > shares.get(wrong, 0.0)
        if record["category"] == "colour":
            assert shares == {right: 1.0}


def test_responses_differ_only_in_the_colour(tmp_path):
    for record in _generate(tmp_path, n=30):
        first, second = record["response_1"].lower(), record["response_2"].lower()
        colour_1, colour_2 = named_colour(first), named_colour(second)
        assert first.replace(colour_1, "") == second.replace(colour_2, "")


def test_every_answer_puts_its_colour_at_the_same_token(tmp_path):
    """Six Qwen tokens, the colour fifth, for every template and colour: colours sit at fixed offsets."""
    tokenizer = build_qwen_tokenizer()
    for templates in ANSWERS.values():
        for template in templates:
            for colour in COLOURS:
                ids = tokenizer(template.format(colour), add_special_tokens=False)["input_ids"]
                assert len(ids) == 6, template
                assert tokenizer.decode([ids[COLOUR_TOKEN_INDEX]]) == f" {colour}"
    for record in _generate(tmp_path, n=12):
        assert {record["response_1"], record["response_2"]} <= {
            t.format(c) for templates in ANSWERS.values() for t in templates for c in COLOURS
        }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ambiguous_fraction": -0.1}, "ambiguous_fraction"),
        ({"flipped_fraction": 1.5}, "flipped_fraction"),
        ({"ambiguous_fraction": 0.6, "flipped_fraction": 0.5}, "ambiguous_fraction \\+ flipped_fraction"),
        ({"image_size": 55}, "image_size"),
    ],
)
def test_invalid_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _generate(tmp_path, **kwargs)
