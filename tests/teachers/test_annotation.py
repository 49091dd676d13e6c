from pathlib import Path

import pytest

from egt.data.synthetic import generate_split
from egt.teachers import JudgeRequest
from egt.teachers.annotation import annotate
from egt.teachers.openai_compat import OpenAICompatTeacher
from egt.teachers.scripted import ScriptedTeacher
from egt.teachers.server import serve


def _paths(root: Path):
    """Image references resolved against a dataset directory."""
    return lambda refs: [root / ref for ref in refs]


def _output(answer: int, note: str = "") -> str:
    return f"<think>{note} Therefore Response {answer} is better.</think><answer>{answer}</answer>"


class FakeTeacher:
    """Answers from a script: ``answers[question][attempt - 1]`` (an int, a raw string or an exception)."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers = answers
        self.rounds: list[list[tuple[str, int]]] = []

    def judge_many(self, requests: list[JudgeRequest]) -> list:
        self.rounds.append([(r.question, r.attempt) for r in requests])
        outputs = []
        for r in requests:
            answer = self.answers[r.question][r.attempt - 1]
            outputs.append(_output(answer, f"attempt {r.attempt}") if isinstance(answer, int) else answer)
        return outputs


def _record(name: str, label: int) -> dict:
    return {"id": name, "images": [], "query": name, "response_1": "A", "response_2": "B", "label": label}


def test_keeps_the_first_agreeing_attempt_and_batches_by_round():
    records = [_record("a", 1), _record("b", 2), _record("c", 1), _record("d", 2)]
    teacher = FakeTeacher({"a": [1], "b": [1, 2], "c": [2, 2, 1], "d": [1, 1, 1]})
    out = annotate(records, teacher, _paths(Path(".")))
    assert [r["attempts"] for r in out] == [1, 2, 3, 3]
    assert [r["annotated"] for r in out] == [True, True, True, False]
    assert out[1]["teacher_output"] == _output(2, "attempt 2")
    assert out[2]["teacher_output"] == _output(1, "attempt 3")
    assert out[3]["teacher_output"] is None
    assert teacher.rounds == [
        [("a", 1), ("b", 1), ("c", 1), ("d", 1)],
        [("b", 2), ("c", 2), ("d", 2)],
        [("c", 3), ("d", 3)],
    ]
    assert all(r["teacher_error"] is None for r in out)


def test_input_records_are_kept_and_not_modified():
    records = [_record("a", 2)]
    out = annotate(records, FakeTeacher({"a": [2]}), _paths(Path(".")))
    assert records == [_record("a", 2)]
    assert {k: out[0][k] for k in records[0]} == records[0]


def test_malformed_output_with_the_right_answer_is_not_kept():
    teacher = FakeTeacher({"a": ["<answer>1</answer>", "no tags at all", _output(1)]})
    [out] = annotate([_record("a", 1)], teacher, _paths(Path(".")))
    assert (out["attempts"], out["annotated"]) == (3, True)


def test_discards_after_max_attempts():
    [out] = annotate([_record("a", 1)], FakeTeacher({"a": [2, 2]}), _paths(Path(".")), max_attempts=2)
    assert (out["attempts"], out["annotated"], out["teacher_output"]) == (2, False, None)


def test_a_teacher_error_is_isolated():
    teacher = FakeTeacher({"a": [RuntimeError("HTTP 500 from http://x; gave up after 6 tries")], "b": [2, 1]})
    bad, good = annotate([_record("a", 1), _record("b", 1)], teacher, _paths(Path(".")))
    assert bad["teacher_error"].startswith("HTTP 500") and not bad["annotated"] and bad["attempts"] == 1
    assert good["annotated"] and good["attempts"] == 2
    assert teacher.rounds[1] == [("b", 2)]  # the failed record is not asked again


def test_labels_are_validated():
    with pytest.raises(ValueError, match="'a'"):
        annotate([_record("a", 0)], FakeTeacher({}), _paths(Path(".")))


def test_flipped_labels_are_usually_discarded_and_clean_ones_kept(tmp_path):
    records = generate_split(tmp_path, "train", 200, seed=0, flipped_fraction=0.3)
    out = annotate(records, ScriptedTeacher(error_rate=0.05, seed=0), _paths(tmp_path))
    flipped = [r for r in out if r["truth_kind"] == "flipped"]
    clean = [r for r in out if r["truth_kind"] == "clean"]
    assert sum(not r["annotated"] for r in flipped) / len(flipped) >= 0.75  # kept only if 1 of 3 errs
    assert sum(r["annotated"] for r in clean) / len(clean) >= 0.98
    assert sum(r["attempts"] == 1 for r in clean) / len(clean) >= 0.9


def test_annotation_through_the_http_teacher(tmp_path):
    records = generate_split(tmp_path, "train", 30, seed=1, ambiguous_fraction=0.3)
    server, _ = serve(teacher=ScriptedTeacher(error_rate=0.1))
    try:
        teacher = OpenAICompatTeacher(server.base_url, "scripted", api_key_env=None, max_concurrency=4)
        out = annotate(records, teacher, _paths(tmp_path))
        again = annotate(records, teacher, _paths(tmp_path))  # the same server asked all over again
    finally:
        server.close()
    # Over HTTP the attempt travels as the request's seed: the same result as the teacher in-process,
    # and the same again on a second pass (it counted repeated questions, and kept 44, 41, 40 of 48).
    assert out == annotate(records, ScriptedTeacher(error_rate=0.1), _paths(tmp_path))
    assert again == out
    assert all(r["teacher_error"] is None for r in out)
    assert any(r["attempts"] > 1 and r["annotated"] for r in out if r["truth_kind"] == "ambiguous")


def test_the_offline_server_says_what_it_can_read_and_takes_a_style(capsys):
    from egt.teachers.server import main

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "only the synthetic colour images" in shown and "--style {detailed,steps}" in shown
