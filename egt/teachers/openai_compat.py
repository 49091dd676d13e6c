"""A teacher behind any OpenAI-compatible chat-completions endpoint (OpenAI, Gemini, vLLM, SGLang, …).

Stage 1 sends thousands of requests to a rate-limited service, so this client runs them
concurrently (an ``asyncio.Semaphore`` bounds how many are in flight) and retries what is worth
retrying: 429, 408, 5xx, timeouts and dropped connections, with exponential backoff and jitter, or
after the server's ``Retry-After`` when it sends one. Any other 4xx is a mistake a retry cannot fix
(bad key, unknown model, malformed request) and fails at once.

The API key is read from the named environment variable on each :meth:`judge_many` call and only
ever placed in the ``Authorization`` header: it is not stored on the object, logged, or put in an
exception message (a server's error body is quoted with the key blanked out).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import logging
import mimetypes
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from PIL import Image

from egt.judge import judge_prompt
from egt.teachers import ImageInput, JudgeRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _as_messages(messages: list[dict]) -> list[dict]:
    return messages


_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_BODY_EXCERPT = 300  # characters of a server's error body quoted in an exception


class TeacherError(RuntimeError):
    """A request that failed for good: a non-retryable status, or retries exhausted."""


def image_data_uri(image: ImageInput) -> str:
    """A base64 data URI: a file's bytes as they are (typed by its suffix), a decoded image as PNG."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    else:
        data = Path(image).read_bytes()
        mime = mimetypes.guess_type(str(image))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (delta-seconds or an HTTP date), or None if absent or bad."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _completion_text(response: httpx.Response, endpoint: str) -> str:
    """The assistant message's text; some servers send it as a list of text parts."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        raise TeacherError(f"malformed chat completion from {endpoint}") from None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise TeacherError(f"chat completion from {endpoint} has no text content")
    return content


class ChatClient:
    """Concurrent, retrying chat completions against ``{base_url}/chat/completions``.

    ``api_key_env`` names the environment variable holding the key (None: send no key, e.g. a local
    server). Used by the teacher (stage 1) and the RL referee.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 1024,
        timeout_s: float = 120,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_concurrency: int = 8,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        self.endpoint = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(endpoint={self.endpoint!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    def chat_many(
        self, items: list[T], to_messages: Callable[[T], list[dict]] = _as_messages
    ) -> list[str | Exception]:
        """Complete a batch concurrently; each failed request comes back as its exception, in its place.

        ``to_messages`` builds an item's chat messages; it runs inside the concurrency bound, so only
        the payloads in flight (with their encoded images) are held in memory.
        """
        return asyncio.run(self.achat_many(items, to_messages))

    async def achat_many(
        self, items: list[T], to_messages: Callable[[T], list[dict]] = _as_messages
    ) -> list[str | Exception]:
        """:meth:`chat_many` for callers already inside an event loop."""
        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        semaphore = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def bounded(item: T) -> str:
                async with semaphore:
                    return await self._complete(client, headers, key, to_messages, item)

            results = await asyncio.gather(*(bounded(item) for item in items), return_exceptions=True)
        return list(results)

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise TeacherError(f"environment variable {self.api_key_env} (the API key) is not set")
        return key

    def _payload(self, messages: list[dict], seed: int | None = None) -> dict:
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        return payload if seed is None else {**payload, "seed": seed}

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with jitter, so clients throttled together do not retry together."""
        return self.backoff_s * 2**retry * random.uniform(0.5, 1.5)

    async def _complete(
        self,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        key: str | None,
        to_messages: Callable[[T], list[dict]],
        item: T,
    ) -> str:
        # A judge request's attempt is its sampling seed: attempts differ, and each is reproducible.
        payload = self._payload(await asyncio.to_thread(to_messages, item), getattr(item, "attempt", None))
        retry = 0
        while True:
            try:
                response = await client.post(self.endpoint, json=payload, headers=headers)
            except _RETRYABLE_ERRORS as exc:
                problem, wait = f"{type(exc).__name__} ({exc})", None
            else:
                if response.is_success:
                    return _completion_text(response, self.endpoint)
                if not _retryable(response.status_code):
                    body = response.text[:_BODY_EXCERPT]
                    if key:
                        body = body.replace(key, "***")
                    raise TeacherError(f"HTTP {response.status_code} from {self.endpoint}: {body}")
                problem, wait = f"HTTP {response.status_code}", _retry_after(response)
            if retry == self.max_retries:
                raise TeacherError(f"{problem} from {self.endpoint}; gave up after {retry + 1} tries")
            delay = self._backoff(retry) if wait is None else wait
            retry += 1
            logger.warning(
                "%s from %s; retry %d/%d in %.2fs", problem, self.endpoint, retry, self.max_retries, delay
            )
            await asyncio.sleep(delay)


class OpenAICompatTeacher(ChatClient):
    """The judge prompt, images first (as data URIs), sent to any OpenAI-compatible endpoint.

    ``attempt`` goes as the request's ``seed`` (OpenAI's and vLLM's reproducible sampling): at
    temperature 0 a retry asks the same question again, as R1-Reward did with GPT-4o; at a higher
    ``temperature`` each attempt samples differently, and the same attempt the same way again.
    """

    def judge_many(self, requests: list[JudgeRequest]) -> list[str | Exception]:
        """Judge a batch concurrently; each failed request comes back as its exception, in its place."""
        return self.chat_many(requests, judge_messages)

    async def ajudge_many(self, requests: list[JudgeRequest]) -> list[str | Exception]:
        return await self.achat_many(requests, judge_messages)


def judge_messages(request: JudgeRequest) -> list[dict]:
    """The user turn of a judge request in the OpenAI chat format."""
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": image_data_uri(image)}} for image in request.images
    ]
    content.append(
        {"type": "text", "text": judge_prompt(request.question, request.response_1, request.response_2)}
    )
    return [{"role": "user", "content": content}]
