"""The stage contract: manifests, digests, and when a stage may be skipped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import BaseModel

from egt.storage.manifest import (
    Manifest,
    config_hash,
    digest_bytes,
    is_up_to_date,
    manifest_digest,
    manifest_key,
    read_manifest,
    register,
    reuse,
    write_manifest,
)
from egt.storage.store import ArtifactStore, FileStore


class Teacher(BaseModel):
    name: str
    temperature: float
    path: Path


def manifest(stage: str, config: object, inputs: dict[str, str] | None = None, n: int = 3) -> Manifest:
    return Manifest(
        stage=stage,
        config_hash=config_hash(config),
        inputs=inputs or {},
        outputs={"pool": f"run/{stage}/pool.jsonl"},
        counts={"records": n},
        metrics={"entropy_mean": 1.5, "epochs": 2, "note": "ok", "hist": [1, 2], "by_source": {"a": 1.0}},
        started_at="2026-11-22T10:00:00+00:00",
        finished_at="2026-11-22T10:05:00+00:00",
    )


def test_digest_bytes() -> None:
    assert digest_bytes(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_config_hash_is_canonical() -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    expected = hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()
    assert config_hash({"b": [1, 2], "a": 1}) == f"sha256:{expected}"


def test_config_hash_of_pydantic_models() -> None:
    teacher = Teacher(name="qwen", temperature=0.7, path=Path("/m"))
    assert config_hash(teacher) == config_hash({"name": "qwen", "path": "/m", "temperature": 0.7})
    assert config_hash({"teacher": teacher}) == config_hash({"teacher": teacher.model_dump(mode="json")})


def test_manifest_key() -> None:
    assert manifest_key("run-1", "sft") == "run-1/sft/manifest.json"
    with pytest.raises(ValueError, match="stage=''"):
        manifest_key("run-1", "")


def test_round_trip_and_missing(artifact_store: ArtifactStore) -> None:
    assert read_manifest(artifact_store, "run", "annotate") is None
    written = manifest("annotate", {"k": 1})
    write_manifest(artifact_store, "run", "annotate", written)
    assert read_manifest(artifact_store, "run", "annotate") == written
    assert written.egt_version  # filled in from the installed package
    digest = manifest_digest(artifact_store, "run", "annotate")
    assert digest == digest_bytes(artifact_store.read_bytes("run/annotate/manifest.json"))


def test_write_checks_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'sft', not 'probe'"):
        write_manifest(FileStore(tmp_path), "run", "probe", manifest("sft", {}))


def test_invalid_manifest_names_its_uri(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write_json("run/sft/manifest.json", {"stage": "sft"})
    with pytest.raises(ValueError, match=r"invalid manifest file://.*/run/sft/manifest\.json"):
        read_manifest(store, "run", "sft")


def test_missing_manifest_digest_names_its_uri(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"run/sft/manifest\.json"):
        manifest_digest(FileStore(tmp_path), "run", "sft")


def test_skip_logic_follows_config_and_inputs(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    sft_config = {"lr": 1e-5, "epochs": 2}

    assert not is_up_to_date(store, "run", "annotate", config_hash({"teacher": "a"}), {})
    write_manifest(store, "run", "annotate", manifest("annotate", {"teacher": "a"}))
    assert is_up_to_date(store, "run", "annotate", config_hash({"teacher": "a"}), {})

    inputs = {"annotate": manifest_digest(store, "run", "annotate")}
    write_manifest(store, "run", "sft", manifest("sft", sft_config, inputs))
    assert is_up_to_date(store, "run", "sft", config_hash(sft_config), inputs)

    # A config change: not up to date.
    assert not is_up_to_date(store, "run", "sft", config_hash({**sft_config, "lr": 2e-5}), inputs)
    # An extra or missing input: not up to date.
    assert not is_up_to_date(store, "run", "sft", config_hash(sft_config), {**inputs, "extra": "sha256:0"})
    assert not is_up_to_date(store, "run", "sft", config_hash(sft_config), {})

    # The upstream stage re-ran and produced something different: its manifest digest changed, so the
    # downstream stage's recorded input no longer matches.
    write_manifest(store, "run", "annotate", manifest("annotate", {"teacher": "a"}, n=4))
    new_inputs = {"annotate": manifest_digest(store, "run", "annotate")}
    assert new_inputs != inputs
    assert not is_up_to_date(store, "run", "sft", config_hash(sft_config), new_inputs)


def test_non_finite_metrics_are_written_as_null(tmp_path) -> None:
    from egt.storage.store import FileStore

    store = FileStore(tmp_path)
    manifest = Manifest(
        stage="curate",
        config_hash="sha256:x",
        metrics={"threshold": float("inf"), "bins": [{"low": float("nan")}], "none": None, "ok": 1.5},
        started_at="t0",
        finished_at="t1",
    )
    write_manifest(store, "run", "curate", manifest)
    back = read_manifest(store, "run", "curate")
    assert back.metrics == {"threshold": None, "bins": [{"low": None}], "none": None, "ok": 1.5}


def finished(store: ArtifactStore, run: str, stage: str, config: object, inputs: dict[str, str]) -> Manifest:
    """A stage of ``run`` that computed its outputs, as execute_stage leaves it."""
    done = manifest(stage, config, inputs).model_copy(
        update={"prefix": f"{run}/{stage}", "outputs": {"model": "model"}}
    )
    write_manifest(store, run, stage, done)
    register(store, done)
    return done


def test_another_run_reuses_a_stage_of_the_same_identity_by_reference(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    config, inputs = {"lr": 1e-5}, {"annotate": "sha256:a"}
    chash = config_hash(config)
    assert reuse(store, "b", "sft", chash, inputs) is None  # nobody has computed it yet
    finished(store, "a", "sft", config, inputs)

    assert reuse(store, "b", "sft", config_hash({"lr": 2e-5}), inputs) is None  # other config
    assert reuse(store, "b", "sft", chash, {"annotate": "sha256:other"}) is None  # other inputs
    reused = reuse(store, "b", "sft", chash, inputs)
    assert reused is not None and reused.prefix == "a/sft"
    # The copy is byte for byte the original, so whatever depends on it has the same identity in both runs.
    assert manifest_digest(store, "b", "sft") == manifest_digest(store, "a", "sft")
    assert read_manifest(store, "b", "sft").output_key("b", "model") == "a/sft/model"
    assert is_up_to_date(store, "b", "sft", chash, inputs)
    assert reuse(store, "a", "sft", chash, inputs) is None  # a run never "reuses" its own stage

    # Run a reruns its stage with other settings: the outputs b pointed at are replaced, so b's stage
    # is no longer current (it will compute, or reuse another run's, next time) and nothing reuses a's.
    finished(store, "a", "sft", {"lr": 3e-5}, inputs)
    assert not is_up_to_date(store, "b", "sft", chash, inputs)
    assert reuse(store, "c", "sft", chash, inputs) is None


def test_output_keys_of_manifests_written_before_sharing_are_the_runs_own(tmp_path: Path) -> None:
    old = manifest("sft", {"lr": 1}).model_copy(update={"outputs": {"model": "model"}})
    assert old.prefix is None and old.output_key("r", "model") == "r/sft/model"
    with pytest.raises(KeyError, match="stage sft has no output 'probed'"):
        old.output_key("r", "probed")
