"""The EGTRun spec: one pydantic model drives the CRD schema, the local runner and every stage job.

A run file is a Kubernetes object (``apiVersion: egt.dev/v1alpha1``, ``kind: EGTRun``); the same
YAML goes to ``kubectl apply`` and to ``egt run --local``. Every field has a description (it becomes
``kubectl explain`` text) and a default that reproduces the EGT paper where the paper sets one
(../shared/method.md). Secrets never appear here: fields name the environment variable or
Kubernetes Secret that holds them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

API_VERSION = "egt.dev/v1alpha1"
KIND = "EGTRun"
STAGES = ("prepare", "annotate", "sft", "probe", "curate", "rl", "scalar", "evaluate", "score", "filter")
StageName = Literal[
    "prepare", "annotate", "sft", "probe", "curate", "rl", "scalar", "evaluate", "score", "filter"
]
RunKind = Literal["reasoning", "scalar"]
# The stages of each kind of run, in order (see EGTRunSpec.stages): a scalar reward model is trained
# straight on the preference pairs, with no teacher, probe, curation or RL.
SCALAR_STAGES = ("prepare", "scalar", "evaluate")
# Uses of the trained reward model that a run adds when its spec asks for them (score.candidates,
# filter.enabled): best of N on a candidates file, and flagging a pool's doubtful pairs.
APPLICATION_STAGES = ("score", "filter")
SINGLE_POD_STAGES = ("prepare", "annotate", "curate", "evaluate", "score", "filter")
TrainedModel = Literal["sft", "rl", "scalar"]

PositiveInt = Annotated[int, Field(ge=1)]
# More samples than any preference pool holds (R1-Reward's RL pool: 17k): a count past it is a typo.
MAX_POOL = 10_000_000
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class FieldError(ValueError):
    """A rule across fields, reported on the field to change (``field``, relative to the model
    whose validator raises it) rather than on the model as a whole."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Section(BaseModel):
    """Base for every spec section: unknown fields are errors, so typos never pass silently; so are
    infinite and NaN numbers (YAML's .inf and .nan), which no setting means."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class StoreSpec(Section):
    """Where artifacts go: <uri>/<run>/<stage>/."""

    uri: str = Field(
        "runs",
        description="Artifact root: a local path, file:///abs/path or s3://bucket/prefix. "
        "A run writes <uri>/<run>/<stage>/…",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, SeaweedFS, Ceph). Credentials come only from the "
        "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), filled from a Kubernetes Secret "
        "on clusters.",
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        return _path_or_store_uri(uri)


class TinyModelSpec(Section):
    """A tiny random-weight Qwen2.5-VL with the real vocabulary, built offline."""

    seed: int = Field(0, description="Seed of the random weights.")
    hidden_size: int = Field(64, ge=64, multiple_of=32, description="Text hidden size (heads of 32 dims).")
    num_layers: PositiveInt = Field(4, description="Text decoder layers.")


class ModelSpec(Section):
    """The base judge model (Qwen2.5-VL) and how it is loaded."""

    path: str | None = Field(
        None,
        description="Base judge model: a Hugging Face folder (local path or s3:// URI), "
        "e.g. Qwen2.5-VL-7B-Instruct. Exactly one of path and tiny.",
    )
    tiny: TinyModelSpec | None = Field(
        None, description="Build a tiny random-weight Qwen2.5-VL offline instead (tests and the demo)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="Weights dtype for training and inference."
    )
    device: str = Field("auto", description="'auto' (cuda when present, else cpu), 'cpu' or 'cuda'.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path and model.tiny")
        return self


class SyntheticDataSpec(Section):
    """Generated colour pairs whose images decide the better response, with injected noise."""

    seed: int = Field(0, description="Seed of images, responses, labels and noise positions.")
    sft_size: PositiveInt = Field(400, description="Pairs in the SFT pool (annotated by the teacher).")
    rl_size: PositiveInt = Field(300, description="Pairs in the RL pool (probed, curated, trained on).")
    eval_size: PositiveInt = Field(200, description="Held-out clean pairs for evaluation.")
    ambiguous_fraction: Fraction = Field(
        0.15, description="Share of SFT and RL pairs whose image supports both responses (no right answer)."
    )
    flipped_fraction: Fraction = Field(0.10, description="Share of SFT and RL pairs whose label is swapped.")
    image_size: int = Field(56, ge=28, description="Image side in pixels (56 → 4 image tokens).")

    @model_validator(mode="after")
    def _fractions(self) -> SyntheticDataSpec:
        if self.ambiguous_fraction + self.flipped_fraction > 1:
            raise ValueError("ambiguous_fraction + flipped_fraction must be at most 1")
        return self


def _path_or_store_uri(uri: str | None) -> str | None:
    if uri is not None and "://" in uri and not uri.startswith(("file://", "s3://")):
        raise ValueError(f"{uri!r} must be a path or start with file:// or s3://")
    if uri is not None and uri.startswith("s3://") and not uri[5:].split("/", 1)[0]:
        raise ValueError(f"{uri!r} has no bucket; expected s3://bucket/key")
    return uri


DatasetFormat = Literal[
    "egt",
    "vl-rewardbench",
    "multimodal-rewardbench",
    "mm-rlhf-rewardbench",
    "r1-reward-rl",
    "preference-pairs",
]


class DatasetSpec(Section):
    """One dataset file, in egt's own records or as a public dataset publishes it (docs/data.md)."""

    uri: str = Field(
        description="The file: a path, file:///abs/path or s3://bucket/key (JSON Lines, JSON or Parquet)."
    )
    format: DatasetFormat = Field(
        "egt",
        description="How the file is laid out: egt (native records), vl-rewardbench (its parquet), "
        "multimodal-rewardbench (all_data.json), mm-rlhf-rewardbench (its JSONL), r1-reward-rl (the "
        "R1-Reward RL parquet) or preference-pairs (prompt/chosen/rejected/images JSONL). The prepare "
        "stage converts every format but egt into native records.",
    )
    root: str | None = Field(
        None,
        description="Folder that the file's image and video-frame paths are relative to (a path, "
        "file:// or s3:// URI); default the file's own folder. Paths never resolve outside it: an "
        "absolute path, a URI or '..' is refused at prepare.",
    )
    strip_prefix: str | None = Field(
        None,
        description="Leading part of absolute image paths to drop before resolving them inside root "
        "(R1-Reward-RL's paths point at its authors' servers).",
    )
    video_frames: PositiveInt = Field(
        8, description="Frames sampled uniformly (first and last included) from a video's frame folder."
    )
    position_seed: int = Field(
        0,
        description="Seed of the balanced assignment of the preferred response to position 1 or 2 "
        "(mm-rlhf-rewardbench, preference-pairs: chosen/rejected data).",
    )

    @field_validator("uri", "root")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        return _path_or_store_uri(uri)

    @model_validator(mode="after")
    def _media_options(self) -> DatasetSpec:
        if self.format == "egt" and self.strip_prefix is not None:
            raise ValueError(
                "strip_prefix applies to converted formats; egt records' image paths are relative to "
                "root (default the records file's folder)"
            )
        return self


EVAL_SET_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


class DataSpec(Section):
    """The SFT pool, the RL pool and the evaluation sets."""

    sft: DatasetSpec | None = Field(None, description="SFT pool (annotated by the teacher).")
    rl: DatasetSpec | None = Field(None, description="RL pool (probed, curated, trained on).")
    scalar_extra: DatasetSpec | None = Field(
        None,
        description="More preference pairs for the scalar stage's second phase (Skywork-VL adds text-only "
        "pairs there); read only when scalar.second_phase is set.",
    )
    eval: dict[str, DatasetSpec] = Field(default_factory=dict, description="Evaluation sets by name.")
    synthetic: SyntheticDataSpec | None = Field(
        None, description="Generate all three pools instead (tests and the demo)."
    )

    @field_validator("sft", "rl", mode="before")
    @classmethod
    def _not_a_bare_uri(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(f"give the dataset as {{uri: {value}, format: …}} (see docs/data.md)")
        return value

    @field_validator("eval", mode="before")
    @classmethod
    def _no_bare_uris(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, dataset in value.items():
                if isinstance(dataset, str):
                    raise ValueError(f"give set {name!r} as {{uri: {dataset}, format: …}} (see docs/data.md)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = (
            self.sft is not None or self.rl is not None or self.scalar_extra is not None or bool(self.eval)
        )
        if self.synthetic is not None and given:
            raise ValueError("data.synthetic excludes data.sft, data.rl, data.scalar_extra and data.eval")
        if self.synthetic is None and self.sft is None:
            raise ValueError("set data.sft (and data.rl for a reasoning run), or data.synthetic")
        for name in self.eval:
            if name in ("sft", "rl", "scalar_extra") or not EVAL_SET_NAME.fullmatch(name):
                raise ValueError(
                    f"data.eval: set name {name!r} must match {EVAL_SET_NAME.pattern} and not be sft, rl or "
                    "scalar_extra (it names files and metric labels)"
                )
        return self

    def datasets(self) -> dict[str, DatasetSpec]:
        """Every external dataset by pool name: sft, rl, scalar_extra and each evaluation set."""
        named = {"sft": self.sft, "rl": self.rl, "scalar_extra": self.scalar_extra, **self.eval}
        return {name: dataset for name, dataset in named.items() if dataset is not None}


class ChatEndpointSpec(Section):
    """An OpenAI-compatible chat endpoint (kind 'openai'); the key comes from an environment variable."""

    kind: str
    base_url: str | None = Field(None, description="Endpoint root, e.g. https://api.openai.com/v1.")
    model: str | None = Field(None, description="Model name at the endpoint.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key; null: send no key (a local server "
        "without authentication, such as vLLM's or the offline teacher server).",
    )
    timeout_seconds: float = Field(120.0, gt=0, description="Per-request timeout.")
    max_concurrency: PositiveInt = Field(16, description="Requests in flight at once.")

    @model_validator(mode="after")
    def _endpoint(self) -> ChatEndpointSpec:
        if self.kind == "openai" and (not self.base_url or not self.model):
            raise ValueError(f"kind 'openai' needs base_url and model ({type(self).__name__})")
        return self


class TeacherSpec(ChatEndpointSpec):
    """The teacher of stage 1 (the paper: Gemini 2.5 Pro; R1-Reward: GPT-4o at temperature 0)."""

    kind: Literal["openai", "scripted"] = Field(
        "openai",
        description="'openai': any OpenAI-compatible chat endpoint; 'scripted': an offline teacher that "
        "reads synthetic images (demo only).",
    )
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature (R1-Reward: 0).")
    max_tokens: PositiveInt = Field(2048, description="Maximum tokens per teacher answer.")
    max_retries: int = Field(
        5, ge=0, description="Retries on 429, 5xx and timeouts, with exponential backoff."
    )
    error_rate: Fraction = Field(0.1, description="Scripted teacher only: probability of a wrong judgement.")
    seed: int = Field(0, description="Scripted teacher only: seed of its errors.")
    style: Literal["detailed", "steps"] = Field(
        "detailed",
        description="Scripted teacher only: 'steps' writes ~30 tokens of local reasoning steps a tiny "
        "model can learn (docs/demo.md).",
    )


class AnnotateSpec(Section):
    """Stage 1: teacher trajectories, at most 3 attempts, the label never shown."""

    teacher: TeacherSpec = Field(
        default_factory=lambda: TeacherSpec(kind="scripted"),
        description="The model that writes trajectories.",
    )
    max_attempts: int = Field(
        3, ge=1, le=3, description="Attempts per pair; the first agreeing with the label is kept."
    )
    shard_size: PositiveInt = Field(256, description="Pairs per resumable shard.")
    teacher_error_budget: Fraction = Field(
        0.0,
        description="Share of the pool whose teacher requests may fail for good (after the teacher's "
        "retries) while annotate still finishes without them; the next run asks again for exactly "
        "those. Beyond it the stage fails, keeping every answered pair for the rerun. 0: any failure "
        "fails the stage.",
    )


class DeepSpeedSpec(Section):
    """How a trainer runs on DeepSpeed (the SFT ranks and the RL learners share these knobs)."""

    zero_stage: Literal[1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."
    )
    bf16: bool = Field(True, description="bf16 mixed precision (fp32 master weights) on GPU; ignored on CPU.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward to save memory."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip per optimizer step.")


class SFTSpec(DeepSpeedSpec):
    """Stage 2: supervised fine-tuning on the trajectories (DeepSpeed ZeRO)."""

    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the trajectories (paper: 1).")
    global_batch_size: PositiveInt = Field(
        256, description="Sequences per optimizer step, all ranks (paper: 256)."
    )
    micro_batch_size: PositiveInt = Field(1, description="Sequences per forward pass per rank.")
    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak learning rate (paper: 1e-5).")
    warmup_ratio: Fraction = Field(0.03, description="Share of steps with linear warmup; cosine decay after.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: PositiveInt = Field(
        4096, description="Sequences longer than this (prompt + answer) are dropped."
    )
    seed: int = Field(0, description="Seed of the data order and dropout.")
    checkpoint_every_steps: PositiveInt = Field(
        50, description="Optimizer steps between resumable checkpoints."
    )
    logits_chunk_size: PositiveInt = Field(
        256,
        description="Labelled positions whose full-vocabulary logits exist at once in the loss (and its "
        "gradient, formed in the same pass); only assistant tokens ever get logits.",
    )


class ScalarPhaseSpec(Section):
    """The scalar stage's second phase (Skywork-VL Reward §4.1): training goes on over the SFT pool and
    data.scalar_extra together, at a lower learning rate."""

    epochs: float = Field(2.0, gt=0, le=1000, description="Passes over the phase's pairs (Skywork-VL: 2).")
    learning_rate: float = Field(1e-6, gt=0, le=1, description="Peak learning rate, below the first phase's.")
    warmup_ratio: Fraction = Field(0.0, description="Share of the phase's steps with linear warmup.")


class ScalarTrainSpec(DeepSpeedSpec):
    """The scalar stage: a scalar reward model trained on the SFT pool's preference pairs, a linear
    head on the VLM and the Bradley–Terry loss (the Skywork-VL Reward and IXC-2.5-Reward baselines;
    egt.engines.scalar). It runs in a kind 'scalar' run, and in a reasoning run that lists 'scalar'
    in evaluate.models (the baseline beside the reasoning model)."""

    pooling: Literal["last_token", "mean"] = Field(
        "last_token",
        description="Hidden vector the head reads: the state after the response's last token (Skywork-VL) "
        "or the mean over all tokens (IXC-2.5).",
    )
    freeze: list[Literal["vision", "projector"]] = Field(
        default_factory=lambda: ["vision"],
        description="Parts not trained: Skywork-VL freezes the vision encoder, IXC-2.5 also the projector.",
    )
    epochs: float = Field(2.0, gt=0, le=1000, description="Passes over the pairs (Skywork-VL: 2 per phase).")
    global_batch_size: PositiveInt = Field(
        256, description="Pairs per optimizer step, all ranks (IXC-2.5: 256)."
    )
    micro_batch_size: PositiveInt = Field(
        1, description="Pairs per forward pass per rank (two sequences each)."
    )
    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak learning rate (IXC-2.5: 1e-5).")
    warmup_ratio: Fraction = Field(0.03, description="Share of steps with linear warmup; cosine decay after.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: PositiveInt = Field(
        4096, description="Pairs with a scored sequence (prompt + response) longer than this are dropped."
    )
    seed: int = Field(0, description="Seed of the data order.")
    checkpoint_every_steps: PositiveInt = Field(
        50, description="Optimizer steps between resumable checkpoints."
    )
    second_phase: ScalarPhaseSpec | None = Field(
        None,
        description="A second phase on the SFT pool plus data.scalar_extra at a lower learning rate "
        "(Skywork-VL's two-stage fine-tuning); the same optimizer goes on.",
    )


class VLLMEngineSpec(Section):
    """Options of a vLLM engine (probe generation, RL rollouts)."""

    tensor_parallel_size: PositiveInt = Field(1, description="GPUs one vLLM engine spans.")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Share of GPU memory for vLLM; default 0.9 (0.6 for the probe's teacher_forced "
        "entropy, which keeps a transformers copy beside it).",
    )
    max_model_len: PositiveInt | None = Field(None, description="Context limit; default the model's.")
    max_num_seqs: PositiveInt | None = Field(
        None, description="Sequences vLLM schedules at once; default vLLM's."
    )
    max_images: PositiveInt = Field(4, description="Images per prompt vLLM reserves room for.")
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of the shared judge prompt prefix."
    )
    enforce_eager: bool = Field(False, description="No CUDA graphs (slower; faster start).")


class VLLMProbeSpec(VLLMEngineSpec):
    """Options of the vLLM probe engine (egt/engines/vllm_probe.py)."""

    entropy: Literal["engine", "teacher_forced"] = Field(
        "engine",
        description="engine: exact entropies inside vLLM's sampler (a logits processor); teacher_forced: "
        "the transformers pass after vLLM generates (a second model copy and forward pass).",
    )


class ProbeSpec(Section):
    """Stage 3: the SFT model answers the RL pool; exact per-sample entropies."""

    engine: Literal["hf", "vllm"] = Field("hf", description="Generation engine.")
    max_new_tokens: PositiveInt = Field(1024, description="Generation budget per sample.")
    batch_size: PositiveInt = Field(16, description="Samples generated together.")
    entropy_chunk_size: PositiveInt = Field(
        256, description="Positions whose full-vocabulary logits are materialized at once."
    )
    shard_size: PositiveInt = Field(256, description="Samples per resumable shard.")
    num_shards: PositiveInt = Field(
        1,
        description="Parts the pool is partitioned over: Indexed Job completions × replicas_per_node.",
    )
    replicas_per_node: PositiveInt = Field(
        1,
        description="Parts one pod runs at once, each a process on its own slice of the pod's GPUs "
        "(gpus_per_node / replicas_per_node each; one vLLM engine per GPU when that is 1, "
        "tensor_parallel_size = the slice otherwise). Pod i runs parts i·R … i·R + R − 1.",
    )
    correctness_samples: PositiveInt = Field(
        1,
        description="Answers per sample behind its correctness score: 1 scores the greedy answer (0 or "
        "1); K > 1 adds K sampled answers at correctness_temperature and scores the share that is right.",
    )
    correctness_temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of the correctness samples."
    )
    vllm: VLLMProbeSpec = Field(default_factory=VLLMProbeSpec, description="Options of engine 'vllm'.")

    @model_validator(mode="after")
    def _whole_pods(self) -> ProbeSpec:
        if self.num_shards % self.replicas_per_node:
            raise ValueError(
                f"num_shards {self.num_shards} is not a multiple of replicas_per_node "
                f"{self.replicas_per_node}: every pod runs replicas_per_node parts"
            )
        return self

    @property
    def pods(self) -> int:
        return self.num_shards // self.replicas_per_node


class CurateSpec(Section):
    """Stage 4: keep the lowest-entropy samples, sorted ascending (or an ablation)."""

    strategy: Literal["entropy", "random", "accuracy", "bucket", "all"] = Field(
        "entropy",
        description="entropy: lowest entropies (EGT); random: seeded sample; accuracy: by the probe's "
        "correctness score (supervised baseline, see accuracy_order); bucket: low / mid / high entropy "
        "bucket; all: the whole pool, in its own order (the paper's '+ Full RL'; keep is ignored).",
    )
    accuracy_order: Literal["lowest_first", "highest_first"] = Field(
        "lowest_first",
        description="Strategy 'accuracy': keep the samples with the lowest correctness scores (the "
        "reading of the paper's Table 3 caption) or the highest (correctly probed first).",
    )
    metric: Literal["answer", "sentence", "mix"] = Field(
        "answer",
        description="answer-token entropy (eq. 3), reasoning-sentence entropy (eq. 4) or their product.",
    )
    keep: PositiveInt | None = Field(
        2500,
        le=MAX_POOL,
        description="Samples kept (paper: 2,500 of 17k); more than the pool keeps it all. Excludes "
        "percentile.",
    )
    percentile: float | None = Field(
        None, gt=0, le=100, description="Keep entropies below this percentile instead of a count."
    )
    bucket: Literal["low", "mid", "high"] = Field("low", description="Bucket for strategy 'bucket'.")
    seed: int = Field(0, description="Seed for strategy 'random'.")

    @model_validator(mode="after")
    def _one_size(self) -> CurateSpec:
        if (self.keep is None) == (self.percentile is None):
            raise ValueError(
                "set exactly one of curate.keep and curate.percentile (set keep: null to use percentile)"
            )
        return self


class RefereeSpec(ChatEndpointSpec):
    """Judges whether the reasoning supports the answer (R_logic; R1-Reward: Qwen2.5-VL-7B-Instruct)."""

    kind: Literal["rules", "openai"] = Field(
        "rules",
        description="'rules': the last 'Response N is better' sentence of the reasoning must name the "
        "answer; 'openai': a model behind an OpenAI-compatible endpoint.",
    )
    timeout_seconds: float = Field(60.0, gt=0, description="Per-request timeout.")


class RLSpec(DeepSpeedSpec):
    """Stage 5: StableReinforce on Ray, ascending entropy every epoch."""

    epochs: PositiveInt = Field(
        20, description="Passes over the curated set, each in ascending entropy (paper: 20)."
    )
    global_batch_size: PositiveInt = Field(224, description="Prompts per update (paper: 224).")
    micro_batch_size: PositiveInt = Field(4, description="Sequences per learner forward pass.")
    learning_rate: float = Field(1e-6, gt=0, le=1, description="Learning rate (paper: 1e-6).")
    rollouts_per_prompt: PositiveInt = Field(1, description="Samples per prompt.")
    max_new_tokens: PositiveInt = Field(1024, description="Rollout length budget.")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    alpha: float = Field(0.5, description="Weight of R_logic in R = R_acc(1 + α R_logic) + β R_format.")
    beta: float = Field(0.5, description="Weight of R_format.")
    kl_coef: float = Field(0.0, ge=0, description="β_KL of the per-token KL penalty (R1-Reward paper: 0).")
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip ε.")
    ratio_min: float = Field(1e-3, gt=0, description="Pre-clip: lower bound of π/π_old before exp.")
    ratio_max: float = Field(1e3, gt=1, description="Pre-clip: upper bound of π/π_old before exp.")
    advantage_sigma: float = Field(3.0, gt=0, description="Advantage filter: keep standardized |A| ≤ this.")
    updates_per_batch: PositiveInt = Field(
        1,
        description="Optimizer steps per rollout batch, over equal mini-batches. Above 1 the later steps "
        "are off-policy, which is where pre-clip and the ε-clip act.",
    )
    rollout_workers: PositiveInt = Field(1, description="Ray rollout actors (one GPU each on a cluster).")
    rollout_engine: Literal["hf", "vllm"] = Field(
        "hf", description="Rollout generation engine: vllm on GPU clusters, hf (transformers) anywhere."
    )
    vllm: VLLMEngineSpec = Field(
        default_factory=VLLMEngineSpec, description="Options of rollout_engine 'vllm'."
    )
    learner_workers: PositiveInt = Field(
        1, description="Learner actors: data-parallel DeepSpeed ranks, one GPU each on a cluster."
    )
    referee: RefereeSpec = Field(default_factory=RefereeSpec, description="Who scores R_logic.")
    order: Literal["ascending", "shuffled", "as_curated"] = Field(
        "ascending",
        description="Order each epoch visits the curated samples: ascending curate-metric entropy (EGT's "
        "curriculum), shuffled anew every epoch (seeded by rl.seed; the paper's '+ Selection'), or "
        "as curate wrote them.",
    )
    enabled: bool = Field(
        True,
        description="false: no RL; the stage records that it was off and evaluate scores the SFT model "
        "alone (the 0% point of the paper's data-scale curve). evaluate.models must then be [sft].",
    )
    max_steps: PositiveInt | None = Field(None, description="Stop after this many updates (smoke runs).")
    checkpoint_every_steps: PositiveInt = Field(20, description="Updates between resumable checkpoints.")
    seed: int = Field(0, description="Seed of rollout sampling.")

    @property
    def log_ratio_bounds(self) -> tuple[float, float]:
        return math.log(self.ratio_min), math.log(self.ratio_max)


class EvaluateSpec(Section):
    """Stage 6: accuracy in both response orders, position bias, Voting@K."""

    models: list[Literal["sft", "rl", "scalar"]] = Field(
        default_factory=lambda: ["sft", "rl"],
        description="Models to evaluate, side by side: the reasoning run's sft and rl, and 'scalar' (the "
        "scalar reward model baseline, trained on the same SFT pool). A kind 'scalar' run evaluates "
        "[scalar], its default.",
    )
    both_orders: bool = Field(True, description="Score every pair in both response orders (position bias).")
    max_new_tokens: PositiveInt = Field(1024, description="Generation budget per answer.")
    batch_size: PositiveInt = Field(16, description="Pairs generated together.")
    voting_k: PositiveInt = Field(
        1, description="Voting@K: K samples per pair, majority answer (1 = greedy)."
    )
    voting_temperature: float = Field(1.0, gt=0, description="Sampling temperature when voting_k > 1.")


class RewardModelUseSpec(Section):
    """Which of the run's trained models to apply, and how to run it."""

    model: TrainedModel | None = Field(
        None,
        description="sft, rl or scalar (the scalar stage then runs in a reasoning run too). Default: the "
        "run's final model: rl (sft when rl.enabled is false); scalar in a kind 'scalar' run.",
    )
    engine: Literal["hf", "vllm"] = Field("hf", description="transformers, or vLLM (the vllm image).")
    batch_size: PositiveInt = Field(16, description="Sequences per forward pass or generate call.")
    max_new_tokens: PositiveInt = Field(512, description="Reasoning models: tokens per judgement.")


class ScoreSpec(RewardModelUseSpec):
    """Best of N with the run's reward model (egt.engines.best_of_n): runs after evaluate when
    candidates is set, and writes ``<run>/score/scores.jsonl``."""

    candidates: str | None = Field(
        None,
        description='JSON Lines, one prompt per line: {"id", "images": [refs], "query", "candidates": '
        "[str, …]}; a path, file:// or s3:// URI, image references relative to it. Unset: no score stage.",
    )
    tournament: Literal["round_robin", "knockout"] = Field(
        "round_robin",
        description="Reasoning models: round_robin ranks all N (N(N-1) calls); knockout finds the best "
        "(2(N-1) calls). Each comparison is judged in both orders. A scalar model scores N passes.",
    )

    @field_validator("candidates")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        return _path_or_store_uri(uri)


class FilterSpec(RewardModelUseSpec):
    """Data cleaning with the run's reward model (egt.engines.filtering): flag the pool's pairs the
    model disagrees with; runs after evaluate when enabled, writing kept.jsonl and flagged.jsonl."""

    enabled: bool = Field(False, description="Run the filter stage.")
    pool: Literal["sft", "rl"] = Field("sft", description="Which of the run's pools to filter.")
    fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Flag this share of the pool with the lowest margins. Unset: every pair whose margin "
        "is below zero (the model prefers the other response).",
    )


# Kubernetes' own formats (k8s.io/apimachinery), checked here so that `egt validate` and admission
# refuse what the API server would refuse when the operator creates a stage's pods.
Quantity = Annotated[
    str,
    Field(
        pattern=r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][0-9]+)?$",
        description="A Kubernetes quantity: 500m, 2, 16Gi, 1.5G (not 16GB).",
    ),
]
LabelValue = Annotated[
    str,
    Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"),
]
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)


def _label_key(key: str, where: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not _LABEL_KEY.match(key) or len(name) > 63 or len(prefix) > 253:
        raise ValueError(
            f"{where}: {key!r} is not a Kubernetes label key ([prefix/]name: a DNS subdomain, then up to "
            "63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)"
        )
    return key


class StageResources(Section):
    """Pods and resources of one stage on a cluster."""

    nodes: PositiveInt = Field(1, description="Pods (nodes) the stage spans.")
    gpus_per_node: int = Field(0, ge=0, description="nvidia.com/gpu per pod.")
    cpu: Quantity = Field("2", description="CPU request per pod (a Kubernetes quantity: 500m, 2, 64).")
    scratch: Quantity = Field(
        "100Gi",
        description="Ephemeral storage per pod: the request and the size limit of /scratch (the model, "
        "caches, checkpoints on their way to the store).",
    )
    memory: Quantity = Field("8Gi", description="Memory request and limit per pod (a quantity: 16Gi).")


class Toleration(Section):
    """A pod toleration, as Kubernetes spells it."""

    key: str | None = Field(None, description="Taint key; empty with operator Exists tolerates every taint.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal (key and value) or Exists.")
    value: LabelValue | None = Field(None, description="Taint value (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect tolerated; empty: every effect."
    )
    tolerationSeconds: int | None = Field(  # Kubernetes spelling, as users copy it
        None, description="How long a NoExecute taint is tolerated before eviction."
    )

    @model_validator(mode="after")
    def _as_kubernetes_validates(self) -> Toleration:
        if self.key is not None:
            _label_key(self.key, "cluster.tolerations key")
        if self.operator == "Exists" and self.value:
            raise ValueError("cluster.tolerations: a toleration with operator Exists takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("cluster.tolerations: a toleration without a key needs operator Exists")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("cluster.tolerations: tolerationSeconds applies to effect NoExecute only")
        return self


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


class ClusterSpec(Section):
    """How stages run on Kubernetes: image, GPU placement, Secrets, resources."""

    image: str = Field("ghcr.io/egt-dev/egt-trainer:0.1.0", description="Trainer image of every stage pod.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, description="nodeSelector of GPU pods: node label keys and values."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of GPU pods.")
    s3_secret: str | None = Field(None, description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")
    teacher_secret: str | None = Field(
        None, description="Secret holding the teacher's and referee's API keys."
    )
    resources: dict[StageName, StageResources] = Field(
        default_factory=dict, description="Per-stage pod resources; stages not listed get the defaults."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of every stage pod, e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA. Never "
        "secrets: those come from s3_secret / teacher_secret.",
    )
    shm_size: Quantity | None = Field(
        None, description="Size limit of GPU pods' memory-backed /dev/shm (e.g. 16Gi); unset = no limit."
    )
    active_deadline_seconds: PositiveInt | None = Field(
        None,
        description="Longest a stage's Job or RayJob may run (activeDeadlineSeconds); past it the stage "
        "fails with DeadlineExceeded. Unset: no limit.",
    )
    priority_class: str | None = Field(None, description="priorityClassName of every stage pod.")
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets to pull the trainer image with (imagePullSecrets)."
    )
    service_account: str | None = Field(
        None,
        description="serviceAccountName of stage pods (e.g. for IRSA / workload identity to reach S3); "
        "its token is mounted only then. Unset: the namespace's default, no token.",
    )
    queue: LabelValue | None = Field(
        None,
        description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name on every Job and RayJob): Kueue then "
        "admits a multi-node stage's pods all at once or not at all.",
    )
    start_deadline_seconds: PositiveInt | None = Field(
        1800,
        description="Longest the RL stage's Ray cluster may take to start the job (the RayJob's "
        "preRunningDeadlineSeconds, KubeRay >= 1.6): pods that cannot be scheduled, pulled or admitted "
        "fail the stage with KubeRay's reason instead of waiting for ever. Unset: no limit.",
    )

    def resources_for(self, stage: str) -> StageResources:
        """The stage's pod resources; the defaults where the stage is not listed."""
        return self.resources.get(stage) or StageResources()

    @field_validator("resources")
    @classmethod
    def _one_pod_stages(cls, resources: dict[str, StageResources]) -> dict[str, StageResources]:
        for stage in SINGLE_POD_STAGES:
            if stage in resources and resources[stage].nodes != 1:
                raise ValueError(
                    f"cluster.resources.{stage}.nodes: {stage} runs in one pod; only sft, probe, rl and "
                    "scalar spread over nodes"
                )
        return resources

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, selector: dict[str, str]) -> dict[str, str]:
        for key in selector:
            _label_key(key, "cluster.node_selector")
        return selector

    @field_validator("env")
    @classmethod
    def _no_secrets_in_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"cluster.env name {name!r} is not an environment variable name")
            if _SECRET_NAME.search(name):
                raise ValueError(
                    f"cluster.env {name!r} looks like a secret; pass it through a Kubernetes Secret "
                    "(s3_secret, teacher_secret), never in the run file"
                )
        return env


class MetricsSpec(Section):
    """Prometheus metrics of the stages."""

    pushgateway: str | None = Field(None, description="Pushgateway address (host:port); unset = no push.")


class EGTRunSpec(Section):
    """What to train and how: one section per stage."""

    store: StoreSpec = Field(default_factory=StoreSpec, description="Where artifacts go.")
    model: ModelSpec = Field(description="The base judge model.")
    kind: RunKind = Field(
        "reasoning",
        description="reasoning: the EGT pipeline (prepare, annotate, sft, probe, curate, rl, evaluate; plus "
        "scalar when evaluate.models lists it). scalar: a scalar reward model alone (prepare, scalar, "
        "evaluate), trained on data.sft's pairs.",
    )
    data: DataSpec = Field(description="SFT pool, RL pool and evaluation sets.")
    annotate: AnnotateSpec = Field(default_factory=AnnotateSpec, description="Stage 1: teacher trajectories.")
    sft: SFTSpec = Field(default_factory=SFTSpec, description="Stage 2: supervised fine-tuning.")
    probe: ProbeSpec = Field(default_factory=ProbeSpec, description="Stage 3: entropy probing.")
    curate: CurateSpec = Field(default_factory=CurateSpec, description="Stage 4: entropy-guided curation.")
    rl: RLSpec = Field(
        default_factory=RLSpec, description="Stage 5: StableReinforce with an entropy curriculum."
    )
    scalar: ScalarTrainSpec = Field(
        default_factory=ScalarTrainSpec, description="A scalar reward model (the baselines), Bradley–Terry."
    )
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="Stage 6: evaluation.")
    score: ScoreSpec = Field(
        default_factory=ScoreSpec, description="Best of N on a candidates file with the trained model."
    )
    filter: FilterSpec = Field(
        default_factory=FilterSpec, description="Flag a pool's doubtful pairs with the trained model."
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus metrics.")
    cluster: ClusterSpec = Field(
        default_factory=ClusterSpec, description="Pods, images and Secrets on a cluster."
    )
    suspend: bool = Field(
        False,
        description="On a cluster: start no new stage while true (a running stage finishes); set back "
        "to false to continue. The local runner ignores it.",
    )

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this run runs, in order: a reasoning run's, with the scalar baseline only when
        evaluate.models (or score or filter) uses it; a scalar run's prepare, scalar, evaluate; then
        score and filter when asked for."""
        applied = {"score": self.score.candidates is not None, "filter": self.filter.enabled}
        uses = {
            self.model_applied(use)
            for stage, use in (("score", self.score), ("filter", self.filter))
            if applied[stage]
        }
        trains = (
            SCALAR_STAGES
            if self.kind == "scalar"
            else tuple(
                s
                for s in STAGES[: STAGES.index("evaluate") + 1]
                if s != "scalar" or "scalar" in self.evaluate.models or "scalar" in uses
            )
        )
        return trains + tuple(stage for stage in APPLICATION_STAGES if applied[stage])

    def keyed_endpoints(self) -> dict[str, ChatEndpointSpec]:
        """The OpenAI-compatible endpoints this run calls that need an API key, by field path: the
        teacher when it annotates, the referee when it runs RL."""
        calls = {
            "annotate.teacher": (self.annotate.teacher, "annotate" in self.stages),
            "rl.referee": (self.rl.referee, "rl" in self.stages and self.rl.enabled),
        }
        return {
            where: endpoint
            for where, (endpoint, called) in calls.items()
            if called and endpoint.kind == "openai" and endpoint.api_key_env
        }

    def model_applied(self, use: RewardModelUseSpec) -> TrainedModel:
        """The model score or filter applies: the one named, else the run's final model."""
        if use.model is not None:
            return use.model
        return "scalar" if self.kind == "scalar" else "rl" if self.rl.enabled else "sft"

    @model_validator(mode="after")
    def _applications_use_a_trained_model(self) -> EGTRunSpec:
        for name, use in (("score", self.score), ("filter", self.filter)):
            if self.kind == "scalar" and use.model not in (None, "scalar"):
                raise FieldError(f"{name}.model", "kind 'scalar' trains only the scalar model: use scalar")
            if use.model == "rl" and not self.rl.enabled:
                raise FieldError(f"{name}.model", "rl.enabled is false: there is no RL model; use sft")
        if self.filter.enabled and self.filter.pool == "rl" and self.kind == "scalar":
            raise FieldError("filter.pool", "a kind 'scalar' run has no rl pool: use sft")
        return self

    @model_validator(mode="after")
    def _scalar_runs_evaluate_their_model(self) -> EGTRunSpec:
        if self.kind == "scalar":
            if "models" not in self.evaluate.model_fields_set:
                self.evaluate.models = ["scalar"]
            elif self.evaluate.models != ["scalar"]:
                raise FieldError(
                    "evaluate.models",
                    "kind 'scalar' trains no sft or rl model: must be [scalar] (or left out)",
                )
        return self

    @field_validator("data")
    @classmethod
    def _a_reasoning_run_has_an_rl_pool(cls, data: DataSpec, info: ValidationInfo) -> DataSpec:
        if info.data.get("kind") == "reasoning" and data.synthetic is None and data.rl is None:
            raise ValueError(
                "set data.sft and data.rl, or data.synthetic (only a kind 'scalar' run needs no rl)"
            )
        return data

    @model_validator(mode="after")
    def _no_rl_model_to_evaluate(self) -> EGTRunSpec:
        if not self.rl.enabled and "rl" in self.evaluate.models:
            raise FieldError("evaluate.models", "rl.enabled is false: there is no RL model; set it to [sft]")
        return self

    @model_validator(mode="after")
    def _annotate_needs_a_teacher_for_real_data(self) -> EGTRunSpec:
        annotates = self.kind == "reasoning"
        if annotates and self.annotate.teacher.kind == "scripted" and self.data.synthetic is None:
            raise FieldError(
                "annotate.teacher.kind",
                "'scripted' only reads the synthetic colour images of data.synthetic; for your own data "
                "use 'openai': a hosted model, or any OpenAI-compatible server you run (e.g. vLLM "
                "serving a VLM). `python -m egt.teachers.server` is an offline stand-in, and it too "
                "understands only the synthetic colour data (README: Bring your own data)",
            )
        return self


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Metadata(BaseModel):
    """Kubernetes object metadata; the name names the run."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="Run name: a DNS label; artifacts go to <store>/<name>/.")

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if not _DNS_LABEL.match(name):
            raise ValueError(f"run name {name!r} must be a DNS label: lowercase letters, digits and '-'")
        return name


class EGTRun(Section):
    """An EGT training run: the custom resource and the local run file."""

    apiVersion: Literal["egt.dev/v1alpha1"] = Field(API_VERSION, description="egt.dev/v1alpha1.")
    kind: Literal["EGTRun"] = Field(KIND, description="EGTRun.")
    metadata: Metadata = Field(description="Kubernetes object metadata; name names the run.")
    spec: EGTRunSpec = Field(description="What to train and how.")

    @property
    def name(self) -> str:
        return self.metadata.name


class SpecError(ValueError):
    """A run file that does not validate; the message names every bad field and what it allows."""


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid field(s)"]
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(root)"
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):  # a cross-field rule: name the field to change
            lines.append(f"  {loc}.{cause.field}: {cause}")
            continue
        shown = item["type"] != "missing" and not isinstance(item["input"], dict | list)
        got = f" (got {item['input']!r})" if shown else ""
        lines.append(f"  {loc}: {item['msg']}{got}")
    return "\n".join(lines)


def parse_run(document: Any, source: str = "<run>") -> EGTRun:
    """Validate a run given as a parsed YAML/JSON document."""
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    try:
        return EGTRun.model_validate(document)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, source)) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's document; SpecError naming the file when it is missing or not YAML."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None


def load_run(path: str | Path) -> EGTRun:
    """Read and validate a run file (YAML); relative dataset, candidates and model paths resolve
    against the file's folder, wherever it is run from."""
    return anchor_paths(parse_run(read_yaml(path), str(path)), Path(path).resolve().parent)


def _anchored(value: str | None, folder: Path) -> str | None:
    if value is None or "://" in value or Path(value).is_absolute():
        return value
    return str(folder / value)


def anchor_paths(run: EGTRun, folder: Path) -> EGTRun:
    """The run with its relative input paths made absolute against ``folder`` (the run file's). The
    store's path is left as given: artifacts go where the command runs, as ``runs/`` for the demo."""
    spec = run.spec
    for dataset in spec.data.datasets().values():
        dataset.uri = _anchored(dataset.uri, folder)
        dataset.root = _anchored(dataset.root, folder)
    spec.score.candidates = _anchored(spec.score.candidates, folder)
    spec.model.path = _anchored(spec.model.path, folder)
    return run


def dump_run(run: EGTRun) -> str:
    """The run as YAML with every default filled in (what a stage job reads)."""
    return yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False)
