"""Bring your own data: a dataset of one's own in the native format, as the README describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from egt.storage.manifest import read_manifest
from egt.storage.store import open_store
from tests.stages.test_faults import native_dataset, own_data_run, quiet

pytestmark = pytest.mark.slow


def test_truth_columns_of_ones_own_data_are_counted_at_prepare(small_run_doc, tmp_path: Path) -> None:
    """External data with truth_kind columns: prepare counts them per pool, as for synthetic data, so
    the annotation table can set kept shares beside the pool's kinds (it showed '—')."""
    data = native_dataset(tmp_path / "data", {"sft": 12, "rl": 6, "eval": 4})
    quiet(own_data_run(small_run_doc, tmp_path, data), tmp_path / "work", stop="prepare")
    metrics = read_manifest(open_store(str(tmp_path / "store")), "small", "prepare").metrics
    assert sum(metrics["sft_truth_kinds"].values()) == 12 and "clean" in metrics["sft_truth_kinds"]
    assert sum(metrics["held_truth_kinds"].values()) == 4
