"""A tiny OpenAI-compatible chat server that answers with the scripted teacher, for offline trials.

Point :class:`~egt.teachers.openai_compat.OpenAICompatTeacher` at any OpenAI-compatible server;
this one needs no network, GPU or key, so stage 1 can be tried end to end on a laptop::

    python -m egt.teachers.server --port 8000
    # teacher: OpenAICompatTeacher("http://127.0.0.1:8000/v1", "scripted", api_key_env=None)

It serves ``POST /v1/chat/completions`` on loopback only. It answers by reading the synthetic colour
images of the demo's data (``data.synthetic``) and nothing else: on any other data its judgements
are noise. Its answer depends on the request alone: the scripted teacher's ``attempt`` is the
request's ``seed`` (egt's client sends the attempt number there), so the same request always gets
the same answer and a run against it is repeatable. For tests it can require a bearer token, hold
each request (``latency_s``, to observe concurrency) and fail its first requests on purpose
(:class:`Faults`).
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from PIL import Image, UnidentifiedImageError

from egt.teachers.scripted import ScriptedTeacher

logger = logging.getLogger(__name__)

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Faults:
    """The server's first ``count`` requests fail in one way, so a test can watch the client retry.

    ``"429"`` answers Too Many Requests with ``Retry-After: retry_after_s`` (if given); ``"500"`` an
    internal error; ``"timeout"`` holds the request ``sleep_s`` (longer than the client's timeout)
    and then answers 503, never reaching the teacher.
    """

    kind: Literal["429", "500", "timeout"]
    count: int
    retry_after_s: float | None = None
    sleep_s: float = 5.0


class ScriptedServer(ThreadingHTTPServer):
    """The HTTP server with its teacher, its options and counters that tests read."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        teacher: ScriptedTeacher,
        api_key: str | None,
        faults: Faults | None,
        latency_s: float,
    ) -> None:
        super().__init__(address, _Handler)
        self.teacher = teacher
        self.api_key = api_key
        self.faults = faults
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.requests = 0  # authorised chat requests received, faulty ones included
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()


def _decode_image(url: str) -> Image.Image:
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError("only base64 data-URI images are accepted")
    with Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1], validate=True))) as image:
        image.load()
        return image


def _user_turn(body: dict) -> tuple[str, list[Image.Image]]:
    """(prompt text, images) from a chat-completions request body."""
    user = [m for m in body["messages"] if m.get("role") == "user"]
    content = user[-1]["content"]
    if isinstance(content, str):
        return content, []
    text = "".join(part["text"] for part in content if part.get("type") == "text")
    urls = [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
    return text, [_decode_image(url) for url in urls]


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:
            logger.debug("client went away before the response")  # e.g. it timed out first

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "code": status}}, headers)

    def do_POST(self) -> None:
        if self.path != PATH:
            self._error(404, f"no route {self.path}; this server answers {PATH}")
            return
        server = self.server
        if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
            self._error(401, "invalid or missing API key")
            return
        with server.lock:
            server.requests += 1
            number = server.requests
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            self._answer(number)
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self, number: int) -> None:
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(server.latency_s)
        faults = server.faults
        if faults is not None and number <= faults.count:
            if faults.kind == "429":
                retry = {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
                self._error(429, "rate limited (injected fault)", retry)
            elif faults.kind == "500":
                self._error(500, "internal error (injected fault)")
            else:
                time.sleep(faults.sleep_s)
                self._error(503, "too slow (injected fault)")
            return
        try:
            request = json.loads(body)
            text, images = _user_turn(request)
            attempt = int(request.get("seed") or 1)
            output = server.teacher.judge_text(text, images, attempt=attempt)
        except (ValueError, LookupError, TypeError, AttributeError, UnidentifiedImageError) as exc:
            self._error(400, f"bad request: {exc}")
            return
        self._send(
            200,
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "scripted"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": "stop"}
                ],
            },
        )


def _is_loopback(host: str) -> bool:
    """An IPv4 loopback address or "localhost" (the server socket is IPv4)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    teacher: ScriptedTeacher | None = None,
    api_key: str | None = None,
    faults: Faults | None = None,
    latency_s: float = 0.0,
) -> tuple[ScriptedServer, threading.Thread]:
    """Start the server on a background thread (port 0: any free port; see ``server.base_url``).

    Loopback only: it is a test double with no real authentication to speak of. Stop it with
    ``server.close()``.
    """
    if not _is_loopback(host):
        raise ValueError(f"host must be an IPv4 loopback address, got {host!r}")
    server = ScriptedServer((host, port), teacher or ScriptedTeacher(), api_key, faults, latency_s)
    # A short poll interval so close() returns promptly (tests start and stop many servers).
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="scripted-teacher-server",
        daemon=True,
    )
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] + " It reads only the synthetic colour images of the "
        "demo's data (data.synthetic); on any other data its judgements are noise: use a real model "
        "behind an OpenAI-compatible server (e.g. vLLM) for your own data."
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--error-rate", type=float, default=0.1, help="how often the teacher errs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the teacher's errors")
    parser.add_argument(
        "--style",
        choices=["detailed", "steps"],
        default="detailed",
        help="reasoning style, as annotate.teacher.style of the scripted teacher",
    )
    parser.add_argument(
        "--api-key-env", help="require a bearer token equal to this environment variable's value"
    )
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    server, thread = serve(
        args.host,
        args.port,
        teacher=ScriptedTeacher(args.error_rate, args.seed, style=args.style),
        api_key=api_key,
    )
    print(f"scripted teacher at {server.base_url} (POST {PATH}); Ctrl-C stops it", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
