"""The CI retraining example (examples/ci/retrain.yaml): a GitHub Actions workflow around `egt submit --wait`.

No CI service and no cluster here: the workflow is parsed and its submit step's command line is run by
bash, with GITHUB_SHA set, against egt's real command line: on an invalid run file it must exit 2
(naming the field), which shows that every option was accepted and the run name is what CI will use.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from egt.cli import parser
from egt.spec import parse_run
from egt_operator.submit import EXIT_INVALID

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "ci" / "retrain.yaml"
SHA = "0123abcd4567ef890123abcd4567ef890123abcd"


def workflow() -> dict:
    document = yaml.safe_load(WORKFLOW.read_text())
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as true
    return document


def submit_step() -> dict:
    [job] = workflow()["jobs"].values()
    [step] = [step for step in job["steps"] if "egt submit" in step.get("run", "")]
    return step


def expanded(command: str) -> list[str]:
    """The command's words as bash gives them to egt in the job (GITHUB_SHA set, as on a runner)."""
    printed = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {command}"],
        env={"GITHUB_SHA": SHA, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return printed.stdout.splitlines()


def test_workflow_triggers_on_the_run_and_the_data():
    flow = workflow()
    push = flow["on"]["push"]
    assert push["branches"] == ["main"]
    assert {"examples/egtrun.yaml", "data/**"} <= set(push["paths"])
    assert flow["permissions"] == {"contents": "read"}


def test_job_outlasts_the_submit_timeout_and_fails_with_it():
    [job] = workflow()["jobs"].values()
    step = submit_step()
    args = parser().parse_args(expanded(step["run"])[1:])
    assert args.command == "submit" and args.wait is True
    assert job["timeout-minutes"] * 60 > args.timeout  # egt exits 3 before the runner cancels the job
    assert "continue-on-error" not in step and "continue-on-error" not in job
    assert "shell" not in step  # the default bash -e: a non-zero exit fails the step and the job
    kubeconfig = next(s for s in job["steps"] if "KUBECONFIG" in s.get("run", ""))
    assert kubeconfig["env"] == {"KUBECONFIG_DATA": "${{ secrets.EGT_KUBECONFIG }}"}
    assert "umask 077" in kubeconfig["run"] and "$GITHUB_ENV" in kubeconfig["run"]


def test_submit_command_names_the_run_after_the_commit():
    words = expanded(submit_step()["run"])
    assert words[:3] == ["egt", "submit", "examples/egtrun.yaml"]
    args = parser().parse_args(words[1:])
    assert args.name == f"egt-{SHA[:8]}"
    document = yaml.safe_load((ROOT / args.file).read_text())
    document["metadata"]["name"] = args.name
    assert parse_run(document, "ci").name == args.name  # a valid run name


def test_submit_command_exits_2_on_an_invalid_run(tmp_path):
    """The step's command line, verbatim, run by bash in a checkout whose run file is invalid."""
    run_file = tmp_path / "examples" / "egtrun.yaml"
    run_file.parent.mkdir()
    document = yaml.safe_load((ROOT / "examples" / "egtrun.yaml").read_text())
    document["spec"]["curate"]["keep"] = -1
    run_file.write_text(yaml.safe_dump(document))
    egt = shutil.which("egt", path=str(Path(sys.executable).parent))
    assert egt, "the egt console script is missing (pip install -e .)"
    command = submit_step()["run"]
    assert re.match(r"^egt submit ", command)
    done = subprocess.run(
        ["bash", "-c", f"set -e; {command}"],
        cwd=tmp_path,
        env={"GITHUB_SHA": SHA, "PATH": f"{Path(egt).parent}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_INVALID, done.stderr
    assert "usage:" not in done.stderr  # not an argparse error: the options were accepted
    assert "keep" in done.stderr
    assert shlex.split(command)[2] == "examples/egtrun.yaml"
