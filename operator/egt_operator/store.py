"""What the artifact store says about a stage: are its outputs current for this spec and inputs?

The operator asks before creating a stage's child (a current stage is Skipped, as ``egt run
--local`` skips it) and after a child succeeds (its artifact URIs and summary metrics go into the
run's status). It reads the same manifests with the same rules as the stage jobs
(egt.stages.base), with the credentials of the operator's own environment.
"""

from __future__ import annotations

import logging
import math

from egt.spec import EGTRun
from egt.stages.base import MissingUpstreamError, done_with_identity, stage_identity, unit_name
from egt.stages.pipeline import get_stage
from egt.storage.manifest import digest_bytes, identity_key, is_up_to_date, read_manifest
from egt.storage.store import open_store
from egt_operator.children import Run
from egt_operator.reconcile import StoreVerdict

log = logging.getLogger(__name__)


def store_verdict(run: Run, stage: str) -> StoreVerdict | None:
    """The stage's artifacts and metrics when its outputs are current; None when not (or unknown).

    A fanned-out stage counts as current when its merged manifest is, or every part's is (the
    next stage's job merges them). A store the operator cannot read gives None: the stage's job
    then decides for itself, and skips if its outputs are current.
    """
    try:
        return _verdict(run, stage)
    except MissingUpstreamError:
        return None
    except Exception as error:  # an unreachable store must not stop the run
        log.warning(
            "store of run %s not readable (%s); %s will run and decide itself", run.name, error, stage
        )
        return None


def stage_identity_of(run: Run, stage: str) -> str | None:
    """A token equal for two runs exactly when their stage would produce the same outputs in the same
    store (config, inputs, store URI); None while an upstream stage has no manifest or the store is
    unreadable. Children carry it, so a run can wait for another run computing the same stage."""
    try:
        store = open_store(run.spec.store.uri, run.spec.store.endpoint_url)
        chash, inputs = stage_identity(get_stage(stage), _egt_run(run), store)
    except MissingUpstreamError:
        return None
    except Exception as error:  # an unreachable store must not stop the run
        log.warning("store of run %s not readable (%s)", run.name, error)
        return None
    return digest_bytes(f"{store.uri}\n{identity_key(stage, chash, inputs)}".encode())[7:47]


def _egt_run(run: Run) -> EGTRun:
    return EGTRun(metadata={"name": run.name}, spec=run.spec)


def _verdict(run: Run, stage: str) -> StoreVerdict | None:
    store = open_store(run.spec.store.uri, run.spec.store.endpoint_url)
    definition = get_stage(stage)
    chash, inputs = stage_identity(definition, _egt_run(run), store)
    count = definition.part_count(run.spec)
    units = [stage] if count == 1 else [unit_name(stage, (i, count)) for i in range(count)]
    # Current here, or finished by another run with the same identity (then its manifest is copied
    # here and its outputs referenced: the operator writes that one small file).
    if done_with_identity(store, run.name, stage, chash, inputs) is not None:
        units = [stage]
    elif not all(is_up_to_date(store, run.name, unit, chash, inputs) for unit in units):
        return None
    artifacts: dict[str, str] = {}
    metrics: dict[str, float | None] = {}
    for unit in units:
        manifest = read_manifest(store, run.name, unit)
        where = unit if len(units) == 1 else unit.split("/")[-1]
        for name in manifest.outputs:
            artifacts[name if len(units) == 1 else f"{where}/{name}"] = store.uri_for(
                manifest.output_key(run.name, name)
            )
        if len(units) == 1:
            metrics = {
                name: float(value) if isinstance(value, int | float) and math.isfinite(value) else None
                for name, value in manifest.metrics.items()
                if value is None or isinstance(value, int | float)
            }
    return StoreVerdict(artifacts, metrics)
