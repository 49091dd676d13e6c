"""One SFT micro-batch (forward + backward) on the tiny judge: naive logits vs the chunked loss.

Both variants score the same assistant positions only; they differ in how the output layer's loss
is formed. ``naive`` is what egt did before: ``lm_head`` on all labelled positions at once, then
``F.cross_entropy`` (``N × |V|`` logits, their log-softmax and their gradient all live at once).
``chunked`` is :func:`egt.algorithms.losses.chunked_linear_nll_sum`, as ``egt.engines.sft`` runs it.
Each (trajectory length, variant) runs in a fresh ``spawn`` subprocess: the model and batch are built
first, then the peak RSS above that baseline is the variant's own (warm-up step included). Wall time is
the best of ``--repeats`` steps after one warm-up step.

Trajectory lengths: ``steps`` is the demo's scripted teacher (about 33 tokens), the other lengths
repeat a sentence to that many tokens (a real teacher writes hundreds).

    python bench/sft_step.py [--lengths 0 256] [--batch 16] [--json PATH]
"""

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from machine import cpu_model, peak_rss_bytes, write_results  # bench/ is on sys.path when a script here runs

MIB = 1024 * 1024
STEPS_TRAJECTORY = (
    '<think>The image is mostly "red". Response 1 says "blue": wrong. Response 2 says "red": right.</think>'
    "<answer>2</answer>"
)


def _examples(judge, batch: int, length: int):
    from PIL import Image

    from egt.data.synthetic import COLOURS
    from egt.engines.hf import JudgeInput
    from egt.engines.sft import SFTExample, target_ids

    colours = list(COLOURS.values())
    trajectory = STEPS_TRAJECTORY
    if length:
        filler = " Response 1 names a colour and the image shows another one."
        ids = target_ids(judge, "<think>" + filler * (length // 10) + "</think><answer>1</answer>")
        trajectory = judge.tokenizer.decode(ids[: length - 8]) + "</think><answer>1</answer>"
    out = []
    for i in range(batch):
        image = Image.new("RGB", (112, 112), colours[i % len(colours)])
        item = JudgeInput(
            [image], "What colour is this image?", "The main colour is red.", "The main colour is blue."
        )
        out.append(SFTExample(item, target_ids(judge, trajectory)))
    return out


def _measure(variant: str, length: int, batch: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    from egt.algorithms.losses import chunked_linear_nll_sum
    from egt.engines.hf import HFJudge
    from egt.engines.sft import _hidden_and_targets
    from egt.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        judge = HFJudge.from_dir(build_tiny_model(tmp), device="cpu")
    examples = _examples(judge, batch, length)

    def step() -> float:
        judge.model.zero_grad(set_to_none=True)
        hidden, targets = _hidden_and_targets(judge, examples)
        if variant == "naive":
            loss = F.cross_entropy(judge.model.lm_head(hidden).float(), targets, reduction="sum")
        else:
            loss = chunked_linear_nll_sum(hidden, judge.lm_head_weight, targets, 256)
        loss.backward()
        return float(loss)

    baseline = peak_rss_bytes()  # model and batch built: what is left is the steps' own
    loss = step()  # warm-up (allocator, lazy init), not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "length": length or "steps",
        "tokens": sum(len(e.target_ids) for e in examples),
        "best_s": min(times),
        "times_s": times,
        "peak_rss_mib": (peak_rss_bytes() - baseline) / MIB,
        "loss": loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[0, 256], help="0: the demo's steps teacher"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    import multiprocessing as mp

    context = mp.get_context("spawn")
    rows = []
    for length in args.lengths:
        for variant in ("chunked", "naive"):
            with context.Pool(1) as pool:
                rows.append(pool.apply(_measure, (variant, length, args.batch, args.repeats, args.threads)))
    print(
        f"tiny Qwen2.5-VL (64 wide, 4 layers, |V| = 151,936), micro-batch {args.batch}, float32, "
        f"{args.threads} torch threads, {cpu_model()}, torch {torch.__version__}; best of {args.repeats}\n"
    )
    print("| trajectory | variant | labelled tokens | best wall (s) | peak RSS above baseline (MiB) | loss |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['length']} | {row['variant']} | {row['tokens']} | {row['best_s']:.2f} "
            f"| {row['peak_rss_mib']:.0f} | {row['loss']:.2f} |"
        )
    if args.json:
        write_results(args.json, args, rows)


if __name__ == "__main__":
    main()
