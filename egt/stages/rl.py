"""Stage 5, rl: StableReinforce over the curated set in ascending entropy (method.md stage 5).

The driver runs wherever the stage runs (the local process, or the RayJob's submitter on a
cluster) and connects to Ray: ``ray.init(address="auto")`` inside a Ray cluster (RAY_ADDRESS set),
a fresh local instance otherwise. Every epoch walks the curated records in the order ``rl.order``
gives (ascending entropy by default; egt.algorithms.curriculum), determined by the step number
alone, so a checkpoint stores the step and a resumed run continues with the same batches.
With ``rl.enabled: false`` the stage only records that RL was off (the SFT model is the result).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

from egt.algorithms.curation import METRIC_COLUMNS
from egt.algorithms.curriculum import batch_for_step
from egt.engines.deepspeed_engine import require_images
from egt.engines.hf import JudgeInput
from egt.engines.rl import Learner, RolloutWorker, advantages, pad, score_rollouts
from egt.referee import ChatReferee, Referee, RulesReferee
from egt.spec import RefereeSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.data import ImageLoader
from egt.stages.progress import bar
from egt.stages.sft import judge_input
from egt.storage.records import read_records

log = logging.getLogger(__name__)
ACTOR_START_TIMEOUT = 600  # seconds; loading a 7B checkpoint from network storage can take minutes


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


def connect_ray(actors: int):
    """Join the Ray cluster of a RayJob (RAY_ADDRESS set), else start a local one.

    Locally every actor is given one logical CPU even on a 2-core machine: rollout and learning
    alternate, so they never compete for the cores they share.
    """
    import ray

    if os.environ.get("RAY_ADDRESS"):
        if not ray.is_initialized():
            ray.init(address="auto", log_to_driver=False)
        return ray
    environment = _store_environment()
    if ray.is_initialized() and (
        ray.cluster_resources().get("CPU", 0) < actors or environment != _local_ray_environment
    ):
        ray.shutdown()  # a local instance from an earlier run in this process, too small or stale
    if not ray.is_initialized():
        ray.init(num_cpus=max(os.cpu_count() or 1, actors), include_dashboard=False, log_to_driver=False)
        _local_ray_environment.clear()
        _local_ray_environment.update(environment)
    return ray


# Local Ray workers inherit the environment of the process that started Ray: the store credentials
# the actors need (they read the model from the store) are those of that moment.
_local_ray_environment: dict[str, str] = {}


def _store_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


def split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def unsplit(chunks: list[list], total: int) -> list:
    out = [None] * total
    for part, chunk in enumerate(chunks):
        out[part :: len(chunks)] = chunk
    return out


class RLDriver:
    """The Ray side of the rl stage: N learner ranks, M rollout workers, checkpoints in the store."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.spec = ctx, ctx.spec.rl
        spec, model = self.spec, ctx.spec.model
        self.ray = connect_ray(actors=spec.learner_workers + spec.rollout_workers)
        # The actors fetch the model themselves: on a cluster they run on other nodes than this driver.
        self.policy = ctx.store.uri_for(ctx.upstream_output("sft", "model"))
        self.endpoint = ctx.spec.store.endpoint_url
        gpu = actor_gpus(model.device, self.ray.cluster_resources().get("GPU", 0))
        self.learners = [
            self.ray.remote(Learner)
            .options(num_cpus=1, **gpu)
            .remote(self.policy, spec.model_dump(mode="json"), model.dtype, model.device, None, self.endpoint)
            for _ in range(spec.learner_workers)
        ]
        self.workers = [self._rollout_worker(gpu) for _ in range(spec.rollout_workers)]
        try:
            self.ray.get(
                [a.ready.remote() for a in [*self.learners, *self.workers]], timeout=ACTOR_START_TIMEOUT
            )
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"rl: {len(self.learners)} learners and {len(self.workers)} rollout workers did not start "
                f"within {ACTOR_START_TIMEOUT}s; the Ray cluster lacks the CPUs/GPUs they ask for "
                f"({self.ray.available_resources()} available)"
            ) from None
        address = self.ray.get(self.learners[0].rendezvous.remote()) if len(self.learners) > 1 else None
        self.on_learners("join", *[(rank, len(self.learners), address) for rank in range(len(self.learners))])
        self.referee = make_referee(spec.referee)
        self.images = ImageLoader(ctx.spec.store.endpoint_url)
        self.checkpoints = ctx.key("checkpoints")
        self.store_root = ctx.store.uri_for("")

    def _rollout_worker(self, gpu: dict):
        model = self.ctx.spec.model
        if self.spec.rollout_engine == "vllm":
            from egt.engines.vllm_rollout import VLLMRolloutWorker

            options = self.spec.vllm.model_dump(mode="json")
            actor = self.ray.remote(VLLMRolloutWorker).options(num_cpus=1, **gpu)
            return actor.remote(self.policy, model.dtype, model.device, options, None, self.endpoint)
        actor = self.ray.remote(RolloutWorker).options(num_cpus=1, **gpu)
        return actor.remote(self.policy, model.dtype, model.device, None, self.endpoint)

    def on_learners(self, method: str, *per_rank_args: tuple, args: tuple = ()) -> list:
        """Call ``method`` on every learner rank at once (their collectives must line up); results by rank.

        ``per_rank_args`` gives each rank its own arguments; otherwise all get ``args``.
        """
        calls = per_rank_args or [args] * len(self.learners)
        return self.ray.get(
            [getattr(learner, method).remote(*a) for learner, a in zip(self.learners, calls, strict=True)]
        )

    def resume(self) -> tuple[int, list[dict]]:
        """(steps done, their history) from the newest checkpoint; rollout workers get its weights."""
        resumed = self.on_learners("resume", args=(self.store_root, self.endpoint, self.checkpoints))[0]
        if not resumed:
            return 0, []
        log.info("rl: resuming after step %d", resumed["step"])
        self.sync()
        return resumed["step"], resumed["history"]

    def sync(self) -> None:
        """Learner weights to every rollout worker: rank 0's state dict is one object in the Ray store,
        fetched by each worker (the other ranks take part in ZeRO-3's gather and return None)."""
        weights = [learner.weights.remote() for learner in self.learners]
        self.ray.get([w.set_weights.remote(weights[0]) for w in self.workers] + weights[1:])

    def logprobs(self, items: list[JudgeInput], completions: list[list[int]]):
        """log π_old and log π_ref (or None) of every completion, joined from the ranks' shares."""
        joined: dict[int, tuple] = {}
        for share in self.on_learners("logprobs", args=(items, completions)):
            joined.update(share)
        old = [joined[i][0] for i in range(len(items))]
        ref = [joined[i][1] for i in range(len(items))]
        return old, (ref if ref and ref[0] is not None else None)

    def step(self, batch: list[dict], step: int) -> dict:
        return rl_step(self, batch, step)

    def checkpoint(self, step: int, history: list[dict]) -> None:
        self.on_learners(
            "save_checkpoint",
            args=(self.store_root, self.endpoint, self.checkpoints, step, {"history": history}),
        )

    def save_model(self, key: str) -> None:
        self.on_learners("save_model", args=(self.store_root, self.endpoint, key))

    def close(self) -> None:
        for actor in [*self.learners, *self.workers]:
            self.ray.kill(actor)


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.rl
    curated = read_records(ctx.store, ctx.upstream_output("curate", "curated"))
    if not spec.enabled:
        log.info("rl: rl.enabled is false; no RL (the SFT model is this run's result)")
        return StageResult(counts={"steps": 0, "curated": len(curated)}, metrics={"enabled": False})
    column = METRIC_COLUMNS[ctx.spec.curate.metric]
    require_images([len(r["images"]) for r in curated], spec.learner_workers, "rl")
    total_steps = spec.epochs * math.ceil(len(curated) / spec.global_batch_size)
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    driver = RLDriver(ctx)
    try:
        start, history = driver.resume()
        with bar(total_steps, "rl", ctx.progress, unit="step") as progress:
            progress.update(start)
            for step in range(start, total_steps):
                batch = batch_for_step(curated, step, spec.global_batch_size, spec.order, column, spec.seed)
                record = driver.step(batch, step)
                history.append(record)
                for name, value in record.items():
                    if isinstance(value, int | float) and name != "step":
                        ctx.metrics.set(f"rl_{name}", value, f"RL {name} of the last step")
                ctx.metrics.push()
                progress.update(1)
                progress.set_postfix(reward=f"{record['reward_mean']:.3f}", acc=f"{record['accuracy']:.2f}")
                if (step + 1) % spec.checkpoint_every_steps == 0 and step + 1 < total_steps:
                    driver.checkpoint(step + 1, history)
        # The learners write the model with their own store: replace the earlier one through the
        # stage's (egt.storage.replacing) so the earlier result is dropped whole, first.
        ctx.store.delete_prefix(ctx.key("model"))
        driver.save_model(ctx.key("model"))
    finally:
        driver.close()
    ctx.store.write_text(ctx.key("history.json"), json.dumps(history))
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


def rl_step(driver: RLDriver, batch: list[dict], step: int) -> dict:
    """One StableReinforce update on one curriculum batch (see egt.engines.rl); returns its log line.

    The log line includes the wall time of each phase (rollout, referee, reference = π_old/π_ref
    log-probabilities, learning, sync), which is where a step's time goes.
    """
    ray, spec, workers = driver.ray, driver.spec, driver.workers
    prompts = [r for r in batch for _ in range(spec.rollouts_per_prompt)]
    items: list[JudgeInput] = [judge_input(r, driver.images) for r in prompts]
    timer = PhaseTimer()
    chunks = split(items, min(len(workers), len(items)))
    futures = [
        w.generate.remote(
            chunk, spec.max_new_tokens, spec.temperature, spec.seed * 1_000_003 + step * 97 + part
        )
        for part, (w, chunk) in enumerate(zip(workers, chunks, strict=False))
    ]
    generations = unsplit(ray.get(futures), len(items))
    timer.lap("rollout")
    texts = [g.text for g in generations]
    completions = [g.token_ids for g in generations]
    scored = score_rollouts(texts, [r["label"] for r in prompts], driver.referee.judge_many(texts), spec)
    timer.lap("referee")
    old, ref = driver.logprobs(items, completions)
    timer.lap("reference")
    width = max(len(c) for c in completions)
    adv, _, adv_stats = advantages(
        [s.reward for s in scored],
        [len(c) for c in completions],
        spec,
        pad(old, width),
        pad(ref, width) if ref is not None else None,
    )
    stats = driver.on_learners("update", args=(items, completions, adv, old))[0]
    timer.lap("learning")
    driver.sync()
    timer.lap("sync")
    n = len(scored)
    tokens = sum(len(c) for c in completions)
    return {
        "step": step + 1,
        "reward_mean": sum(s.reward for s in scored) / n,
        "accuracy": sum(s.accuracy for s in scored) / n,
        "logic_mean": sum(s.logic for s in scored) / n,
        "format_ratio": sum(s.well_formed for s in scored) / n,
        "response_tokens_mean": tokens / n,
        **adv_stats,
        **stats,
        **{f"{phase}_seconds": seconds for phase, seconds in timer.laps.items()},
        "rollout_tokens_per_second": tokens / max(timer.laps["rollout"], 1e-9),
    }


class PhaseTimer:
    """Wall time of consecutive phases: ``lap(name)`` closes the phase that started at the last lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def actor_gpus(device: str, cluster_gpus: float) -> dict:
    """Ray options giving each actor one GPU when the model runs on CUDA.

    Decided from the Ray cluster's resources, not this process's torch: inside a RayJob the driver
    runs on the head pod, which has no GPU, while the worker pods do.
    """
    if device == "cpu" or (device == "auto" and cluster_gpus < 1):
        return {}
    if cluster_gpus < 1:
        raise RuntimeError(
            "rl: model.device is cuda but the Ray cluster has no GPU; give the rl stage's worker "
            "group GPUs (cluster.resources.rl.gpus_per_node) or set model.device to cpu"
        )
    return {"num_gpus": 1}
