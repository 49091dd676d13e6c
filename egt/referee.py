"""Referees for R_logic: does the reasoning support the answer? (method.md stage 5, R1-Reward §3).

``+1`` when the reasoning's conclusion supports the given answer, ``−1`` when it contradicts it,
``0`` when the referee cannot decide (including outputs with no answer at all).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from egt.judge import parse_answer

_CONCLUSION = re.compile(r"Response\s*([12])\s+is\s+(?:the\s+)?better", re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)

REFEREE_PROMPT = """You are a strict referee of logical consistency. Below are the last lines of an \
evaluator's reasoning, which compared two responses, and the evaluator's final verdict.
Does the reasoning support the verdict? Reply with exactly one word: Yes, No, or Unsure.
[Reasoning]: {reasoning}
[Verdict]: Response {answer} is better."""


class Referee(Protocol):
    def judge_many(self, outputs: Sequence[str]) -> list[int]: ...


def reasoning_of(output: str) -> str:
    """The text inside <think>, or everything before <answer> when the tags are malformed."""
    match = _THINK.search(output)
    return match.group(1) if match else output.split("<answer>")[0]


def last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


class RulesReferee:
    """Offline referee: the reasoning's last "Response N is better" must name the answer.

    It needs no model, so the demo and tests can run RL; it only reads an explicit conclusion, so an
    output that argues one way and concludes nothing scores 0, not −1.
    """

    def judge_one(self, output: str) -> int:
        answer = parse_answer(output)
        conclusions = _CONCLUSION.findall(reasoning_of(output))
        if answer is None or not conclusions:
            return 0
        return 1 if int(conclusions[-1]) == answer else -1

    def judge_many(self, outputs: Sequence[str]) -> list[int]:
        return [self.judge_one(output) for output in outputs]


def parse_verdict(reply: str) -> int:
    word = reply.strip().split()[0].strip(".,!:").lower() if reply.strip() else ""
    return {"yes": 1, "no": -1}.get(word, 0)


class ChatReferee:
    """A model behind an OpenAI-compatible endpoint (R1-Reward: Qwen2.5-VL-7B-Instruct) as referee."""

    def __init__(self, chat) -> None:
        self.chat = chat  # egt.teachers.openai_compat.ChatClient

    def judge_many(self, outputs: Sequence[str]) -> list[int]:
        verdicts = [0] * len(outputs)
        asks = {}
        for index, output in enumerate(outputs):
            answer = parse_answer(output)
            if answer is not None:
                prompt = REFEREE_PROMPT.format(reasoning=last_lines(reasoning_of(output)), answer=answer)
                asks[index] = [{"role": "user", "content": prompt}]
        replies = self.chat.chat_many(list(asks.values()))
        for index, reply in zip(asks, replies, strict=True):
            verdicts[index] = 0 if isinstance(reply, Exception) else parse_verdict(reply)
        return verdicts
