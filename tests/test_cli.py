"""The ``egt`` command line: exit codes, messages on stderr, and the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egt.cli import main
from egt.spec import EGTRun, dump_run, load_run

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "egtrun-tiny.yaml"


def cli(*argv: str) -> int:
    """main(argv) as the shell sees it: argparse errors (SystemExit) become exit codes too."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


@pytest.fixture
def tiny_run_file(tmp_path: Path) -> Path:
    """The tiny example with its store moved under tmp_path, so nothing is written to the repo."""
    document = yaml.safe_load(TINY.read_text())
    document["spec"]["store"] = {"uri": str(tmp_path / "store")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    document = yaml.safe_load(TINY.read_text())
    document["spec"]["curate"]["strategy"] = "lowest"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_validate_example(capsys):
    assert cli("validate", TINY) == 0
    out, err = capsys.readouterr()
    assert "tiny-demo" in out
    assert "valid" in out
    assert err == ""


def test_validate_bad_file_names_the_field_on_stderr(capsys, bad_file):
    assert cli("validate", bad_file) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(bad_file) in err
    assert "spec.curate.strategy" in err
    for allowed in ("entropy", "random", "accuracy", "bucket"):
        assert allowed in err
    assert "Traceback" not in err


def test_validate_missing_file(capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    assert cli("validate", missing) == 2
    _, err = capsys.readouterr()
    assert str(missing) in err
    assert "no such file" in err


def test_validate_invalid_yaml(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("metadata: {name: [\n")
    assert cli("validate", broken) == 2
    _, err = capsys.readouterr()
    assert str(broken) in err
    assert "YAML" in err


def test_validate_resolved_prints_every_default(capsys):
    assert cli("validate", "--resolved", TINY) == 0
    out, err = capsys.readouterr()
    assert err == ""
    resolved = yaml.safe_load(out)
    assert out == dump_run(load_run(TINY))
    spec = resolved["spec"]
    # Set in the file: kept.
    assert spec["sft"]["epochs"] == 4.5
    # Not in the file: the paper's defaults, spelled out.
    assert spec["rl"]["alpha"] == 0.5
    assert spec["rl"]["clip_epsilon"] == 0.2
    assert spec["rl"]["advantage_sigma"] == 3.0
    assert spec["rl"]["kl_coef"] == 0.0
    assert spec["rl"]["referee"]["kind"] == "rules"
    assert spec["cluster"]["image"]
    assert spec["metrics"] == {"pushgateway": None}
    # ... and the output is itself a valid run file.
    assert EGTRun.model_validate(resolved) == load_run(TINY)


def test_schema_prints_json(capsys):
    assert cli("schema") == 0
    out, _ = capsys.readouterr()
    schema = json.loads(out)
    assert schema == EGTRun.model_json_schema()
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])


def test_run_without_local_explains_itself(capsys, tiny_run_file):
    assert cli("run", tiny_run_file) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--local" in err
    assert "kubectl" in err
    assert not (tiny_run_file.parent / "store").exists()


def test_run_local_with_a_bad_file_exits_2(capsys, bad_file, tmp_path):
    assert cli("run", "--local", bad_file, "--workdir", tmp_path / "work") == 2
    _, err = capsys.readouterr()
    assert "spec.curate.strategy" in err
    assert not (tmp_path / "work").exists()


def test_run_rejects_unknown_stage_names(capsys, tiny_run_file):
    assert cli("run", "--local", tiny_run_file, "--until", "train") == 2
    _, err = capsys.readouterr()
    assert "invalid choice" in err
    assert "'train'" in err


def test_run_from_after_until_is_reported_clearly(capsys, tiny_run_file, tmp_path):
    """--from rl --until sft selects nothing: a usage error (exit 2, one line), not a traceback."""
    workdir = tmp_path / "work"
    try:
        code = cli(
            "run", "--local", tiny_run_file, "--from", "rl", "--until", "sft", "--workdir", workdir, "-q"
        )
    except ValueError as error:  # what the CLI did when this test was written
        pytest.fail(
            f"egt run --from rl --until sft raised {type(error).__name__}: {error} (a traceback for users)"
        )
    out, err = capsys.readouterr()
    assert code == 2
    assert "rl" in err and "sft" in err
    assert "▶" not in out  # no stage started
    assert not workdir.exists()


def test_no_command_is_a_usage_error(capsys):
    assert cli() == 2
    _, err = capsys.readouterr()
    assert "usage: egt" in err


def test_console_script_help():
    script = Path(sys.executable).parent / "egt"
    assert script.exists(), f"console script missing: {script} (pip install -e .)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: egt")
    for command in ("run", "validate", "schema", "tiny-model", "report"):
        assert command in result.stdout


def test_sweep_says_what_it_needs(capsys, tmp_path):
    example = str(Path(__file__).resolve().parents[1] / "examples" / "ablations-tiny.yaml")
    assert main(["sweep", example]) == 2
    assert "give --local (run the arms here) or --submit" in capsys.readouterr().err
    assert main(["sweep", "report", example, "extra"]) == 2
    assert "usage: egt sweep FILE" in capsys.readouterr().err
    bad = tmp_path / "sweep.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "egt.dev/v1alpha1",
                "kind": "EGTSweep",
                "metadata": {"name": "s"},
                "spec": {"base": "missing.yaml", "arms": [{"name": "a"}]},
            }
        )
    )
    assert main(["sweep", str(bad), "--local"]) == 2
    assert "spec.base: " in (err := capsys.readouterr().err) and "missing.yaml: no such file" in err
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "egt.dev/v1alpha1",
                "kind": "EGTSweep",
                "metadata": {"name": "s"},
                "spec": {
                    "base": {},
                    "arms": [{"name": "a"}, {"name": "a"}],
                    "tables": [{"name": "t", "title": "T", "rows": {"x": "b"}}],
                },
            }
        )
    )
    assert main(["sweep", "report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "arm names must be unique; repeated: a" in err


def test_validate_warns_of_an_api_key_unset_here_and_a_keyless_endpoint_is_expressible(
    capsys, tmp_path, monkeypatch
):
    """A local OpenAI-compatible teacher: with api_key_env naming an unset variable, validate passes
    and warns (the run would stop at annotate); with api_key_env: null nothing is asked for."""
    document = yaml.safe_load(Path(TINY).read_text())
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sft", "rl"):
        (data / f"{name}.jsonl").write_text("")
    document["spec"]["data"] = {
        "sft": {"uri": str(data / "sft.jsonl")},
        "rl": {"uri": str(data / "rl.jsonl")},
    }
    document["spec"]["annotate"]["teacher"] = {
        "kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "local",
        "api_key_env": "EGT_UNSET_KEY",
    }  # fmt: skip
    monkeypatch.delenv("EGT_UNSET_KEY", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    assert cli("validate", path) == 0
    err = capsys.readouterr().err
    assert "warning: spec.annotate.teacher.api_key_env: EGT_UNSET_KEY is not set here" in err
    assert "api_key_env: null" in err

    document["spec"]["annotate"]["teacher"]["api_key_env"] = None
    path.write_text(yaml.safe_dump(document))
    assert cli("validate", path) == 0
    assert capsys.readouterr().err == ""


def test_relative_inputs_resolve_against_the_run_file_and_validate_finds_missing_ones(
    capsys, tmp_path, monkeypatch
):
    """A run file in a project folder, run from elsewhere: data/sft.jsonl means the file beside the
    run file, not one under the current directory; validate says which inputs are not there."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "sft.jsonl").write_text("")
    document = yaml.safe_load(Path(TINY).read_text())
    document["spec"]["data"] = {
        "sft": {"uri": "data/sft.jsonl"},
        "rl": {"uri": "data/rl.jsonl"},
        "eval": {"held": {"uri": "file:///nowhere/eval.jsonl"}},
    }
    document["spec"]["annotate"]["teacher"] = {
        "kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "local", "api_key_env": None,
    }  # fmt: skip
    (project / "run.yaml").write_text(yaml.safe_dump(document))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    run = load_run(Path("../project/run.yaml"))
    assert run.spec.data.sft.uri == str(project / "data" / "sft.jsonl")
    assert run.spec.data.eval["held"].uri == "file:///nowhere/eval.jsonl"  # URIs are as given
    assert cli("validate", "../project/run.yaml") == 2
    err = capsys.readouterr().err
    assert f"spec.data.rl.uri: {project / 'data' / 'rl.jsonl'} does not exist" in err
    assert "spec.data.eval.held.uri: file:///nowhere/eval.jsonl does not exist" in err
    assert "spec.data.sft.uri" not in err
