"""A scalar reward model (egt.engines.scalar) served by vLLM, for scoring at scale.

vLLM converts the Qwen2.5-VL checkpoint into a classifier (``runner="pooling"``,
``convert="classify"``) whose score layer is the reward head: ``ScalarRewardModel.save`` stores the
head under the name vLLM gives that layer, and sets ``num_labels: 1``, so the folder loads as it is.
The pooler reads the last token (``last_token``) or the mean of all tokens (``mean``), with no
activation: the raw ``r(x, y)``. Checked against transformers on vLLM 0.32 (CPU): equal to 1e-5
with 0, 1 and 2 images (tests/engines/test_vllm_scalar.py). The same from a shell:

    vllm serve MODEL --runner pooling --convert classify \\
        --pooler-config '{"pooling_type": "LAST", "use_activation": false}'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egt.engines.scalar import CONFIG_FILE, Response, score_text
from egt.engines.vllm_engine import VLLMEngine


class VLLMScalar(VLLMEngine):
    """``scores(responses)``: one raw reward per response, from vLLM."""

    def __init__(
        self, model_dir: str | Path, dtype: str = "bfloat16", device: str = "auto", **options: Any
    ) -> None:
        pooling = json.loads((Path(model_dir) / CONFIG_FILE).read_text())["pooling"]
        super().__init__(model_dir, dtype, device, pooling=pooling, **options)

    def scores(self, items: Sequence[Response]) -> list[float]:
        requests = []
        for item in items:
            request: dict[str, Any] = {"prompt": score_text(self.text.tokenizer, item)}
            if item.images:
                request["multi_modal_data"] = {"image": list(item.images)}
            requests.append(request)
        return [output.outputs.probs[0] for output in self.llm.classify(requests, use_tqdm=False)]
