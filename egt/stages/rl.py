"""Stage 5, rl: StableReinforce over the curated set in ascending entropy (method.md stage 5).

The driver runs wherever the stage runs (the local process, or the RayJob's submitter on a
cluster) and connects to Ray: ``ray.init(address="auto")`` inside a Ray cluster (RAY_ADDRESS set),
a fresh local instance otherwise. Every epoch walks the curated records in the order curate wrote
them (ascending entropy, no shuffle), so the curriculum position is just the step number; a
checkpoint stores it and a resumed run continues with the same batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

from egt.engines.hf import JudgeInput
from egt.engines.rl import Learner, RolloutWorker, advantages, pad, score_rollouts
from egt.referee import ChatReferee, Referee, RulesReferee
from egt.spec import EGTRunSpec, RefereeSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader, model_dir
from egt.stages.progress import bar
from egt.stages.sft import judge_input
from egt.storage.records import read_records

log = logging.getLogger(__name__)


def fingerprint(spec: EGTRunSpec) -> dict:
    rl = spec.rl.model_dump(mode="json", exclude={"rollout_workers"})
    return {"rl": rl, "dtype": spec.model.dtype}


def make_referee(spec: RefereeSpec) -> Referee:
    if spec.kind == "rules":
        return RulesReferee()
    from egt.teachers.openai_compat import ChatClient

    client = ChatClient(
        base_url=spec.base_url,
        model=spec.model,
        api_key_env=spec.api_key_env,
        max_tokens=8,
        timeout_s=spec.timeout_seconds,
        max_concurrency=spec.max_concurrency,
    )
    return ChatReferee(client)


def batch_for_step(records: Sequence[dict], step: int, batch_size: int) -> list[dict]:
    """The curriculum: step s takes the s-th slice of the ascending-entropy order, wrapping per epoch."""
    per_epoch = math.ceil(len(records) / batch_size)
    index = step % per_epoch
    return list(records[index * batch_size : (index + 1) * batch_size])


def connect_ray(num_cpus: int | None = None):
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address="auto", log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return ray


def split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def unsplit(chunks: list[list], total: int) -> list:
    out = [None] * total
    for part, chunk in enumerate(chunks):
        out[part :: len(chunks)] = chunk
    return out


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.rl
    curated = read_records(ctx.store, ctx.upstream_output("curate", "curated"))
    per_epoch = math.ceil(len(curated) / spec.global_batch_size)
    total_steps = spec.epochs * per_epoch
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    ray = connect_ray()
    policy_dir = str(model_dir(ctx, "sft"))
    model, device = ctx.spec.model, ctx.spec.model.device
    gpu = {"num_gpus": 1} if device in ("cuda", "auto") and _cuda() else {}
    learner = (
        ray.remote(Learner)
        .options(num_cpus=1, **gpu)
        .remote(policy_dir, spec.model_dump(mode="json"), model.dtype, device)
    )
    workers = [
        ray.remote(RolloutWorker).options(num_cpus=1, **gpu).remote(policy_dir, model.dtype, device)
        for _ in range(spec.rollout_workers)
    ]
    referee = make_referee(spec.referee)
    images = ImageLoader(ctx.spec.store.endpoint_url)
    checkpoints = ctx.key("checkpoints")
    store_root, endpoint = ctx.store.uri_for(""), ctx.spec.store.endpoint_url
    resumed = ray.get(learner.resume.remote(store_root, endpoint, checkpoints))
    history: list[dict] = resumed["history"] if resumed else []
    start = resumed["step"] if resumed else 0
    if resumed:
        log.info("rl: resuming after step %d", start)
        weights = learner.weights.remote()
        ray.get([w.set_weights.remote(weights) for w in workers])
    with bar(total_steps, "rl", ctx.progress, unit="step") as progress:
        progress.update(start)
        for step in range(start, total_steps):
            batch = batch_for_step(curated, step, spec.global_batch_size)
            record = rl_step(ray, learner, workers, referee, batch, images, spec, step)
            history.append(record)
            for name, value in record.items():
                if isinstance(value, int | float) and name != "step":
                    ctx.metrics.set(f"rl_{name}", value, f"RL {name} of the last step")
            ctx.metrics.set("rl_step", step + 1, "RL updates done")
            ctx.metrics.push()
            progress.update(1)
            progress.set_postfix(reward=f"{record['reward_mean']:.3f}", acc=f"{record['accuracy']:.2f}")
            if (step + 1) % spec.checkpoint_every_steps == 0 and step + 1 < total_steps:
                ray.get(
                    learner.save_checkpoint.remote(
                        store_root, endpoint, checkpoints, step + 1, {"history": history}
                    )
                )
    final = ctx.workdir / "model"
    ray.get(learner.save_model.remote(str(final)))
    ctx.store.upload_dir(final, ctx.key("model"))
    ctx.store.write_text(ctx.key("history.json"), json.dumps(history))
    for actor in [learner, *workers]:
        ray.kill(actor)
    last = history[-1] if history else {}
    return StageResult(
        outputs={"model": "model", "history": "history.json"},
        counts={"steps": len(history), "curated": len(curated)},
        metrics={
            "final_reward_mean": last.get("reward_mean"),
            "final_accuracy": last.get("accuracy"),
            "first_reward_mean": history[0]["reward_mean"] if history else None,
        },
    )


def rl_step(
    ray, learner, workers, referee: Referee, batch: list[dict], images: ImageLoader, spec, step: int
) -> dict:
    """One StableReinforce update on one curriculum batch (see egt.engines.rl); returns its log line."""
    prompts = [r for r in batch for _ in range(spec.rollouts_per_prompt)]
    items: list[JudgeInput] = [judge_input(r, images) for r in prompts]
    chunks = split(items, len(workers))
    futures = [
        w.generate.remote(
            chunk, spec.max_new_tokens, spec.temperature, spec.seed * 1_000_003 + step * 97 + part
        )
        for part, (w, chunk) in enumerate(zip(workers, chunks, strict=True))
        if chunk
    ]
    generations = unsplit(ray.get(futures), len(items))
    texts = [g.text for g in generations]
    completions = [g.token_ids for g in generations]
    scored = score_rollouts(texts, [r["label"] for r in prompts], referee.judge_many(texts), spec)
    old, ref = ray.get(learner.logprobs.remote(items, completions))
    width = max(len(c) for c in completions)
    adv, _, adv_stats = advantages(
        [s.reward for s in scored],
        [len(c) for c in completions],
        spec,
        pad(old, width),
        pad(ref, width) if ref is not None else None,
    )
    stats = ray.get(learner.update.remote(items, completions, adv, old))
    weights = learner.weights.remote()
    ray.get([w.set_weights.remote(weights) for w in workers])
    n = len(scored)
    return {
        "step": step + 1,
        "reward_mean": sum(s.reward for s in scored) / n,
        "accuracy": sum(s.accuracy for s in scored) / n,
        "logic_mean": sum(s.logic for s in scored) / n,
        "format_ratio": sum(s.well_formed for s in scored) / n,
        "response_tokens_mean": sum(len(c) for c in completions) / n,
        **adv_stats,
        **stats,
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
