"""The records a run produces, in one place: the engine writes them, metrics and reports read
them, and nothing here imports either.

* :class:`Job`: one stage of the plan (plain data; it travels to worker processes);
* :class:`StageLog`: what happened to one stage in one run;
* :class:`RunOutcome`: a run's results table and stage logs;
* the results table: :data:`RESULT_COLUMNS` (one row per cell, budget point and metric), how
  rows are made from an attack's curve (:func:`curve_rows`), and :func:`read_results`;
* the two releases every comparison is made against, :data:`NONE` and :data:`SCRATCH`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

NONE, SCRATCH = "none", "scratch"  # the undefended base's release, and a random init's
CAPABILITY_AFTER = "capability_after/"  # metric prefix: capability of an attacked model

RESULT_COLUMNS = ["release", "base", "adversary", "task", "role", "seed", "step", "tokens",
                  "flops", "wall_s", "peak_mem_mb", "metric", "value", "status", "authorized",
                  "trial", "params", "reason", "n_items", "items"]
RESULT_DTYPES = {"base": "Int64", "seed": "Int64", "step": "Int64", "tokens": "Int64",
                 "trial": "Int64", "n_items": "Int64"}


@dataclass(frozen=True)
class Job:
    """One stage of the DAG, as plain data (it travels to worker processes and Ray actors)."""

    kind: str
    label: str
    key: str
    payload: dict[str, Any]
    deps: tuple[str, ...] = ()  # ids of the jobs whose entries this one reads
    args: dict[str, Any] = field(default_factory=dict)  # what the worker needs to find inputs
    cell: dict[str, Any] | None = None  # an attack cell's row ids (release, adversary, ...)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.key}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"id": self.id}


@dataclass
class StageLog:
    """What happened to one stage in one run."""

    kind: str
    label: str
    key: str
    cached: bool
    wall_s: float  # in this run (0 for a stage found in the store)
    computed_wall_s: float | None = None  # when the stored entry was computed
    status: str = "ok"  # ok | failed
    error: str | None = None  # the traceback of a failure
    reason: str | None = None  # a failure in one line: out of memory, time limit, disk full...
    worker: str | None = None  # host:pid that ran it
    started: float | None = None  # epoch seconds, on the worker
    finished: float | None = None
    dispatch_s: float | None = None  # driver's submit-to-result time minus the worker's time
    threads: int | None = None  # torch threads the stage ran with
    wait_policy: dict[str, Any] | None = None  # the worker's OpenMP wait policy and runtime
    nice: int | None = None  # the worker's niceness (a niced worker yields to busy processes)
    # when it was computed (kept in the store): its peak memory (CUDA allocated, or resident on
    # Linux) and the resident memory it started with (the process's own)
    peak_mem_mb: float | None = None
    start_mem_mb: float | None = None


@dataclass
class RunOutcome:
    results: pd.DataFrame
    stages: list[StageLog] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[StageLog]:
        return [s for s in self.stages if s.status == "failed"]


def read_results(path: str | Path) -> pd.DataFrame:
    """A run's ``results.csv`` (or ``.parquet``) with the types the engine gave it (the items'
    outcomes stay strings: ``0110`` is not the number 110). A table written before a column
    existed gets it, empty."""
    import pandas as pd  # here: the CLI imports this module before it needs pandas

    path = Path(path)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={"items": "string", "reason": "string",
                                         "params": "string"}).astype(RESULT_DTYPES)
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    return frame.assign(**dict.fromkeys(missing)) if missing else frame


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=RESULT_COLUMNS).astype(RESULT_DTYPES)


def row(**kw: Any) -> dict[str, Any]:
    base = dict.fromkeys(RESULT_COLUMNS)
    base.update(status="ok", authorized=False)
    base.update(kw)
    return base


def curve_rows(curve: dict[str, Any], ids: dict[str, Any], task: str,
               n_items: int | None = None) -> list[dict[str, Any]]:
    """Tidy rows of one attack curve: a score (on ``n_items`` eval items) and a loss row per
    budget point."""
    status = "diverged" if curve["diverged_at"] is not None else "ok"
    out = []
    for p in curve["points"]:
        common = dict(ids, step=p["step"], tokens=p["tokens"], flops=p["flops"],
                      wall_s=p["wall_s"], peak_mem_mb=p["peak_mem_mb"], status=status)
        out.append(row(**common, metric="score", value=p["scores"].get(task),
                       n_items=n_items, items=p.get("items", {}).get(task)))
        if p["loss"] is not None:
            out.append(row(**common, metric="loss", value=p["loss"]))
    if status == "diverged":
        out.append(row(**ids, step=curve["diverged_at"], metric="diverged_at",
                       value=float(curve["diverged_at"]), status=status))
    last = curve["points"][-1] if curve["points"] else {}
    for e in curve.get("diagnostics", {}).get("effort", []):  # a sweep's attacker-effort curve
        # the grid point a trial tried, as JSON (older entries hold only its full config)
        params = json.dumps(e["point"], sort_keys=True) if "point" in e else None
        for metric, value in (("effort_best", e["best_score"]), ("trial_score", e["score"])):
            out.append(row(**ids, trial=e["trial"], params=params, tokens=e["tokens"],
                           flops=e["flops"], metric=metric, value=value, status=status))
    for cap_task, value in curve.get("diagnostics", {}).get("capability_after", {}).items():
        # the attacked model's capability: a row of the attack cell, the capability task named
        # in the metric
        out.append(row(**ids, step=last.get("step"), tokens=last.get("tokens"),
                       flops=last.get("flops"), metric=f"{CAPABILITY_AFTER}{cap_task}",
                       value=value, status=status))
    for name, value in curve.get("diagnostics", {}).items():
        if isinstance(value, int | float):
            out.append(row(**ids, step=last.get("step"), tokens=last.get("tokens"),
                           flops=last.get("flops"), metric=name, value=float(value),
                           status=status))
    return out

