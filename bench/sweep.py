"""A sweep's shared stages against a naive per-arm rerun, side by side in one invocation.

Two arms of a sweep file (by default the demo's ablation sweep, arms ``entropy`` and ``random``),
run twice:

- ``shared``: both arms in one store, as ``egt sweep --local`` runs them: the second arm reuses
  prepare → probe from the first by reference;
- ``naive``: each arm alone in a store of its own, as hand-written run files would be: every stage
  computed for every arm.

Prints per mode the wall time, each arm's time and the stage executions, and writes them as JSON.

    python bench/sweep.py [--sweep examples/ablations-tiny.yaml] [--arms entropy random] [--json PATH]
"""

import argparse
import tempfile
import time
from pathlib import Path

from machine import cpu_model, write_results  # bench/ is on sys.path when a script here runs

from egt.spec import EGTRun, parse_run
from egt.sweep.runner import executions, run_sweep_local
from egt.sweep.spec import load_sweep, merge


def in_store(run: EGTRun, store: Path) -> EGTRun:
    """The same run writing to another store."""
    document = run.model_dump(mode="json")
    return parse_run(merge(document, {"spec": {"store": {"uri": str(store)}}}))


def timed(runs: dict[str, EGTRun], workdir: Path) -> tuple[float, dict[str, float], dict[str, int]]:
    """Run the arms one after another (sharing what their store allows): total and per-arm seconds."""
    per_arm, counts = {}, {}
    began = time.monotonic()
    for arm, run in runs.items():
        start = time.monotonic()
        outcomes = run_sweep_local({arm: run}, workdir / arm, progress=False, echo=lambda _: None)
        per_arm[arm] = time.monotonic() - start
        for stage, n in executions(outcomes).items():
            counts[stage] = counts.get(stage, 0) + n
    return time.monotonic() - began, per_arm, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", default="examples/ablations-tiny.yaml")
    parser.add_argument("--arms", nargs=2, default=["entropy", "random"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    _, runs = load_sweep(args.sweep)
    arms = {arm: runs[arm] for arm in args.arms}
    rows = []
    with tempfile.TemporaryDirectory(prefix="egt-bench-sweep-") as tmp:
        tmp = Path(tmp)
        modes = {
            "shared": {arm: in_store(run, tmp / "shared" / "store") for arm, run in arms.items()},
            "naive": {arm: in_store(run, tmp / "naive" / arm / "store") for arm, run in arms.items()},
        }
        for mode, mode_runs in modes.items():
            total, per_arm, counts = timed(mode_runs, tmp / mode / "work")
            rows.append({"mode": mode, "total_s": total, "per_arm_s": per_arm, "executions": counts})
            print(f"{mode}: {total:.0f} s", flush=True)
    print(f"\nCPU: {cpu_model()}\n")
    print("| mode | total | " + " | ".join(args.arms) + " | stage executions |")
    print("|---|---|" + "---|" * len(args.arms) + "---|")
    for row in rows:
        counts = ", ".join(f"{stage} {n}" for stage, n in row["executions"].items())
        times = " | ".join(f"{row['per_arm_s'][arm]:.0f} s" for arm in args.arms)
        print(f"| {row['mode']} | {row['total_s']:.0f} s | {times} | {counts} |")
    if args.json:
        write_results(args.json, args, rows)


if __name__ == "__main__":
    main()
