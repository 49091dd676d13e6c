"""A vLLM engine that speaks the judge's contract: the probe (egt.engines.vllm_probe) and the RL
rollout workers (egt.engines.vllm_rollout) both run on it.

The engine core always runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, on GPUs
too). Both users talk to vLLM's worker through ``LLM.collective_rpc``: the probe sends a function
(collecting the entropies its logits processor recorded), the rollout worker sends tensors (new
weights). With vLLM's default separate engine-core process these go through msgpack, which refuses
functions unless ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` and delivers tensors as raw buffers. The
cost is the overlap of scheduling with model execution the separate process buys (a few percent of
throughput in vLLM's own measurements); batches are large here, so execution dominates. On CPU it also
avoids a spawn that re-imports the caller's main module.

The ``vllm`` import is lazy: this module imports without it (the main virtualenv has no vLLM).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from egt.engines.hf import Generation, HFJudge, JudgeInput, resolve_device
from egt.models.loading import load_processor

CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; the default (4) is more than tests need
    "VLLM_CPU_OMP_THREADS_BIND": "auto",
}
# Where transformers looks for a video processor config (vLLM builds Qwen2.5-VL's full processor).
VIDEO_CONFIGS = ("video_preprocessor_config.json", "preprocessor_config.json")


def vllm_available() -> bool:
    """True when ``import vllm`` would succeed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def has_video_processor(model_dir: Path) -> bool:
    """Whether transformers can build Qwen2.5-VL's video processor from this folder."""
    if any((model_dir / name).is_file() for name in VIDEO_CONFIGS):
        return True
    processor = model_dir / "processor_config.json"
    return processor.is_file() and "video_processor" in json.loads(processor.read_text())


def vllm_view(model_dir: Path, into: Path) -> Path:
    """A copy of ``model_dir`` made of symlinks, whose processor config also names a video processor.

    vLLM builds the stock ``Qwen2_5_VLProcessor`` (image + video). Real checkpoints ship a
    ``preprocessor_config.json`` that serves both; the folders ``egt.models`` saves hold an image-only
    processor (egt.models.loading), so the view adds a video processor with the image processor's
    settings. The judge never sends video (``limit_mm_per_prompt`` video = 0).
    """
    into.mkdir(parents=True, exist_ok=True)
    for entry in model_dir.iterdir():
        if entry.name != "processor_config.json":
            (into / entry.name).symlink_to(entry.resolve())
    config = json.loads((model_dir / "processor_config.json").read_text())
    video = {k: v for k, v in config["image_processor"].items() if k != "image_processor_type"}
    video["video_processor_type"] = "Qwen2VLVideoProcessor"
    config["video_processor"] = video
    config["processor_class"] = "Qwen2_5_VLProcessor"
    (into / "processor_config.json").write_text(json.dumps(config, indent=2))
    return into


def request_seeds(seed: int, n: int) -> list[int]:
    """``n`` per-request vLLM seeds drawn from ``seed``: a request with its own seed samples from its
    own generator, so its output does not depend on what else vLLM schedules with it."""
    draws = random.Random(seed)
    return [draws.getrandbits(63) for _ in range(n)]


class VLLMEngine:
    """A vLLM engine that speaks the judge's contract, shared by the probe and the RL rollout workers.

    Prompts are the transformers engine's chat-template text with the images as multi-modal data;
    completions come back as ``Generation``s cut and decoded exactly as ``HFJudge`` does (token ids up
    to and including the end-of-turn token, text and pieces without it).

    Args:
        model_dir: a Hugging Face folder.
        dtype: weights dtype; forced to float32 on CPU (as ``HFJudge.from_dir``).
        device: "auto", "cpu" or "cuda" (vLLM picks its own platform); on CPU the ``CPU_ENV``
            defaults apply.
        tensor_parallel_size: GPUs one vLLM engine is split over.
        gpu_memory_utilization: share of the GPU vLLM takes (weights + KV cache); None = 0.9.
            Ignored on CPU (``VLLM_CPU_KVCACHE_SPACE`` sizes the KV cache there).
        max_model_len: context limit of the engine; None = the model's.
        max_num_seqs: sequences decoded together; None = vLLM's default.
        max_images: images per prompt the engine is profiled for.
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes.
        enforce_eager: skip CUDA graph capture / torch.compile (faster start, slower decode).
        seed: vLLM's global seed (requests without a seed of their own sample from it).
        logits_processors: vLLM logits processors by qualified name (``module:Class``).
        pooling: ``last_token`` or ``mean`` to serve a scalar reward model instead of generating
            (vLLM's classify conversion of the model, raw scores; egt.engines.vllm_scalar).
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "bfloat16",
        device: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        max_images: int = 4,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
        logits_processors: Sequence[str] = (),
        pooling: str | None = None,
    ) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # module docstring
        device = resolve_device(device)
        if device == "cpu":
            dtype = "float32"
            for name, value in CPU_ENV.items():
                os.environ.setdefault(name, value)
        from vllm import LLM  # lazy: the main virtualenv has no vLLM

        self.model_dir, self.dtype, self.device = Path(model_dir), dtype, device
        self._view = None
        if not has_video_processor(self.model_dir):
            self._view = tempfile.TemporaryDirectory(prefix="egt-vllm-")
            engine_dir = vllm_view(self.model_dir, Path(self._view.name) / "model")
        else:
            engine_dir = self.model_dir
        options = {"max_num_seqs": max_num_seqs} if max_num_seqs else {}
        if device != "cpu":
            options["gpu_memory_utilization"] = gpu_memory_utilization or 0.9
        if pooling is not None:  # a scalar reward model: one raw score per prompt (egt.engines.vllm_scalar)
            from vllm.config import PoolerConfig

            kind = {"last_token": "LAST", "mean": "MEAN"}[pooling]
            options |= {
                "runner": "pooling",
                "convert": "classify",
                "pooler_config": PoolerConfig(pooling_type=kind, use_activation=False),
            }
        self.llm = LLM(
            str(engine_dir),
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            limit_mm_per_prompt={"image": max_images, "video": 0},
            logits_processors=list(logits_processors),
            seed=seed,
            # The checkpoint's generation_config.json (repetition penalty, top-k/p) must not become the
            # requests' defaults: entropies and π_old are computed from the raw logits.
            generation_config="vllm",
            **options,
        )
        # Prompts and decoding only (no model): the HF engine's chat template and token pieces.
        self.text = HFJudge(None, load_processor(self.model_dir), device)

    def requests(self, items: Sequence[JudgeInput]) -> list[dict]:
        """vLLM prompts: the HF engine's chat-template text, images as multi-modal data."""
        out = []
        for item in items:
            request = {"prompt": self.text.prompt_text(item)}
            if item.images:
                request["multi_modal_data"] = {"image": list(item.images)}
            out.append(request)
        return out

    def sampling_params(
        self,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        logprobs: int | None = None,
        extra_args: dict | None = None,
    ):
        """One request's ``SamplingParams``: greedy when temperature is 0, else the full tempered
        distribution (no top-p/top-k/min-p, no penalties: every option that reshapes the logits is set,
        as on the HF engine); stops at the end-of-turn tokens."""
        from vllm import SamplingParams

        return SamplingParams(
            temperature=temperature,
            top_p=1.0,
            top_k=0,  # disabled: sampling (temperature > 0) draws from the full tempered distribution
            min_p=0.0,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            max_tokens=max_new_tokens,
            stop_token_ids=sorted(self.text.end_ids),
            seed=seed,
            logprobs=logprobs,
            detokenize=False,  # pieces are decoded by HFJudge.to_generation, as on the HF engine
            extra_args=extra_args,
        )

    def run(self, items: Sequence[JudgeInput], params: Sequence) -> list[Generation]:
        """One ``LLM.generate`` call (vLLM batches the items); ``params[i]`` decodes item i."""
        outputs = self.llm.generate(self.requests(items), list(params), use_tqdm=False)
        return [self.text.to_generation(list(o.outputs[0].token_ids)) for o in outputs]

    def generate(
        self,
        items: Sequence[JudgeInput],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """Greedy when temperature is 0, else sampled. With a ``seed``, request i samples with the
        i-th number drawn from it: reproducible, and repeated prompts still get different samples
        (one shared seed would give every copy of a prompt the same output)."""
        if not items:
            return []
        seeds = [None] * len(items) if seed is None else request_seeds(seed, len(items))
        return self.run(items, [self.sampling_params(max_new_tokens, temperature, s) for s in seeds])

    def close(self) -> None:
        """Stop the engine, release the process group it set up in this process, drop the view folder.

        The engine core runs in this process, so its torch.distributed group is this process's
        default group: left behind, a later DeepSpeed engine here (a stage run after the probe in
        the same process) would adopt a group vLLM has torn down half-way.
        """
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        cleanup_dist_env_and_memory()
        if self._view is not None:
            self._view.cleanup()
            self._view = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
