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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from egt.algorithms.tournament import Comparator, Tournament, best, calls_needed, order_share, rank
from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.scalar import CONFIG_FILE, Response, ScalarRewardModel
from egt.formats.common import MediaRoot
from egt.judge import parse_answer
from egt.stages.data import ImageLoader, absolutize_images

if TYPE_CHECKING:
    from egt.engines.vllm_engine import VLLMEngine
    from egt.engines.vllm_scalar import VLLMScalar


@dataclass
class Prompt:
    """One prompt and its N candidate responses; images as absolute references, opened when scored."""

    id: str
    images: list[str]
    question: str
    candidates: list[str]


def parse_prompts(
    records: Sequence[dict], source: str, base_uri: str, media: MediaRoot | None = None
) -> list[Prompt]:
    """The candidates file's records, checked one by one (a bad one is named with its field); image
    references relative to ``base_uri`` (the file's folder). With ``media`` (the score stage, which
    reads with the pipeline's credentials) they must resolve inside its root, as a dataset's do."""
    prompts = []
    for number, record in enumerate(records, start=1):
        where = f"{source}:{number}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: not a JSON object")
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
        refs = record.get("images") or []
        if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"{where} (id {record['id']!r}): images must be a list of references")
        if media is None:
            [resolved] = absolutize_images([{"images": refs}], base_uri)
            uris = resolved["images"]
        else:
            uris = [media.store.uri_for(media.key(ref, where)) for ref in refs]
        prompts.append(Prompt(str(record["id"]), uris, record["query"], candidates))
    if not prompts:
        raise ValueError(f"{source}: no prompts")
    return prompts


def read_prompts(path: Path) -> list[Prompt]:
    """A local candidates file (JSON Lines)."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
    return parse_prompts(records, str(path), path.parent.resolve().as_uri())


def is_scalar_model(model_dir: Path) -> bool:
    return (Path(model_dir) / CONFIG_FILE).exists()


def scalar_scores(
    model: ScalarRewardModel | VLLMScalar, prompt: Prompt, images: list[Image.Image], batch_size: int
) -> list[float]:
    items = [Response(images, prompt.question, c) for c in prompt.candidates]
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
    judge: HFJudge | VLLMEngine,
    prompt: Prompt,
    images: list[Image.Image],
    max_new_tokens: int,
    batch_size: int,
) -> Comparator:
    """Compare candidates i and j with the reasoning model, as given and swapped."""

    def compare(pairs: Sequence[tuple[int, int]]) -> list[float]:
        items = []
        for i, j in pairs:
            first, second = prompt.candidates[i], prompt.candidates[j]
            items += [
                JudgeInput(images, prompt.question, first, second),
                JudgeInput(images, prompt.question, second, first),
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


def score_prompts(
    model: ScalarRewardModel | VLLMScalar | HFJudge | VLLMEngine,
    scalar: bool,
    prompts: Sequence[Prompt],
    images: ImageLoader,
    tournament: Tournament = "round_robin",
    max_new_tokens: int = 512,
    batch_size: int = 16,
    progress: Callable[[str], None] = lambda line: None,
) -> Iterator[dict]:
    """One row per prompt: ``{"id", "kind", "scores", "best", "best_response", "model_calls"}``."""
    kind = "scalar" if scalar else f"reasoning ({tournament})"
    for index, prompt in enumerate(prompts, start=1):
        n = len(prompt.candidates)
        try:
            opened = images(prompt.images)
        except OSError as error:
            raise ValueError(f"prompt {prompt.id!r}: an image cannot be read: {error}") from None
        if scalar:
            scores, used = scalar_scores(model, prompt, opened, batch_size), n
        else:
            compare = judge_comparator(model, prompt, opened, max_new_tokens, batch_size)
            scores, used = rank(n, compare, tournament), calls_needed(n, tournament)
        top = best(scores)
        progress(f"{index}/{len(prompts)} {prompt.id}: best {top} of {n}")
        yield {
            "id": prompt.id,
            "kind": kind,
            "scores": scores,
            "best": top,
            "best_response": prompt.candidates[top],
            "model_calls": used,
        }


def summarize(rows: Sequence[dict], seconds: float) -> dict:
    """Prompts, candidates, model calls and wall time of a scoring pass."""
    return {
        "prompts": len(rows),
        "candidates": sum(len(row["scores"]) for row in rows),
        "kind": rows[0]["kind"] if rows else None,
        "model_calls": sum(row["model_calls"] for row in rows),
        "seconds": seconds,
    }


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
    prompts = read_prompts(candidates)
    started = time.perf_counter()
    model, scalar = load_reward_model(model_dir, engine, dtype, device)
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as sink:
        scored = score_prompts(
            model, scalar, prompts, ImageLoader(), tournament, max_new_tokens, batch_size, progress
        )
        for row in scored:
            sink.write(json.dumps(row) + "\n")
            rows.append(row)
    return summarize(rows, time.perf_counter() - started)
