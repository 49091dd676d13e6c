"""The loop behind docs/demo.md's second-round table: the demo's SFT outside the pipeline, then a probe.

One setting per model seed in minutes, two runs at a time on two cores, from the pieces the pipeline
runs: the tiny model builder, the synthetic data, the scripted teacher and the annotation rule (first
of 3 attempts agreeing with the label), the chunked SFT loss and its schedule, the probe, and the
report's effect measures. What differs from `egt run`: plain AdamW (grad-norm clip 1) instead of
DeepSpeed, no checkpoints, one process. At the demo's earlier settings (4 layers, 309 steps of 16)
it gave the pipeline's numbers to the last digit; at the current ones it did not (docs/demo.md).

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_explore.py --layers 6 --batch 8 --steps 618 --seed 1

Prints one line per probe (``--probe-at`` adds probes before the last step, mid-schedule).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from egt.data.synthetic import generate_split
from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.probe import probe_records
from egt.engines.sft import SFTExample, example_order, lr_at, target_ids, token_nll_sum
from egt.models.tiny import build_tiny_model
from egt.report.effect import clean_accuracy, removed_share_by_lowest, separation
from egt.stages.data import ImageLoader
from egt.stages.probe import accuracy_by_entropy_bin
from egt.teachers.annotation import annotate
from egt.teachers.scripted import ScriptedTeacher


def pools(folder: Path, ambiguous: float) -> tuple[list[dict], list[dict]]:
    """The demo's SFT and RL pools (examples/egtrun-tiny.yaml's data section), image refs as URIs."""
    out = []
    for split, n in (("sft", 1200), ("rl", 240)):
        records = generate_split(folder, split, n, 0, ambiguous, 0.10, 112)
        out.append([{**r, "images": [f"file://{folder / ref}" for ref in r["images"]]} for r in records])
    return out[0], out[1]


def measure(probed: list[dict]) -> str:
    ambiguous = [r for r in probed if r["truth_kind"] == "ambiguous"]
    ties = sum("half each" in r["probe_output"] for r in ambiguous)
    fifths = [b for b in accuracy_by_entropy_bin(probed) if b["low"] is not None]
    removed = removed_share_by_lowest(probed, "answer_entropy", len(probed) // 2, "ambiguous")
    return (
        f"clean accuracy {clean_accuracy(probed):.3f}, 'half each' on {ties} of {len(ambiguous)} ambiguous, "
        f"AUROC answer {separation(probed, 'answer_entropy'):.3f} / mean token "
        f"{separation(probed, 'sentence_entropy'):.3f}, ambiguous removed {removed:.3f}, "
        + (
            f"lowest / highest fifth {fifths[0]['accuracy']:.2f} / {fifths[-1]['accuracy']:.2f}"
            if fifths
            else "no answers"
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=618)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="model seed (model.tiny.seed)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ambiguous", type=float, default=0.2)
    parser.add_argument("--probe-at", default="", help="comma-separated steps to probe before the last")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="egt-demo-explore-"))
    sft, rl = pools(folder / "data", args.ambiguous)
    judge = HFJudge.from_dir(build_tiny_model(folder / "model", args.seed, 64, args.layers), "float32", "cpu")
    images = ImageLoader(None)

    def to_input(r: dict) -> JudgeInput:
        return JudgeInput(images(r["images"]), r["query"], r["response_1"], r["response_2"])

    kept = [r for r in annotate(sft, ScriptedTeacher(0.1, 0, "steps"), images) if r["annotated"]]
    examples = [SFTExample(to_input(r), target_ids(judge, r["teacher_output"])) for r in kept]
    order = example_order(len(examples), args.steps * args.batch / len(examples), 0)
    steps = -(-len(order) // args.batch)
    probes = {int(s) for s in args.probe_at.split(",") if s} | {steps}
    print(
        f"{len(examples)} trajectories, {steps} steps of {args.batch}, {args.layers} layers, seed {args.seed}"
    )

    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW(judge.model.parameters(), lr=args.lr, weight_decay=0.0)
    started = time.perf_counter()
    judge.model.train()
    for step in range(steps):
        batch = [examples[i] for i in order[step * args.batch : (step + 1) * args.batch]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, args.lr, 0.05)
        loss = token_nll_sum(judge, batch) / sum(len(e.target_ids) for e in batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(judge.model.parameters(), 1.0)
        optimizer.step()
        if step + 1 in probes:
            judge.model.eval()
            with torch.no_grad():
                probed = probe_records(judge, rl, to_input, 24, 60, 4096)
            judge.model.train()
            print(f"step {step + 1} ({time.perf_counter() - started:.0f} s): {measure(probed)}", flush=True)


if __name__ == "__main__":
    main()
