import inspect
import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egt.data.synthetic import COLOURS, generate_split
from egt.judge import is_well_formed, judge_prompt, parse_answer
from egt.teachers import JudgeRequest
from egt.teachers.scripted import ScriptedTeacher, named_colour, open_image, parse_judge_prompt, perceive

_CONCLUSION = re.compile(r"Therefore Response ([12]) is better\.</think>")


def _solid(colour: str, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), COLOURS[colour])


def _requests(records: list[dict], root: Path, attempt: int = 1) -> list[JudgeRequest]:
    return [
        JudgeRequest([root / p for p in r["images"]], r["query"], r["response_1"], r["response_2"], attempt)
        for r in records
    ]


def _accuracy(records: Sequence[dict], outputs: Sequence[str]) -> float:
    return float(
        np.mean([parse_answer(o) == r["truth_label"] for r, o in zip(records, outputs, strict=True)])
    )


def test_perceive_measures_colour_shares():
    assert perceive(_solid("green")) == {"green": 1.0}
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    image[:, :7] = COLOURS["orange"]
    image[:, 7:] = COLOURS["blue"]
    assert perceive(Image.fromarray(image)) == pytest.approx({"orange": 0.7, "blue": 0.3})


def test_named_colour():
    assert named_colour("Mostly Purple.") == "purple"
    assert named_colour("The redness") is None


@pytest.mark.parametrize("error_rate", [0.0, 0.2])
def test_accuracy_on_clean_pairs_is_one_minus_error_rate(tmp_path, error_rate):
    records = generate_split(tmp_path, "train", 300, seed=3)
    outputs = ScriptedTeacher(error_rate, seed=1).judge_many(_requests(records, tmp_path))
    assert _accuracy(records, outputs) == pytest.approx(1 - error_rate, abs=0.07)


def test_the_teacher_is_never_given_the_label():
    assert "label" not in inspect.signature(ScriptedTeacher.judge).parameters
    assert "label" not in {f.name for f in fields(JudgeRequest)}


def test_outputs_are_well_formed_and_the_reasoning_concludes_the_answer(tmp_path):
    records = generate_split(tmp_path, "train", 120, seed=0, ambiguous_fraction=0.3)
    outputs = ScriptedTeacher(error_rate=0.3).judge_many(_requests(records, tmp_path))
    clean = [(r, o) for r, o in zip(records, outputs, strict=True) if r["truth_kind"] == "clean"]
    assert _accuracy(*zip(*clean, strict=True)) < 0.9  # some answers are errors ...
    for output in outputs:  # ... and every one of them still reads consistently
        assert is_well_formed(output)
        assert _CONCLUSION.search(output).group(1) == str(parse_answer(output))


def test_an_error_is_a_consistent_misperception():
    teacher = ScriptedTeacher(error_rate=1.0)
    output = teacher.judge([_solid("red")], "What colour is this image?", "It is red.", "It is blue.", 1)
    assert parse_answer(output) == 2
    assert "almost entirely blue" in output and "red, which is not in the image" in output


def test_ambiguous_pairs_are_decided_at_random():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:4] = COLOURS["red"]
    image[4:] = COLOURS["yellow"]
    teacher = ScriptedTeacher(error_rate=0.0)
    answers = [
        parse_answer(
            teacher.judge([Image.fromarray(image)], f"Which colour covers more? ({i})", "Red.", "Yellow.", 1)
        )
        for i in range(40)
    ]
    assert 10 <= answers.count(1) <= 30


def test_reruns_are_identical_and_retries_may_differ():
    teacher = ScriptedTeacher(error_rate=0.5, seed=7)
    args = ([_solid("blue")], "What colour is this image?", "It is blue.", "It is green.")
    assert teacher.judge(*args, 1) == ScriptedTeacher(error_rate=0.5, seed=7).judge(*args, 1)
    assert len({teacher.judge(*args, attempt) for attempt in range(1, 11)}) == 2


def test_judge_text_reads_the_fields_back_from_the_prompt():
    question, first, second = "What colour is this image?\nBe brief.", "It is red.", "It is\nblue."
    prompt = judge_prompt(question, first, second)
    assert parse_judge_prompt(prompt) == (question, first, second)
    teacher = ScriptedTeacher(error_rate=0.3)
    assert teacher.judge_text(prompt, [_solid("red")], 4) == teacher.judge(
        [_solid("red")], question, first, second, 4
    )
    with pytest.raises(ValueError, match="not a judge prompt"):
        parse_judge_prompt("What colour is this image?")


def test_judge_many_opens_paths(tmp_path):
    _solid("purple").save(tmp_path / "p.png")
    request = JudgeRequest([tmp_path / "p.png"], "What colour?", "It is orange.", "It is purple.")
    assert parse_answer(ScriptedTeacher(error_rate=0.0).judge_many([request])[0]) == 2
    assert open_image(tmp_path / "p.png").size == (8, 8)


def test_error_rate_is_validated():
    with pytest.raises(ValueError, match="error_rate"):
        ScriptedTeacher(error_rate=1.5)


def test_steps_reasoning_states_the_image_then_a_verdict_per_response():
    teacher = ScriptedTeacher(error_rate=0.0, style="steps")
    red = [_solid("red")]
    assert teacher.judge(red, "What colour is this image?", "It is blue.", "It is red.", 1) == (
        '<think>The image is mostly "red". Response 1 says "blue": wrong. Response 2 says "red": right.'
        "</think><answer>2</answer>"
    )
    half = np.zeros((8, 8, 3), dtype=np.uint8)
    half[:4], half[4:] = COLOURS["red"], COLOURS["yellow"]
    output = teacher.judge([Image.fromarray(half)], "Which colour covers more?", "Red.", "Yellow.", 1)
    # a tie leaves the answer open: the reasoning does not decide it, the answer token does
    assert output.startswith(
        '<think>The image is half each. Response 1 says "red": tie. Response 2 says "yellow": tie.'
        "</think><answer>"
    )
    assert parse_answer(output) in (1, 2) and is_well_formed(output)
    erring = ScriptedTeacher(error_rate=1.0, style="steps")
    assert erring.judge(red, "What colour is this image?", "It is red.", "It is blue.", 1) == (
        '<think>The image is mostly "blue". Response 1 says "red": wrong. Response 2 says "blue": right.'
        "</think><answer>2</answer>"
    )
