"""Referees for R_logic: the offline rules and a chat model behind an OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from egt.referee import ChatReferee, RulesReferee, last_lines, parse_verdict, reasoning_of
from egt.teachers.openai_compat import ChatClient


def test_rules_referee():
    referee = RulesReferee()
    cases = {
        "<think>Both mention red. Response 1 is better.</think><answer>1</answer>": 1,
        "<think>Response 2 is the better one; RESPONSE 2 IS BETTER.</think><answer>2</answer>": 1,
        "<think>Response 2 is better.</think><answer>1</answer>": -1,  # contradicts the answer
        # The last conclusion counts.
        "<think>First Response 2 is better; overall Response 1 is the better.</think><answer>1</answer>": 1,
        "<think>First Response 1 is better; overall Response 2 is better.</think><answer>1</answer>": -1,
        "<think>Both are fine, it is hard to say.</think><answer>1</answer>": 0,  # no conclusion
        "<think>Response 1 is better.</think>": 0,  # no answer
        "<think>Response 1 is better.</think><answer>3</answer>": 0,  # no parseable answer
        # Malformed tags: the reasoning is whatever precedes <answer>.
        "Response 2 is better.<answer>2</answer>": 1,
        # A conclusion after the reasoning block is not reasoning.
        "<think>Hard to say.</think>Response 2 is better.<answer>2</answer>": 0,
    }
    assert referee.judge_many(list(cases)) == list(cases.values())


def test_reasoning_of_and_last_lines():
    assert reasoning_of("<think>a\nb</think><answer>1</answer>") == "a\nb"
    assert reasoning_of("just text<answer>1</answer>") == "just text"
    assert reasoning_of("no tags at all") == "no tags at all"
    assert last_lines("a\n\nb\nc\n\nd\n") == "b\nc\nd"
    assert last_lines("one", count=3) == "one"


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Yes", 1),
        ("yes.", 1),
        ("  YES! it does", 1),
        ("Yes, it does.", 1),
        ("No.", -1),
        ("no", -1),
        ("NO: the reasoning favours 2", -1),
        ("Unsure", 0),
        ("unsure.", 0),
        ("", 0),
        ("   ", 0),
        ("Yesterday", 0),
        ("Not sure", 0),
        ("Maybe yes", 0),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


class _RefereeServer(ThreadingHTTPServer):
    """A stand-in referee model: replies by a keyword in the prompt, and keeps every prompt it got."""

    daemon_threads = True
    replies: ClassVar[dict[str, str]] = {
        "KEYWORD_YES": "Yes",
        "KEYWORD_NO": "No.",
        "KEYWORD_UNSURE": "unsure",
    }

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _RefereeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        with self.server.lock:
            self.server.prompts.append(prompt)
        if self.path != "/v1/chat/completions" or "KEYWORD_FAIL" in prompt:
            self.send_response(400 if self.path == "/v1/chat/completions" else 404)
            self.end_headers()
            return
        reply = next((r for key, r in self.server.replies.items() if key in prompt), "I cannot say.")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def referee_server() -> Iterator[_RefereeServer]:
    server = _RefereeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_chat_referee(referee_server):
    client = ChatClient(referee_server.base_url, "referee", api_key_env=None, max_retries=0, timeout_s=10)
    outputs = [
        "<think>Line one.\nLine two.\nResponse 1 is right. KEYWORD_YES</think><answer>1</answer>",
        "<think>Response 1 names blue. KEYWORD_NO</think><answer>2</answer>",
        "<think>Unclear. KEYWORD_UNSURE</think><answer>1</answer>",
        "<think>Never sent: no answer. KEYWORD_YES</think>",
        "<think>Never sent: no parseable answer. KEYWORD_YES</think><answer>tie</answer>",
        "<think>The server fails on this one. KEYWORD_FAIL</think><answer>2</answer>",
        "Never sent either.",
    ]
    verdicts = ChatReferee(client).judge_many(outputs)
    assert verdicts == [1, -1, 0, 0, 0, 0, 0]

    prompts = referee_server.prompts
    assert len(prompts) == 4
    assert not any("Never sent" in prompt for prompt in prompts)
    by_keyword = {key: next(p for p in prompts if key in p) for key in ("YES", "NO", "UNSURE", "FAIL")}
    # The referee reads the last lines of the reasoning (no tags) and the verdict stated as a sentence.
    yes = by_keyword["YES"]
    assert "Line one.\nLine two.\nResponse 1 is right. KEYWORD_YES" in yes
    assert "<think>" not in yes and "<answer>" not in yes
    assert "[Verdict]: Response 1 is better." in yes
    assert "[Verdict]: Response 2 is better." in by_keyword["NO"]
    assert "[Verdict]: Response 2 is better." in by_keyword["FAIL"]


def test_chat_referee_with_nothing_to_ask_sends_nothing(referee_server):
    client = ChatClient(referee_server.base_url, "referee", api_key_env=None, max_retries=0, timeout_s=10)
    assert ChatReferee(client).judge_many(["<think>x</think>", "plain"]) == [0, 0]
    assert ChatReferee(client).judge_many([]) == []
    assert referee_server.prompts == []
