"""The probe stage on engine 'vllm' gives the transformers engine's outputs (runs in .venv-vllm)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from egt.engines.vllm_engine import vllm_available
from egt.runner import run_local
from egt.storage.records import read_records
from tests.stages.conftest import make_run

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_available(), reason="vllm is not importable here: run it in .venv-vllm"),
]


def test_probe_stage_on_vllm_matches_transformers(small_run_doc, tmp_path: Path) -> None:
    store_uri = str(tmp_path / "store")
    run = make_run(small_run_doc, store_uri)
    store, _ = run_local(run, tmp_path / "work", stop="probe", progress=False, echo=lambda *_: None)
    on_hf = read_records(store, "small/probe/probed.jsonl")

    small_run_doc["spec"]["probe"].update({"engine": "vllm", "vllm": {"enforce_eager": True}})
    on_vllm_run = make_run(small_run_doc, store_uri)
    _, outcomes = run_local(
        on_vllm_run, tmp_path / "work", start="probe", stop="probe", progress=False, echo=lambda *_: None
    )
    assert [o.state for o in outcomes] == ["succeeded"]
    on_vllm = read_records(store, "small/probe/probed.jsonl")

    assert [r["id"] for r in on_vllm] == [r["id"] for r in on_hf]
    for hf, vl in zip(on_hf, on_vllm, strict=True):
        assert vl["probe_output"] == hf["probe_output"]
        for column in ("answer_entropy", "sentence_entropy"):
            if math.isinf(hf[column]):
                assert math.isinf(vl[column])
            else:
                assert vl[column] == pytest.approx(hf[column], abs=1e-4)
