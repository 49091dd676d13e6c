"""``egt score``: rank N candidate responses per prompt with a trained reward model of either kind.

A scalar reward model (a folder with ``reward_model.json``, egt.engines.scalar) scores each candidate
alone: N passes. A reasoning reward model (any other Qwen2.5-VL folder: the SFT or RL model of a run)
compares candidates in a tournament (egt.algorithms.tournament), each comparison in both orders,
greedy, the answer parsed as the evaluate stage parses it. Either runs on transformers or, with
``engine="vllm"``, on vLLM (egt.engines.vllm_scalar, egt.engines.vllm_engine).

Input, JSON Lines, one prompt per line: ``{"id", "images": [refs], "query", "candidates": [str, ...]}``;
image references relative to the file's folder, or absolute (``file://``, ``s3://``, a path). Output,
one line per prompt: ``{"id", "kind", "scores", "best", "best_response", "model_calls"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from egt.algorithms.tournament import Comparator, Tournament, best, calls_needed, order_share, rank
from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.scalar import CONFIG_FILE, Response, ScalarRewardModel
from egt.judge import parse_answer
from egt.stages.data import ImageLoader, absolutize_images

if TYPE_CHECKING:
    from egt.engines.vllm_engine import VLLMEngine
    from egt.engines.vllm_scalar import VLLMScalar


@dataclass
class Prompt:
    """One prompt and its N candidate responses."""

    id: str
    images: list[Image.Image]
    question: str
    candidates: list[str]


def read_prompts(path: Path, images: ImageLoader) -> list[Prompt]:
    """The candidates file, checked line by line: a bad line is named with its field."""
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
        missing = [field for field in ("id", "query", "candidates") if field not in record]
        if missing:
            raise ValueError(f"{where}: lacks {', '.join(missing)}")
        candidates = record["candidates"]
        if (
            not isinstance(candidates, list)
            or not candidates
            or not all(isinstance(c, str) for c in candidates)
        ):
            raise ValueError(f"{where} (id {record['id']!r}): candidates must be a non-empty list of strings")
        [resolved] = absolutize_images(
            [{"images": record.get("images") or []}], path.parent.resolve().as_uri()
        )
        try:
            opened = images(resolved["images"])
        except OSError as error:
            raise ValueError(f"{where} (id {record['id']!r}): an image cannot be read: {error}") from None
        prompts.append(Prompt(str(record["id"]), opened, record["query"], candidates))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def is_scalar_model(model_dir: Path) -> bool:
    return (Path(model_dir) / CONFIG_FILE).exists()


def scalar_scores(model: ScalarRewardModel | VLLMScalar, prompt: Prompt, batch_size: int) -> list[float]:
    items = [Response(prompt.images, prompt.question, c) for c in prompt.candidates]
    scores: list[float] = []
    for start in range(0, len(items), batch_size):
        with torch.no_grad():
            scores += [float(score) for score in model.scores(items[start : start + batch_size])]
    return scores


def load_reward_model(model_dir: Path, engine: str, dtype: str, device: str):
    """(model, is_scalar): a scalar reward model or a reasoning judge, on transformers or vLLM."""
    scalar = is_scalar_model(model_dir)
    if engine == "vllm":
        from egt.engines.vllm_engine import VLLMEngine
        from egt.engines.vllm_scalar import VLLMScalar

        return (VLLMScalar if scalar else VLLMEngine)(model_dir, dtype, device), scalar
    if engine != "hf":
        raise ValueError(f"unknown engine {engine!r}; use 'hf' or 'vllm'")
    return (ScalarRewardModel if scalar else HFJudge).from_dir(model_dir, dtype, device), scalar


def judge_comparator(
    judge: HFJudge | VLLMEngine, prompt: Prompt, max_new_tokens: int, batch_size: int
) -> Comparator:
    """Compare candidates i and j with the reasoning model, as given and swapped."""

    def compare(pairs: Sequence[tuple[int, int]]) -> list[float]:
        items = []
        for i, j in pairs:
            first, second = prompt.candidates[i], prompt.candidates[j]
            items += [
                JudgeInput(prompt.images, prompt.question, first, second),
                JudgeInput(prompt.images, prompt.question, second, first),
            ]
        answers = []
        for start in range(0, len(items), batch_size):
            outputs = judge.generate(items[start : start + batch_size], max_new_tokens, temperature=0.0)
            answers += [parse_answer(g.text) for g in outputs]
        shares = []
        for k in range(len(pairs)):
            as_given, swapped = answers[2 * k], answers[2 * k + 1]
            shares.append(
                order_share(
                    [None if as_given is None else as_given == 1, None if swapped is None else swapped == 2]
                )
            )
        return shares

    return compare


def score_file(
    model_dir: Path,
    candidates: Path,
    out: Path,
    tournament: Tournament = "round_robin",
    max_new_tokens: int = 512,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "float32",
    progress: Callable[[str], None] = lambda line: None,
    engine: str = "hf",
) -> dict:
    """Score every prompt's candidates and write one line each to ``out``; returns a summary."""
    prompts = read_prompts(candidates, ImageLoader())
    started = time.perf_counter()
    model, scalar = load_reward_model(model_dir, engine, dtype, device)
    calls = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as sink:
        for index, prompt in enumerate(prompts, start=1):
            n = len(prompt.candidates)
            if scalar:
                scores, used = scalar_scores(model, prompt, batch_size), n
            else:
                compare = judge_comparator(model, prompt, max_new_tokens, batch_size)
                scores, used = rank(n, compare, tournament), calls_needed(n, tournament)
            calls += used
            top = best(scores)
            row = {
                "id": prompt.id,
                "kind": "scalar" if scalar else f"reasoning ({tournament})",
                "scores": scores,
                "best": top,
                "best_response": prompt.candidates[top],
                "model_calls": used,
            }
            sink.write(json.dumps(row) + "\n")
            progress(f"{index}/{len(prompts)} {prompt.id}: best {top} of {n}")
    seconds = time.perf_counter() - started
    return {
        "prompts": len(prompts),
        "candidates": sum(len(p.candidates) for p in prompts),
        "kind": "scalar" if scalar else f"reasoning ({tournament})",
        "model_calls": calls,
        "seconds": seconds,
    }
