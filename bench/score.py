"""Best of N with both kinds of reward model on the same candidates, side by side (egt score).

A scalar reward model scores N candidates in N forward passes; a reasoning one judges pairs by
generating, both orders per comparison: N(N−1) generations for a round-robin, 2(N−1) for a knockout.
This measures what that costs on the same prompts: the tiny Qwen2.5-VL (64 wide, 4 layers), the
demo's 112-pixel synthetic images, ``--candidates`` per prompt, ``--max-new-tokens`` per judgement
(the demo's 48; the untrained tiny judge writes all of them, as a judge that reasons would).

    .venv/bin/python bench/score.py --prompts 16 --candidates 4 --json /tmp/egtbench/score.json

Weights do not change the cost of a forward pass, so the scalar model here is an untrained head on
the same backbone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from egt.data.synthetic import COLOURS, generate_split  # noqa: E402
from egt.engines.best_of_n import score_file  # noqa: E402
from egt.engines.scalar import ScalarRewardModel  # noqa: E402
from egt.models.tiny import build_tiny_model  # noqa: E402


def candidates_file(folder: Path, prompts: int, candidates: int) -> Path:
    """Synthetic prompts with ``candidates`` answers each (the right one and wrong colours)."""
    rng = random.Random(0)
    lines = []
    for record in generate_split(folder, "bench", prompts, 0, image_size=112):
        right = record[f"response_{record['label']}"]
        colour = next(c for c in COLOURS if f" {c}." in right)
        texts = [right] + [right.replace(f" {colour}.", f" {c}.") for c in COLOURS if c != colour]
        texts = texts[:candidates]
        rng.shuffle(texts)
        images = [str(folder / path) for path in record["images"]]
        lines.append(
            json.dumps({"id": record["id"], "images": images, "query": record["query"], "candidates": texts})
        )
    path = folder / "candidates.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="egt-bench-score-"))
    base = build_tiny_model(work / "tiny", seed=0)
    scalar = ScalarRewardModel.from_base(base, "last_token", device="cpu")
    scalar.save(work / "scalar")
    path = candidates_file(work / "data", args.prompts, args.candidates)
    n, comparisons = args.candidates, args.prompts * args.candidates * (args.candidates - 1) // 2
    rows = {}
    for label, model, tournament in (
        ("scalar", work / "scalar", "round_robin"),
        ("reasoning, round_robin", base, "round_robin"),
        ("reasoning, knockout", base, "knockout"),
    ):
        summary = score_file(
            model, path, work / f"{label}.jsonl", tournament, args.max_new_tokens, args.batch_size, "cpu"
        )
        seconds = summary["seconds"]
        rows[label] = {
            "seconds": round(seconds, 2),
            "model_calls": summary["model_calls"],
            "prompts_per_second": round(args.prompts / seconds, 3),
            # All N(N−1)/2 comparisons are decided by a round-robin and by N scalar scores; a knockout
            # decides only the N−1 it plays.
            "pairs_per_second": round(
                (comparisons if tournament == "round_robin" else args.prompts * (n - 1)) / seconds, 2
            ),
        }
        print(f"{label}: {rows[label]}", flush=True)
    result = {
        "prompts": args.prompts,
        "candidates": n,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
