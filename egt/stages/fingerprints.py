"""What determines each stage's output besides its upstream manifests: the spec sections it reads.

Equal fingerprints (and equal upstream manifests) mean equal outputs, so a stage whose manifest
carries the same is skipped (egt.stages.base). Kept apart from the stage modules so the operator can
decide what to skip without importing the engines (torch, transformers) those need.
"""

from __future__ import annotations

from typing import Any

from egt.spec import EGTRunSpec
from egt.stages.prepare import dataset_digest, external_digest, model_digest

# Settings that change speed, not results, stay out of the fingerprint.
_SPEED_ONLY = {
    "num_shards": True,
    "replicas_per_node": True,
    "shard_size": True,
    "batch_size": True,
    "vllm": {
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "max_num_seqs",
        "enforce_eager",
        "enable_prefix_caching",
    },
}


def prepare(spec: EGTRunSpec) -> dict[str, Any]:
    endpoint = spec.store.endpoint_url
    external: dict[str, str] = {}
    if spec.model.path is not None:
        external["model"] = model_digest(spec.model.path, endpoint)
    if spec.data.synthetic is None:
        external.update({name: dataset_digest(d, endpoint) for name, d in spec.data.datasets().items()})
    return {**prepare_settings(spec), "external": external}


def prepare_settings(spec: EGTRunSpec) -> dict[str, Any]:
    return {"model": spec.model.model_dump(mode="json"), "data": spec.data.model_dump(mode="json")}


def annotate(spec: EGTRunSpec) -> dict:
    return spec.annotate.model_dump(mode="json")


def sft(spec: EGTRunSpec) -> dict:
    # The number of processes is not part of it: 1 or N processes train the same model.
    return {"sft": spec.sft.model_dump(mode="json"), "dtype": spec.model.dtype}


def probe(spec: EGTRunSpec) -> dict:
    probe = spec.probe.model_dump(mode="json", exclude=_SPEED_ONLY)
    if spec.probe.correctness_samples == 1:  # nothing is sampled: the temperature changes nothing
        probe.pop("correctness_temperature")
    return {"probe": probe, "dtype": spec.model.dtype}


def curate(spec: EGTRunSpec) -> dict:
    return spec.curate.model_dump(mode="json")


def rl(spec: EGTRunSpec) -> dict:
    rl = spec.rl.model_dump(mode="json", exclude={"rollout_workers"})
    return {"rl": rl, "dtype": spec.model.dtype}


def scalar(spec: EGTRunSpec) -> dict:
    # As for sft, the number of processes is not part of it.
    return {"scalar": spec.scalar.model_dump(mode="json"), "dtype": spec.model.dtype}


def evaluate(spec: EGTRunSpec) -> dict:
    return spec.evaluate.model_dump(mode="json")


def score_settings(spec: EGTRunSpec) -> dict:
    return {"score": spec.score.model_dump(mode="json", exclude=_SPEED_ONLY), "dtype": spec.model.dtype}


def score(spec: EGTRunSpec) -> dict:
    candidates = external_digest(spec.score.candidates, spec.store.endpoint_url)
    return {**score_settings(spec), "candidates_digest": candidates}


def filter(spec: EGTRunSpec) -> dict:
    return {"filter": spec.filter.model_dump(mode="json", exclude=_SPEED_ONLY), "dtype": spec.model.dtype}


_SETTINGS = {
    "prepare": prepare_settings,
    "annotate": annotate,
    "sft": sft,
    "probe": probe,
    "curate": curate,
    "rl": rl,
    "scalar": scalar,
    "evaluate": evaluate,
    "score": score_settings,
    "filter": filter,
}


def settings(stage: str, spec: EGTRunSpec) -> dict[str, Any]:
    """The spec settings a stage's outputs depend on: its fingerprint without the digests of
    external data (which need the store). A running stage is interrupted only when these change."""
    return _SETTINGS[stage](spec)
