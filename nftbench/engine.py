"""The matrix engine: plan the stage DAG, run it on an executor, collect the results.

::

    tokenizer ─► pretrain (base) ─► defend (per defense) ─► release ─┬─► attack ─► curve
               └► scratch (per seed) ───────────────────────────────┘
    release ─► utility (capability tasks)

Every stage's output is one entry of the content-addressed store (:mod:`nftbench.store`), keyed
by its kind, resolved config, input keys, data fingerprints and plugin version (see
:mod:`nftbench.plan`), so a rerun skips finished work and a changed config never reuses a stale
result. A defense with authorized tuning (PMP) also gets owner cells: the owner runs each plain
fine-tuning recipe restricted by its private artifacts, in rows marked ``authorized``.

An exception in one stage is recorded with its traceback (in the manifest and in
``RUN_DIR/failures.json``) and the matrix goes on; stages that need its output are failed with
that reason. A later run does not repeat a recorded failure unless asked to
(``retry_failed``). A diverged attack is a result, stored like any other.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from nftbench.config import Matrix
from nftbench.evaluation import include_fingerprint, write_lm_eval_tasks
from nftbench.executors import (
    Executor,
    PoolExecutor,
    RayExecutor,
    SequentialExecutor,
    schedule,
)
from nftbench.manifest import build_manifest
from nftbench.plan import build_plan
from nftbench.records import SCRATCH, Job, RunOutcome, StageLog, curve_rows, results_frame, row
from nftbench.run_folder import RunFolder
from nftbench.store import Store
from nftbench.worker import StageWorker, WorkerSpec, read_json

log = logging.getLogger("nftbench")
STATUS_FAILED = 3  # exit code when some cells failed


class Runner:
    """Executes one matrix over one store.

    ``executor``: "sequential" (default; "pool" when ``workers`` > 1) or "ray". ``workers``:
    processes or Ray actors. ``address``: an existing Ray cluster. ``retry_failed``: rerun
    the stages whose failure an earlier run recorded (otherwise they stay failed).
    """

    def __init__(self, matrix: Matrix, progress: bool = True, executor: str | None = None,
                 workers: int | None = None, address: str | None = None,
                 retry_failed: bool = False, plugin_dirs: Sequence[str] = ()) -> None:
        self.matrix = matrix
        self.cfg = matrix.config
        self.run_dir = self.cfg.run_dir
        self.folder = RunFolder(self.run_dir)
        self.store = Store(self.cfg.store_path)
        self.progress = progress
        self.executor_name = executor or ("pool" if (workers or 1) > 1 else "sequential")
        self.workers = workers
        self.address = address
        self.retry_failed = retry_failed
        self.plugin_dirs = tuple(str(p) for p in plugin_dirs)
        self.data = matrix.resolved_data()  # read once, here or by resolve()
        self.world = self.data.world
        self.include_fp = include_fingerprint(self.cfg.eval.include_path)
        self.task_fp = self.data.fingerprints(matrix.tasks, self.include_fp)
        self.defense_fp = self.data.fingerprints(matrix.tasks, self.include_fp, "defense")
        self.plan = build_plan(matrix, self.world, self.task_fp, self.defense_fp)
        self.stages: list[StageLog] = []

    # -- executors ---------------------------------------------------------------------------

    def _executor(self) -> Executor:
        cores = os.cpu_count() or 1
        # absolute paths: a Ray worker does not start in this process's working directory
        config = self.cfg.model_dump(mode="json") | {
            "output_dir": str(self.run_dir.resolve()),
            "store_dir": str(self.store.root.resolve())}
        config["eval"]["include_path"] = [str(Path(p).expanduser().resolve())
                                          for p in self.cfg.eval.include_path]
        plugin_dirs = tuple(str(Path(d).resolve()) for d in self.plugin_dirs)
        threads = self.cfg.threads
        spec = WorkerSpec(config, plugin_dirs, progress=False, threads=threads,
                          examples=self.data.examples)
        if self.executor_name == "sequential":
            return SequentialExecutor(StageWorker(replace(spec, progress=self.progress),
                                                  replace(self.matrix, data=self.data)))
        if self.executor_name == "pool":
            workers = self.workers or max(1, cores // threads)
            if workers * threads > cores:
                log.warning("%d workers x %d threads on %d cores: the workers will wait on "
                            "each other", workers, threads, cores)
            return PoolExecutor(spec, workers)
        if self.executor_name == "ray":
            return RayExecutor(spec, self.workers, self.address)
        raise ValueError(f"unknown executor {self.executor_name!r}")

    # -- the matrix ------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        start = time.perf_counter()
        m, cfg = self.matrix, self.cfg
        self.folder.create()
        if cfg.model.trust_remote_code:
            log.warning("trust_remote_code is on: the Python code shipped with %s will run "
                        "in this process (recorded in the manifest)", cfg.model.name_or_path)
        write_lm_eval_tasks({t.label: t.plugin for t in m.tasks}, self.data.eval_examples(),
                            self.folder.lm_eval_tasks)
        self.folder.write_plan({
            "name": cfg.name, "store": str(self.store.root.resolve()),
            "executor": self.executor_name, "jobs": [j.to_json() for j in self.plan]})
        failures = self.folder.failures()
        cells = sum(j.kind == "attack" for j in self.plan)
        stage_bar = tqdm(total=len(self.plan) - cells, desc="shared stages", unit="stage",
                         disable=not self.progress, position=0)
        cell_bar = tqdm(total=cells, desc="cells", unit="cell", disable=not self.progress,
                        position=1)
        submitted: dict[str, float] = {}
        quiet_driver = self.executor_name == "sequential"  # its worker logs every stage

        def on_start(job: Job) -> None:
            submitted[job.id] = time.time()
            if not quiet_driver:
                log.info("%-8s %-40s submitted", job.kind, job.label)

        def on_done(job: Job, result: StageLog) -> None:
            if job.id in submitted and result.started is not None:
                result.dispatch_s = round(time.time() - submitted[job.id]
                                          - (result.finished - result.started), 4)
            (cell_bar if job.kind == "attack" else stage_bar).update()
            failures.update(job, result)
            if result.status == "failed":
                log.error("%-8s %-40s FAILED: %s", job.kind, job.label, result.reason)
            elif not quiet_driver:
                log.info("%-8s %-40s %s", job.kind, job.label, "cached" if result.cached
                         else f"done in {result.wall_s:.1f}s on {result.worker}")

        def recorded(job: Job) -> StageLog | None:
            """A failure an earlier run recorded stays failed, unless asked to retry it."""
            if self.retry_failed or self.store.has(job.kind, job.key, verify=False):
                return None  # (an entry: another run computed it since)
            return failures.recorded(job)

        executor = self._executor()
        try:
            # a stage another run holds now is left for last (two runs on one store share the work)
            logs = schedule(self.plan, executor, on_start, on_done, recorded,
                            busy=lambda job: self.store.running(job.kind, job.key) is not None)
        finally:
            executor.close()
            stage_bar.close()
            cell_bar.close()
        self.stages = [logs[j.id] for j in self.plan]
        results = self.collect(logs)
        outcome = RunOutcome(results=results, stages=self.stages,
                             wall_s=time.perf_counter() - start)
        self.folder.write_results(results)
        self.folder.link_releases(self.releases(logs))
        corpus = next(j.payload["corpus"] for j in self.plan if j.kind == "pretrain")
        data = {"world": self.world.fingerprint, "corpus": corpus, "tasks": self.task_fp}
        if self.include_fp is not None:
            data["lm_eval_include_path"] = self.include_fp
        cut = {label: len(splits["defense"]) for label, splits in self.data.examples.items()
               if "defense" in splits}
        if cut:  # restricted_data: what each side read, so a report can say it
            data["defense_tasks"] = {k: self.defense_fp[k] for k in cut}
            data["train_items"] = {k: {"defense": n,
                                       "adversary": len(self.data.examples[k]["train"])}
                                   for k, n in cut.items()}
        self.folder.write_manifest(build_manifest(
            m, outcome, data=data,
            execution={"executor": self.executor_name, "workers": self.workers,
                       "address": self.address}))
        return outcome

    def collect(self, logs: dict[str, StageLog]) -> pd.DataFrame:
        """The tidy results table, read from the store entries of the finished stages."""
        rows: list[dict[str, Any]] = []
        plugins = {d.label: d.plugin for d in self.matrix.defenses}
        for job in self.plan:
            ok = logs[job.id].status == "ok"
            if job.kind == "defend" and ok:  # how the release was built, if it says
                private = self.store.path(job.kind, job.key) / "private"
                rows += [row(release=job.args["defense"], base=job.args["base_seed"],
                             adversary="-", task=r.get("task", "-"), role="defense",
                             seed=None, step=r["step"], metric=r["metric"],
                             value=float(r["value"]))
                         for r in plugins[job.args["defense"]].build_log(private)]
            elif job.kind == "utility" and ok:
                entry = self.store.path(job.kind, job.key)
                scores = read_json(entry / "scores.json")
                items = read_json(entry / "items.json") if (entry / "items.json").exists() \
                    else {}
                rows += [row(release=job.args["release_label"], base=job.args["base"],
                             adversary="-", task=task, role="capability", seed=None, step=0,
                             metric="score", value=score, n_items=self.data.n_items(task),
                             items=items.get(task))
                         for task, score in scores.items()]
            elif job.kind == "attack":
                ids = dict(job.cell, role="restricted")
                if ok:
                    curve = read_json(self.store.path(job.kind, job.key) / "curve.json")
                    rows += curve_rows(curve, ids, job.cell["task"],
                                       self.data.n_items(job.cell["task"]))
                else:
                    rows.append(row(**ids, step=None, metric="score", value=None,
                                    status="failed", reason=logs[job.id].reason))
        return results_frame(rows)

    def releases(self, logs: dict[str, StageLog]) -> dict[str, Path]:
        """Each finished release's folder in the store, by its name in the run folder
        (``<defense>-base<seed>``, ``scratch-seed<seed>``)."""
        out = {}
        for job in self.plan:
            if job.kind in ("defend", "scratch") and logs[job.id].status == "ok":
                name = (f"{job.args['defense']}-base{job.args['base_seed']}"
                        if job.kind == "defend" else f"{SCRATCH}-seed{job.args['seed']}")
                out[name] = self.store.path(job.kind, job.key) / "release"
        return out


STATES = ("done", "running", "failed", "pending")


def run_status(run_dir: str | Path) -> pd.DataFrame:
    """Every stage of the run in ``run_dir`` (its last plan) with its state now: ``done`` (its
    entry is in the store), ``running`` (a live worker holds its claim), ``failed`` (a failure
    is recorded, or an input failed) or ``pending``. Reads files only; runs nothing."""
    folder = RunFolder(run_dir)
    plan = folder.read_plan()
    store = Store(plan["store"])
    failures = folder.failures().entries
    rows: list[dict[str, Any]] = []
    state: dict[str, str] = {}
    labels = {j["id"]: f"{j['kind']} {j['label']!r}" for j in plan["jobs"]}
    for job in plan["jobs"]:  # dependency order: inputs come first
        holder = None
        reason = None
        if store.has(job["kind"], job["key"], verify=False):
            st = "done"
        elif (holder := store.running(job["kind"], job["key"])) is not None:
            st = "running"
        elif job["id"] in failures:
            st, reason = "failed", failures[job["id"]].get("reason")
        elif bad := [d for d in job["deps"] if state.get(d) == "failed"]:
            st, reason = "failed", f"input {labels[bad[0]]} failed"
        else:
            st = "pending"
        state[job["id"]] = st
        since = holder.get("since") if holder else None
        rows.append({"kind": job["kind"], "label": job["label"], "key": job["key"],
                     "state": st, "reason": reason,
                     "worker": f"{holder.get('host')}:{holder.get('pid')}" if holder else None,
                     "running_s": round(time.time() - since, 1) if since else None})
    return pd.DataFrame(rows)
