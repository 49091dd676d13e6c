"""RL rollouts on vLLM (``rl.rollout_engine: vllm``): the policy samples, the learner's weights follow.

``VLLMRolloutWorker`` is the vLLM counterpart of ``egt.engines.rl.RolloutWorker``: the same Ray actor
contract (``ready``, ``set_weights``, ``generate``) and the same ``Generation``s, so the rl stage
drives either engine alike. It samples step 1 of a StableReinforce update (R1-Reward §3) and takes
the new policy at step 6 (egt/engines/rl.py). Prompts, sampling and the conversion of vLLM's
outputs are ``egt.engines.vllm_engine.VLLMEngine``'s, the code the probe runs.

How the weights travel: the learner's state dict (Hugging Face names, as
``Qwen2_5_VLForConditionalGeneration.state_dict()`` gives them) is one object in Ray's object store,
which each rollout actor fetches as CPU tensors. ``set_weights`` hands them to vLLM's own worker
method ``reload_weights`` through ``LLM.collective_rpc``: the model's ``load_weights`` maps the HF
names onto vLLM's fused parameters (``qkv_proj``, ``gate_up_proj``; each tensor-parallel rank takes
its shard), and the layerwise reload around it re-runs each layer's post-load processing and copies
the result into the tensors the engine already uses, so CUDA graphs stay valid. Calling
``load_weights`` on the running model alone is not enough: the CPU backend repacks linear weights
for its GEMM kernels after loading and drops the originals (loading then fails half-way). The prefix
cache and the encoder cache are reset afterwards, so no KV block or image embedding computed with
the old weights is reused.

The engine core runs in the actor's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, on GPUs too), so
the RPC reaches the vLLM worker as a plain call with the tensors themselves; with
``tensor_parallel_size`` > 1, vLLM's executor pickles them to each rank's process. vLLM's default
separate engine-core process would put them through msgpack, which delivers tensors inside RPC
arguments as raw buffers, not tensors.
"""

from __future__ import annotations

import os

import torch

from egt.engines.hf import Generation, JudgeInput
from egt.engines.vllm_engine import VLLMEngine
from egt.spec import VLLMEngineSpec
from egt.storage.store import local_folder


class VLLMRolloutWorker:
    """Holds the policy in a vLLM engine and samples rollouts with it (a Ray actor in the rl stage).

    Args:
        model: the policy's Hugging Face folder (the SFT checkpoint), local or a file:// / s3:// URI
            the actor fetches itself (on a cluster it runs on another node than the driver).
        dtype: weights dtype; float32 on CPU (as the transformers engine).
        device: "auto", "cpu" or "cuda".
        vllm: engine options, ``VLLMEngineSpec(...).model_dump(mode="json")`` (``rl.vllm``).
        threads: intra-op CPU threads; None = every core. Set before the engine starts: vLLM's CPU
            worker ignores ``torch.set_num_threads`` afterwards.
        endpoint_url: the S3 endpoint when ``model`` is an s3:// URI.
    """

    def __init__(
        self,
        model: str,
        dtype: str,
        device: str,
        vllm: dict,
        threads: int | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        torch.set_num_threads(threads or os.cpu_count() or 1)
        spec = VLLMEngineSpec.model_validate(vllm)
        self.engine = VLLMEngine(local_folder(model, endpoint_url), dtype, device, **spec.model_dump())

    def ready(self) -> bool:
        return True

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full Hugging Face state dict into the running engine (module docstring)."""
        llm = self.engine.llm
        # A list, not an iterator: with tensor parallelism the arguments are pickled to each rank.
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        if not llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight sync (requests still running)")
        llm.llm_engine.reset_encoder_cache()

    def generate(
        self, items: list[JudgeInput], max_new_tokens: int, temperature: float, seed: int
    ) -> list[Generation]:
        """Samples at ``temperature`` (0: greedy), request i with the i-th seed drawn from ``seed``."""
        return self.engine.generate(items, max_new_tokens, temperature, seed)
