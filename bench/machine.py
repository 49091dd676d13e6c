"""What machine a benchmark ran on, for the tables in docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
import resource

import torch


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports it in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_results(path: str, args, rows: list[dict]) -> None:
    """A benchmark's arguments, machine and rows as JSON, next to the Markdown table it printed."""
    with open(path, "w") as f:
        json.dump(
            {"args": vars(args), "cpu": cpu_model(), "torch": torch.__version__, "results": rows}, f, indent=2
        )
