"""Progress for long stage loops (stderr bars; silent when a stage runs with progress off)."""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from egt.stages.base import StageContext
from egt.storage.shards import process_in_shards


def bar(total: int | None, desc: str, enabled: bool = True, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False)


def sharded(
    ctx: StageContext,
    records: list[dict],
    shard_size: int,
    process: Callable[[list[dict]], list[dict]],
    unit: str,
    unfinished: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """Process records in resumable shards under ``<run>/<stage>/shards/``, with a progress bar;
    ``unfinished`` records of finished shards are processed again (egt.storage.shards)."""
    with bar(len(records), ctx.stage, ctx.progress, unit=unit) as progress:
        return process_in_shards(
            ctx.store, ctx.key("shards"), records, shard_size, process, progress.update, unfinished
        )
