"""Chunked vs naive full-vocabulary token entropy: wall time, peak memory, agreement.

The naive variant materializes all ``L × |V|`` logits and computes ``-(softmax · log_softmax).sum(-1)``;
the chunked one is :func:`egt.algorithms.entropy.chunked_token_entropy`. Both run in float32 on CPU.
Each (L, variant) runs in a fresh ``spawn`` subprocess: inputs are allocated first, then the peak RSS
(``ru_maxrss``) above that baseline is the variant's own peak memory. Wall time is the best of
``--repeats`` runs in that process. The hidden size defaults to 1024 rather than Qwen2.5-VL-7B's 3584:
the ``hidden @ W.T`` matmul is identical in both variants and at d = 3584 it alone would take several
minutes on two cores; d only changes the size of the inputs (part of the baseline), not the logits.

    python bench/entropy.py [--lengths 512 4096] [--hidden 1024] [--chunk-size 256] [--json PATH]
"""

import argparse
import math
import multiprocessing as mp
import os
import time

import torch
from machine import cpu_model, peak_rss_bytes, write_results  # bench/ is on sys.path when a script here runs

from egt.algorithms.entropy import chunked_token_entropy

MIB = 1024 * 1024


def naive_token_entropy(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """All ``L × |V|`` logits at once, then ``-(softmax · log_softmax).sum(-1)``."""
    logits = hidden @ weight.T
    return -(torch.softmax(logits, dim=-1) * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def _measure(
    variant: str,
    length: int,
    hidden_size: int,
    vocab: int,
    chunk_size: int,
    repeats: int,
    threads: int,
    seed: int,
) -> dict:
    """Runs in a fresh process: allocate inputs, then time ``variant`` and record its peak RSS."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(length, hidden_size, generator=gen)
    # Logit standard deviation about 2: entropies well inside (0, log |V|).
    weight = torch.randn(vocab, hidden_size, generator=gen).mul_(2 / math.sqrt(hidden_size))
    baseline = peak_rss_bytes()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            if variant == "naive":
                entropies = naive_token_entropy(hidden, weight)
            else:
                entropies = chunked_token_entropy(hidden, weight, chunk_size=chunk_size)
            times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "L": length,
        "chunk_size": chunk_size if variant == "chunked" else None,
        "best_s": min(times),
        "times_s": times,
        "peak_rss_mib": (peak_rss_bytes() - baseline) / MIB,
        "entropies": entropies.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--vocab", type=int, default=151_936, help="|V| (Qwen2.5-VL: 151,936)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size d")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    rows = []
    for length in args.lengths:
        results = {}
        for variant in ("chunked", "naive"):
            with context.Pool(1) as pool:
                results[variant] = pool.apply(
                    _measure,
                    (
                        variant,
                        length,
                        args.hidden,
                        args.vocab,
                        args.chunk_size,
                        args.repeats,
                        args.threads,
                        args.seed,
                    ),
                )
        diff = max(
            abs(a - b)
            for a, b in zip(results["chunked"]["entropies"], results["naive"]["entropies"], strict=True)
        )
        for variant in ("chunked", "naive"):
            result = results[variant]
            result["max_abs_diff"] = diff
            result["logits_mib"] = length * args.vocab * 4 / MIB
            del result["entropies"]
            rows.append(result)

    print(
        f"|V| = {args.vocab}, d = {args.hidden}, float32, {args.threads} torch threads, {cpu_model()}, "
        f"torch {torch.__version__}; best of {args.repeats}\n"
    )
    print(
        "| L | variant | chunk | best wall (s) | peak RSS above inputs (MiB) | full logits (MiB) "
        "| max abs diff (nats) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['L']} | {row['variant']} | {row['chunk_size'] or '—'} | {row['best_s']:.2f} "
            f"| {row['peak_rss_mib']:.0f} | {row['logits_mib']:.0f} | {row['max_abs_diff']:.1e} |"
        )
    if args.json:
        write_results(args.json, args, rows)


if __name__ == "__main__":
    main()
