"""What machine a benchmark ran on, for the tables in docs/benchmarks.md."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
