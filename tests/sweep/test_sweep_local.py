"""``egt sweep FILE --local`` on the smallest pipeline: shared stages run once, each distinct arm once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from egt.cli import main
from egt.sweep.runner import collect_results, executions, run_sweep_local
from egt.sweep.spec import load_sweep
from tests.stages.conftest import SMALL_RUN

pytestmark = pytest.mark.slow


def write_sweep(tmp_path: Path) -> Path:
    base = copy.deepcopy(SMALL_RUN)
    base["spec"]["store"] = {"uri": str(tmp_path / "store")}
    base["spec"]["evaluate"]["models"] = ["rl"]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "apiVersion": "egt.dev/v1alpha1",
        "kind": "EGTSweep",
        "metadata": {"name": "sw"},
        "spec": {
            "base": "base.yaml",
            "arms": [
                {"name": "sft", "set": {"rl": {"enabled": False}, "evaluate": {"models": ["sft"]}}},
                {"name": "entropy"},
                {"name": "shuffled", "set": {"rl": {"order": "shuffled"}}},
                {"name": "random", "set": {"curate": {"strategy": "random"}}},
                {"name": "again", "set": {}},  # the same configuration as entropy: nothing runs
            ],
            "tables": [
                {"name": "t", "title": "Selection", "rows": {"Entropy": "entropy", "Random": "random"}},
                {"name": "scale", "kind": "curve", "title": "Scale", "points": {0: "sft", 50: "entropy"}},
            ],
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_arms_share_every_stage_of_equal_identity(tmp_path):
    path = write_sweep(tmp_path)
    _, runs = load_sweep(path)
    outcomes = run_sweep_local(runs, tmp_path / "work", progress=False, echo=lambda *_: None)

    # prepare → probe once for the sweep; curate once per selection (entropy, random); rl and
    # evaluate once per distinct arm (sft's rl only records that RL is off); "again" reuses entropy's.
    assert executions(outcomes) == {
        "prepare": 1,
        "annotate": 1,
        "sft": 1,
        "probe": 1,
        "curate": 2,
        "rl": 4,
        "evaluate": 4,
    }
    assert all(o.state == "skipped" for o in outcomes["again"])
    reused = {o.stage: o.reused_from for o in outcomes["random"]}
    assert reused["sft"] == "sw-sft/sft" and reused["curate"] is None
    results = collect_results(runs)
    assert set(results) == set(runs)
    assert list(results["sft"]) == ["sft"] and list(results["entropy"]) == ["rl"]

    # The report, from the CLI; a rerun of the whole sweep runs nothing.
    assert main(["sweep", "report", str(path), "--workdir", str(tmp_path / "work")]) == 0
    report = (tmp_path / "work" / "sw" / "sweep-report" / "sweep-report.md").read_text()
    assert "## Selection" in report and "| Entropy |" in report and "scale.png" in report
    again = run_sweep_local(runs, tmp_path / "work", progress=False, echo=lambda *_: None)
    assert executions(again) == {}
