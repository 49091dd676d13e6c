"""Where an RL step's time goes: rollout, referee, reference log-probs, learning, weight sync.

Runs the demo pipeline (examples/egtrun-tiny.yaml) up to curate in a scratch store, then the rl
stage for a few steps with 1 and with 2 rollout workers, and prints the mean seconds per phase,
side by side. The phases are timed inside the stage (egt/stages/rl.py, rl_step), so these are the
same numbers a cluster run reports as egt_rl_*_seconds.

    .venv/bin/python bench/rl_step.py --steps 6 [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import yaml

from egt.runner import run_local
from egt.spec import parse_run

PHASES = ("rollout", "referee", "reference", "learning", "sync")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="RL steps per configuration (first one dropped)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="rollout worker counts to compare"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    doc = yaml.safe_load(Path("examples/egtrun-tiny.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        doc["spec"]["store"] = {"uri": f"{scratch}/store"}
        base = parse_run(doc, "bench")
        run_local(base, Path(scratch) / "work", stop="curate", progress=False, echo=lambda *_: None)
        for workers in args.workers:
            variant = copy.deepcopy(doc)
            variant["spec"]["rl"].update({"rollout_workers": workers, "max_steps": args.steps})
            run = parse_run(variant, "bench")
            store, _ = run_local(
                run,
                Path(scratch) / "work",
                start="rl",
                stop="rl",
                force=("rl",),
                progress=False,
                echo=lambda *_: None,
            )
            history = json.loads(store.read_text(f"{run.name}/rl/history.json"))[1:]  # drop warm-up step
            row = {"rollout_workers": workers, "steps": len(history)}
            for phase in PHASES:
                row[f"{phase}_s"] = statistics.mean(h[f"{phase}_seconds"] for h in history)
            row["step_s"] = sum(row[f"{p}_s"] for p in PHASES)
            row["rollout_tokens_per_s"] = statistics.mean(h["rollout_tokens_per_second"] for h in history)
            rows.append(row)

    prompts = doc["spec"]["rl"]["global_batch_size"]
    print(
        f"RL step split, tiny model, {prompts} prompts per step, "
        f"mean of {args.steps - 1} steps after the first"
    )
    print(
        "| rollout workers | " + " | ".join(f"{p} (s)" for p in PHASES) + " | step (s) | rollout tokens/s |"
    )
    print("|---:|" + "---:|" * (len(PHASES) + 2))
    for row in rows:
        cells = [f"{row[f'{p}_s']:.2f}" for p in PHASES]
        print(
            f"| {row['rollout_workers']} | " + " | ".join(cells) + f" | {row['step_s']:.2f} | "
            f"{row['rollout_tokens_per_s']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
