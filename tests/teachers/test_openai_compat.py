import logging
import socket
import time
import traceback
from collections.abc import Iterator

import pytest
from PIL import Image

from egt.data.synthetic import COLOURS
from egt.judge import is_well_formed, parse_answer
from egt.teachers import JudgeRequest
from egt.teachers.openai_compat import OpenAICompatTeacher, TeacherError, image_data_uri
from egt.teachers.scripted import ScriptedTeacher
from egt.teachers.server import Faults, ScriptedServer, serve

KEY = "sk-test-3f9a1c0d7e"
ENV = "EGT_TEST_TEACHER_KEY"


@pytest.fixture
def start(monkeypatch) -> Iterator:
    """Starts a scripted server (stopped after the test); the client's key is KEY unless told."""
    monkeypatch.setenv(ENV, KEY)
    servers: list[ScriptedServer] = []

    def _start(**kwargs) -> ScriptedServer:
        server, _ = serve(teacher=ScriptedTeacher(error_rate=0.0), **kwargs)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.close()


def _teacher(server: ScriptedServer, **kwargs) -> OpenAICompatTeacher:
    options = {"api_key_env": ENV, "backoff_s": 0.01, "timeout_s": 5.0} | kwargs
    return OpenAICompatTeacher(server.base_url, "scripted", **options)


def _request(
    colour: str = "red", other: str = "blue", question: str = "What colour is this image?"
) -> JudgeRequest:
    image = Image.new("RGB", (8, 8), COLOURS[colour])
    return JudgeRequest([image], question, f"It is {other}.", f"It is {colour}.")


def test_success_matches_the_scripted_teacher(start):
    server = start(api_key=KEY)
    requests = [_request(c, "green", f"Q{i}") for i, c in enumerate(["red", "blue", "yellow", "purple"])]
    outputs = _teacher(server).judge_many(requests)
    direct = ScriptedTeacher(error_rate=0.0).judge_many(requests)
    assert outputs == direct
    assert all(is_well_formed(o) and parse_answer(o) == 2 for o in outputs)


def test_paths_are_sent_as_data_uris(start, tmp_path):
    Image.new("RGB", (8, 8), COLOURS["orange"]).save(tmp_path / "a.png")
    assert image_data_uri(tmp_path / "a.png").startswith("data:image/png;base64,")
    request = JudgeRequest([tmp_path / "a.png"], "What colour?", "It is orange.", "It is red.")
    assert parse_answer(_teacher(start()).judge_many([request])[0]) == 1


def test_429_is_retried_after_retry_after(start):
    server = start(faults=Faults("429", count=2, retry_after_s=0.4))
    began = time.monotonic()
    [output] = _teacher(server).judge_many([_request()])
    assert is_well_formed(output)
    assert server.requests == 3
    assert time.monotonic() - began >= 0.8  # two Retry-After waits, not two 10 ms backoffs


def test_500s_are_retried(start):
    server = start(faults=Faults("500", count=3))
    assert is_well_formed(_teacher(server).judge_many([_request()])[0])
    assert server.requests == 4


def test_retries_run_out(start):
    server = start(faults=Faults("500", count=10))
    [error] = _teacher(server, max_retries=2).judge_many([_request()])
    assert isinstance(error, TeacherError)
    assert "HTTP 500" in str(error) and server.base_url in str(error) and "3 tries" in str(error)
    assert server.requests == 3


def test_timeouts_are_retried(start):
    server = start(faults=Faults("timeout", count=1, sleep_s=1.0))
    [output] = _teacher(server, timeout_s=0.3).judge_many([_request()])
    assert is_well_formed(output)
    assert server.requests == 2


def test_connection_errors_are_retried_then_reported():
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    teacher = OpenAICompatTeacher(
        f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, backoff_s=0.01, max_retries=2
    )
    [error] = teacher.judge_many([_request()])
    assert isinstance(error, TeacherError) and "ConnectError" in str(error) and "3 tries" in str(error)


def test_wrong_key_fails_fast_without_the_key_anywhere(start, monkeypatch, caplog):
    server = start(api_key="the-right-key")
    caplog.set_level(logging.DEBUG)
    began = time.monotonic()
    [error] = _teacher(server, backoff_s=1.0).judge_many([_request()])
    assert time.monotonic() - began < 1.0
    assert isinstance(error, TeacherError)
    assert "401" in str(error) and server.base_url in str(error)
    assert server.requests == 0  # refused before it counted as a chat request, and not retried
    text = "".join(traceback.format_exception(error)) + repr(error) + caplog.text
    assert KEY not in text


def test_key_never_logged_while_retrying(start, caplog):
    server = start(api_key=KEY, faults=Faults("429", count=2))
    caplog.set_level(logging.DEBUG)
    teacher = _teacher(server)
    assert is_well_formed(teacher.judge_many([_request()])[0])
    assert "retry 1/5" in caplog.text
    assert KEY not in caplog.text and KEY not in repr(teacher) and KEY not in str(vars(teacher))


def test_missing_key_variable_is_named(monkeypatch, start):
    server = start()
    monkeypatch.delenv(ENV)
    with pytest.raises(TeacherError, match=ENV):
        _teacher(server).judge_many([_request()])


def test_concurrency_is_bounded(start):
    server = start(latency_s=0.1)
    requests = [_request(question=f"Q{i}") for i in range(12)]
    outputs = _teacher(server, max_concurrency=3).judge_many(requests)
    assert all(is_well_formed(o) for o in outputs)
    assert 2 <= server.max_in_flight <= 3


def test_server_is_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        serve("0.0.0.0")
