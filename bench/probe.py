"""Probe throughput, vLLM vs transformers, and the cost of exact entropies over generation alone.

On the tiny Qwen2.5-VL (``egt.models.tiny``), ``--pairs`` judge prompts with one distinct solid-colour
56×56 image each (distinct, so vLLM's prefix cache cannot reuse one pair's image for another), greedy,
exactly ``--max-new-tokens`` generated tokens per pair (the random model does not stop earlier).
Each engine runs in its own fresh process with the same thread count, measuring:

- generate: generation alone (HF: ``HFJudge.generate`` in batches of ``--batch-size``; vLLM: one
  ``LLM.generate`` call for all pairs, its scheduler batches them);
- entropy pass: the teacher-forced pass + chunked exact entropies on those generations alone;
- probe: the whole probe (``probe_records`` / ``probe_records_vllm``: generate, then entropies).

Entropy overhead = entropy pass / generate. Engine start-up (model load; vLLM's engine init and
multi-modal warm-up) is reported apart; one warm-up call on 2 pairs precedes the timings.
Needs vLLM (run it in .venv-vllm, scripts/vllm-env.sh); ``--engines hf`` runs without.

    .venv-vllm/bin/python bench/probe.py [--pairs 64] [--max-new-tokens 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/ is on sys.path when a script here runs


def make_pairs(count: int):
    from PIL import Image

    from egt.engines.hf import JudgeInput

    pairs = []
    for i in range(count):
        colour = ((37 * i) % 256, (91 * i + 40) % 256, (53 * i + 120) % 256)
        pairs.append(
            JudgeInput(
                [Image.new("RGB", (56, 56), colour)],
                f"Pair {i}: what is the colour of the picture?",
                f"It is the colour number {i}.",
                "It is red." if i % 2 else "It is blue, clearly, with no doubt at all.",
            )
        )
    return pairs


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def worker(args) -> dict:
    """One engine in this process: start-up, warm-up, then the timings, best of ``--repeats``."""
    import torch

    from egt.engines.probe import probe_records, token_entropies

    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.pairs)
    records = [{"id": str(i), "label": 1 + i % 2} for i in range(len(pairs))]
    by_id = {r["id"]: p for r, p in zip(records, pairs, strict=True)}
    tokens, chunk, batch = args.max_new_tokens, args.chunk_size, args.batch_size
    to_input = lambda r: by_id[r["id"]]  # noqa: E731

    def entropy_pass(judge, generations):
        for start in range(0, len(pairs), batch):
            token_entropies(judge, pairs[start : start + batch], generations[start : start + batch], chunk)

    if args.worker == "hf":
        from egt.engines.hf import HFJudge

        judge, startup = timed(lambda: HFJudge.from_dir(args.model, "float32", "cpu"))

        def generate():
            out = []
            for start in range(0, len(pairs), batch):
                out.extend(judge.generate(pairs[start : start + batch], tokens))
            return out

        probes = {"teacher_forced": lambda: probe_records(judge, records, to_input, batch, tokens, chunk)}
        warm = [lambda: judge.generate(pairs[:2], 4)]
    else:
        from egt.engines.vllm_probe import VLLMProbe, probe_records_vllm

        engine, startup = timed(
            lambda: VLLMProbe(
                args.model,
                device="cpu",
                enforce_eager=not args.compile,
                max_model_len=1024,
                max_images=1,
                enable_prefix_caching=True,
            )
        )
        _, scorer_load = timed(lambda: engine.scorer)
        startup += scorer_load
        judge = engine.scorer

        def generate():
            return engine.generate(pairs, tokens)

        def probe_with(mode):
            def run():
                engine.entropy = mode
                return probe_records_vllm(engine, records, to_input, batch, tokens, chunk)

            return run

        probes = {mode: probe_with(mode) for mode in ("teacher_forced", "engine")}
        warm = [lambda: engine.generate_with_entropies(pairs[:2], 4, batch, chunk, entropy="engine")]

    for call in warm:
        call()
    token_entropies(judge, pairs[:2], judge.generate(pairs[:2], 4), chunk)

    times: dict[str, list[float]] = {"generate": [], "entropy_pass": [], **{f"probe_{m}": [] for m in probes}}
    for _ in range(args.repeats):
        generations, seconds = timed(generate)
        times["generate"].append(seconds)
        times["entropy_pass"].append(timed(lambda g=generations: entropy_pass(judge, g))[1])
        for mode, probe in probes.items():
            times[f"probe_{mode}"].append(timed(probe)[1])
    result = {
        "engine": args.worker,
        "startup_s": startup,
        "generated_tokens": sum(len(g.token_ids) for g in generations),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "times_s": times,
        "best_s": {name: min(values) for name, values in times.items()},
    }
    if args.worker == "vllm":  # the two ways agree: max |H_engine - H_teacher_forced| over all tokens
        _, inside = engine.generate_with_entropies(pairs, tokens, batch, chunk, entropy="engine")
        _, forced = engine.generate_with_entropies(pairs, tokens, batch, chunk, entropy="teacher_forced")
        result["max_abs_diff_engine_vs_teacher_forced"] = max(
            float((a - b).abs().max()) for a, b in zip(inside, forced, strict=True)
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="HF generation and scoring batch")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per engine")
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--compile", action="store_true", help="vLLM without enforce_eager")
    parser.add_argument("--model", help="model folder (default: build the tiny model in a temp folder)")
    parser.add_argument("--hidden", type=int, default=64, help="text hidden size of the built model")
    parser.add_argument("--layers", type=int, default=2, help="text decoder layers of the built model")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory(prefix="egt-bench-probe-") as tmp:
        if args.model is None:
            from egt.models.tiny import build_tiny_model

            model = build_tiny_model(Path(tmp) / "tiny", 0, args.hidden, args.layers)
            args.model = str(model)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        rows = []
        for engine in args.engines:
            out = Path(tmp) / f"{engine}.json"
            command = [sys.executable, __file__, "--worker", engine, "--out", str(out), "--model", args.model]
            for name in ("pairs", "max_new_tokens", "batch_size", "chunk_size", "repeats", "threads"):
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            command += ["--compile"] if args.compile else []
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            rows.append(json.loads(out.read_text()))

    import torch

    print(
        f"tiny Qwen2.5-VL (text hidden {args.hidden}, {args.layers} layers), {args.pairs} pairs × "
        f"{args.max_new_tokens} greedy tokens, 1 image each, "
        f"float32, {args.threads} threads, {cpu_model()}, torch {torch.__version__}; best of {args.repeats}\n"
    )
    print(
        "| engine | entropies | start-up (s) | generate (s) | generate samples/s | generate tokens/s "
        "| probe (s) | probe samples/s | probe tokens/s | entropy overhead | entropy pass alone (s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        best, tokens = row["best_s"], row["generated_tokens"]
        for mode in ("teacher_forced", "engine"):
            if f"probe_{mode}" not in best:
                continue
            probe = best[f"probe_{mode}"]
            alone = f"{best['entropy_pass']:.2f}" if mode == "teacher_forced" else "—"
            print(
                f"| {row['engine']} | {mode.replace('_', '-')} | {row['startup_s']:.1f} "
                f"| {best['generate']:.2f} | {args.pairs / best['generate']:.1f} "
                f"| {tokens / best['generate']:.0f} | {probe:.2f} | {args.pairs / probe:.1f} "
                f"| {tokens / probe:.0f} | {100 * (probe / best['generate'] - 1):+.0f} % | {alone} |"
            )
    for row in rows:
        if "max_abs_diff_engine_vs_teacher_forced" in row:
            diff = row["max_abs_diff_engine_vs_teacher_forced"]
            print(f"\nvLLM entropies, engine vs teacher-forced: max abs diff {diff:.1e} nats")
    loads = ", ".join(f"{row['engine']} {row['load_average_1m']:.2f}" for row in rows)
    print(f"\n1-minute load average at the end of each engine's run: {loads}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu": cpu_model(), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
