"""A saved scalar reward model, served by vLLM: the same scores as transformers (egt.engines.vllm_scalar).

Runs where vLLM is importable (the .venv-vllm of scripts/vllm-env.sh; make test-vllm):

    .venv-vllm/bin/pytest -q -m vllm tests/engines/test_vllm_scalar.py
"""

from __future__ import annotations

import pytest
import torch

from egt.engines.scalar import Response, ScalarRewardModel
from egt.engines.vllm_engine import vllm_available
from tests.engines.conftest import BLUE, GREEN, RED

NO_VLLM = "vllm is not importable here: build .venv-vllm with scripts/vllm-env.sh and run this module there"

RESPONSES = [
    Response([RED], "What colour is the picture?", "It is red."),
    Response([], "No picture here.", "Nothing to see."),
    Response([BLUE, GREEN], "Which colours?", "Blue, then green, I believe."),
]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason=NO_VLLM)
@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_vllm_scores_a_saved_scalar_model_as_transformers_does(tiny_dir, tmp_path, pooling):
    from egt.engines.vllm_scalar import VLLMScalar

    model = ScalarRewardModel.from_base(tiny_dir, pooling, device="cpu")
    torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(0))
    model.save(tmp_path / "model")
    with torch.no_grad():
        expected = torch.cat([model.scores([item]) for item in RESPONSES]).tolist()
    assert len({round(x, 3) for x in expected}) == 3  # distinct: a mix-up would show

    served = VLLMScalar(
        tmp_path / "model", device="cpu", enforce_eager=True, max_model_len=2048, max_images=2
    )
    assert served.scores(RESPONSES) == pytest.approx(expected, abs=1e-4)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason=NO_VLLM)
def test_egt_score_on_vllm_gives_the_transformers_scores(tiny_dir, tmp_path):
    import json

    from egt.cli import main

    model = ScalarRewardModel.from_base(tiny_dir, "last_token", device="cpu")
    torch.nn.init.normal_(model.head.weight, generator=torch.Generator().manual_seed(1))
    model.save(tmp_path / "model")
    RED.save(tmp_path / "red.png")
    prompt = {
        "id": "p",
        "images": ["red.png"],
        "query": "What colour?",
        "candidates": ["Red.", "Blue.", "Green."],
    }
    (tmp_path / "candidates.jsonl").write_text(json.dumps(prompt) + "\n")
    rows = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        argv = ["score", str(tmp_path / "model"), str(tmp_path / "candidates.jsonl"), "--out", str(out)]
        assert main([*argv, "--engine", engine, "--device", "cpu", "-q"]) == 0
        rows[engine] = json.loads(out.read_text())
    assert rows["vllm"]["scores"] == pytest.approx(rows["hf"]["scores"], abs=1e-4)
    assert rows["vllm"]["best"] == rows["hf"]["best"]
