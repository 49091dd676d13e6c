"""The sweep file: a base run, named arms that override it, and the tables to render.

```yaml
apiVersion: egt.dev/v1alpha1
kind: EGTSweep
metadata: {name: ablations}
spec:
  base: egtrun.yaml                 # a run file, relative to the sweep file (or an inline run)
  arms:
    - {name: sft, set: {rl: {enabled: false}, evaluate: {models: [sft]}}}
    - {name: entropy}               # the base itself
    - {name: random, set: {curate: {strategy: random}}}
  tables:
    - {name: table3, title: Selection strategies, published: table3,
       rows: {Random: random, Entropy: entropy}}
    - {name: scale, kind: curve, title: Data scale, points: {0: sft, 100: entropy}}
```

Each arm is a full EGTRun named ``<sweep>-<arm>``: the base spec with the sweep's ``set`` and then the
arm's ``set`` merged in (mappings merge key by key, anything else is replaced), validated like any run
file, and labelled ``egt.dev/sweep`` and ``egt.dev/arm``. Arms whose stages
have the same identity share them through the store (egt.storage.manifest.reuse): SFT and probing run
once for the whole sweep.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from egt.spec import (
    API_VERSION,
    EGTRun,
    Metadata,
    Section,
    SpecError,
    format_validation_error,
    parse_run,
    read_yaml,
)

SWEEP_KIND = "EGTSweep"
SWEEP_LABEL = "egt.dev/sweep"
ARM_LABEL = "egt.dev/arm"
_ARM_NAME = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"


class Arm(Section):
    """One arm: a name and the spec fields it changes."""

    name: str = Field(pattern=_ARM_NAME, description="DNS-label suffix; the arm's run is <sweep>-<name>.")
    set: dict[str, Any] = Field(
        default_factory=dict, description="Spec fields this arm changes, as a partial spec mapping."
    )


class Table(Section):
    """A table (rows = arms) or a curve (x = a number, y = an arm's accuracy) in the sweep report."""

    name: str = Field(description="File-safe name of the table.")
    title: str = Field(description="Heading in the report.")
    kind: Literal["table", "curve"] = Field("table", description="table: rows of arms; curve: points.")
    rows: dict[str, str] = Field(default_factory=dict, description="Row label → arm name (tables).")
    points: dict[float, str] = Field(default_factory=dict, description="x value → arm name (curves).")
    x_label: str = Field("share of the pool (%)", description="Axis label of a curve's x.")
    published: str | None = Field(
        None,
        description="The EGT paper's table to show beside the run's (table2 … table5), when "
        "the sweep evaluates VL-RewardBench.",
    )

    @model_validator(mode="after")
    def _has_arms(self) -> Table:
        if self.kind == "table" and not self.rows:
            raise ValueError(f"table {self.name!r} lists no rows")
        if self.kind == "curve" and not self.points:
            raise ValueError(f"curve {self.name!r} lists no points")
        return self


class SweepSpec(Section):
    base: str | dict[str, Any] = Field(
        description="The base run: a run file path (relative to the sweep file) or an inline EGTRun."
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Spec fields every arm changes, applied to the base before each arm's own.",
    )
    arms: list[Arm] = Field(min_length=1, description="The arms, each run as its own EGTRun.")
    evaluate_set: str | None = Field(
        None,
        description="Evaluation set the tables read: default vl-rewardbench when the runs evaluate it, "
        "else the runs' only (or first) set.",
    )
    tables: list[Table] = Field(default_factory=list, description="Tables and curves of the report.")

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: list[Arm]) -> list[Arm]:
        names = [arm.name for arm in arms]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"arm names must be unique; repeated: {', '.join(duplicated)}")
        return arms

    @model_validator(mode="after")
    def _tables_name_arms(self) -> SweepSpec:
        names = {arm.name for arm in self.arms}
        for table in self.tables:
            unknown = sorted({*table.rows.values(), *table.points.values()} - names)
            if unknown:
                raise ValueError(
                    f"table {table.name!r} names arms that are not in arms: {', '.join(unknown)}"
                )
        return self


class EGTSweep(Section):
    apiVersion: Literal["egt.dev/v1alpha1"] = Field(API_VERSION, description="egt.dev/v1alpha1.")
    kind: Literal["EGTSweep"] = Field(SWEEP_KIND, description="EGTSweep.")
    metadata: Metadata = Field(description="name names the sweep; arms run as <name>-<arm>.")
    spec: SweepSpec

    @property
    def name(self) -> str:
        return self.metadata.name


def merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def load_sweep(path: str | Path) -> tuple[EGTSweep, dict[str, EGTRun]]:
    """The sweep and one validated run per arm (in arm order), named ``<sweep>-<arm>``."""
    path = Path(path)
    try:
        sweep = EGTSweep.model_validate(read_yaml(path))
    except ValidationError as error:
        raise SpecError(format_validation_error(error, str(path))) from None
    base = sweep.spec.base
    if isinstance(base, str):
        try:
            base = read_yaml(path.parent / base)
        except SpecError as error:
            raise SpecError(f"{path}: spec.base: {error}") from None
    runs = {}
    for arm in sweep.spec.arms:
        metadata = {
            "name": f"{sweep.name}-{arm.name}",
            "labels": {SWEEP_LABEL: sweep.name, ARM_LABEL: arm.name},
        }
        document = merge(merge(base, {"spec": sweep.spec.set}), {"metadata": metadata, "spec": arm.set})
        runs[arm.name] = parse_run(document, f"{path}: arm {arm.name!r}")
    return sweep, runs
