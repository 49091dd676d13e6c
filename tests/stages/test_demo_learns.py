"""The demo's model learns the task: the demo's own SFT, probed on a smaller pool.

A smoke test of the pipeline cannot fail on a model that learns nothing; this one can. It runs
prepare → annotate → sft → probe exactly as examples/egtrun-tiny.yaml configures them (618 SFT
steps, about 6 minutes on 2 cores), on a probe pool of 96 pairs, and reads what the SFT model wrote.
Thresholds, with what was measured (docs/demo.md):

- the steps that only copy (each response's colour, from the prompt) are right on ≥ 90% of pairs
  (chance 1/6 each; every demo run so far: 100%);
- the image's colour, stated first, is right on ≥ 75% of clean pairs (chance 1/6; demo runs: 99–100%);
- the judgement is right on ≥ 75% of clean pairs (chance 50%; the run of record 91.7%, the
  exploration loop 80–98% over three model seeds; before the demo's 6 layers and batches of 8 it was
  51–69%, so this fails on the earlier settings);
- the model states the tie ("half each") on ≥ 60% of ambiguous pairs and the answer-token entropy
  separates ambiguous from clean pairs with AUROC ≥ 0.75, the issue's target (the run of record:
  45 of 48, AUROC 0.957; earlier settings: 10 of 48, 0.588).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from egt.report.effect import clean_accuracy, separation
from egt.runner import run_local
from egt.spec import parse_run
from egt.storage.records import read_records
from egt.teachers.scripted import named_colour

pytestmark = pytest.mark.slow

DEMO = Path(__file__).parents[2] / "examples" / "egtrun-tiny.yaml"
_CLAIM = re.compile(r'Response ([12]) says "(\w+)":')
_SEEN = re.compile(r'The image is mostly "(\w+)"\.')


def test_the_demo_model_learns_the_task(tmp_path: Path) -> None:
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["store"] = {"uri": str(tmp_path / "runs")}
    doc["spec"]["data"]["synthetic"] |= {"rl_size": 96, "eval_size": 6}
    run = parse_run(doc, "demo")
    store, outcomes = run_local(run, tmp_path / "work", stop="probe", progress=False, echo=lambda *_: None)
    assert [o.state for o in outcomes] == ["succeeded"] * 4

    probed = read_records(store, "tiny-demo/probe/probed.jsonl")
    assert sum(r["probe_well_formed"] for r in probed) >= 0.95 * len(probed)
    copied = [
        dict(_CLAIM.findall(r["probe_output"]))
        == {"1": named_colour(r["response_1"]), "2": named_colour(r["response_2"])}
        for r in probed
    ]
    assert sum(copied) >= 0.9 * len(probed), f"{sum(copied)} of {len(probed)} copied both colours"

    clean = [r for r in probed if r["truth_kind"] == "clean"]
    seen = [(_SEEN.search(r["probe_output"]) or [None, None])[1] for r in clean]
    right = [named_colour(r[f"response_{r['truth_label']}"]) for r in clean]
    hits = sum(s == c for s, c in zip(seen, right, strict=True))
    assert hits >= 0.75 * len(clean), f"the image colour was right on {hits} of {len(clean)} clean pairs"

    judged = clean_accuracy(probed)
    assert judged >= 0.75, f"the judgement was right on {judged:.1%} of clean pairs"

    ambiguous = [r for r in probed if r["truth_kind"] == "ambiguous"]
    ties = sum("The image is half each." in r["probe_output"] for r in ambiguous)
    assert ties >= 0.6 * len(ambiguous), f"the tie was stated on {ties} of {len(ambiguous)} ambiguous pairs"
    auroc = separation(probed, "answer_entropy")
    assert auroc >= 0.75, f"answer-entropy AUROC {auroc:.3f}"
