"""A run's folder: every file the engine writes there is written here, and nowhere else.

::

    RUN_DIR/
      plan.json          the stage DAG of the last run (what `nftbench status` reads)
      failures.json      stages that failed, with reason and traceback, until a rerun succeeds
      results.csv        the tidy results table (and results.parquet, the same with types)
      manifest.json      config, packages, git commit, hardware and kernel path, stage logs
      releases/          links into the store: <defense>-base<seed>, scratch-seed<seed>
      run.log            the log of every run in this folder
      lm_eval_tasks/     the generated lm-eval task files (written by nftbench.evaluation)
      report/            leaderboards and figures (written by nftbench.report)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nftbench.records import Job, StageLog
from nftbench.store import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

PLAN_FILE = "plan.json"
FAILURES_FILE = "failures.json"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "run.log"


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # where things are
    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    @property
    def lm_eval_tasks(self) -> Path:
        return self.path / "lm_eval_tasks"

    @property
    def releases(self) -> Path:
        return self.path / "releases"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def results_file(self) -> Path:
        return self.path / "results.parquet"

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # what is written
    def write_plan(self, plan: dict[str, Any]) -> None:
        write_json_atomic(self.path / PLAN_FILE, plan)

    def read_plan(self) -> dict[str, Any]:
        path = self.path / PLAN_FILE
        if not path.exists():
            raise FileNotFoundError(f"{self.path} has no {PLAN_FILE}: not a run folder, or the "
                                    "run never started")
        return json.loads(path.read_text())

    def read_results(self) -> pd.DataFrame:
        """The results table: results.parquet, or results.csv where only that was kept (a
        published report folder, e.g. results/sophon/k50x1000)."""
        from nftbench.records import read_results

        for name in (self.results_file.name, "results.csv"):
            if (self.path / name).exists():
                return read_results(self.path / name)
        raise FileNotFoundError(f"{self.path} holds neither {self.results_file.name} nor "
                                "results.csv: is it a run folder?")

    def stage_plan(self) -> dict[str, Any]:
        """The stages that made the results: plan.json, or, for a folder that kept only its
        manifest (a published report), the plan its recorded config makes with today's code,
        which must name exactly the stage keys the manifest recorded."""
        if (self.path / PLAN_FILE).exists():
            return self.read_plan()
        manifest_file = self.path / MANIFEST_FILE
        if not manifest_file.exists():
            raise FileNotFoundError(f"{self.path} has neither {PLAN_FILE} nor {MANIFEST_FILE}: "
                                    "is it a run folder?")
        from nftbench.config import recorded_config, resolve
        from nftbench.engine import Runner
        from nftbench.plugins import load_plugins

        load_plugins()  # the built-in and installed plugins a recorded config names

        manifest = json.loads(manifest_file.read_text())
        jobs = Runner(resolve(recorded_config(manifest["config"])), progress=False).plan
        made = {(s["kind"], s["label"], s["key"]) for s in manifest.get("stages", [])}
        stale = sorted(made - {(j.kind, j.label, j.key) for j in jobs})
        if stale:
            raise StalePlan(f"{self.path}: {len(stale)} of the stages its manifest recorded "
                            f"have other keys with today's code (e.g. {stale[0][1]}): its "
                            "numbers are not what its config computes now; rerun the config")
        return {"jobs": [j.to_json() for j in jobs if (j.kind, j.label, j.key) in made]}

    def failures(self) -> FailureBook:
        return FailureBook(self.path / FAILURES_FILE)

    def write_results(self, results: pd.DataFrame) -> None:
        results.to_csv(self.path / "results.csv", index=False)
        results.to_parquet(self.results_file, index=False)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.path / MANIFEST_FILE, manifest)

    def link_releases(self, targets: dict[str, Path]) -> None:
        """``releases/<name>`` -> each release folder in the store (relative links: plain
        ``from_pretrained`` folders, for lm_eval or a user's own script)."""
        self.releases.mkdir(parents=True, exist_ok=True)
        for name, target in targets.items():
            link = self.releases / name.replace("/", "_")
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(os.path.relpath(target.resolve(), self.releases.resolve())))


class StalePlan(ValueError):
    """A published results folder whose recorded stage keys today's code no longer plans."""


class FailureBook:
    """``failures.json``: the stages that failed in this run folder, with reason and traceback,
    kept across runs until a rerun succeeds. Rewritten atomically on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = (json.loads(path.read_text())
                                                   if path.exists() else {})

    def update(self, job: Job, result: StageLog) -> None:
        if result.status == "failed":
            if result.error.startswith(("not run:", "recorded failure")):
                return  # an input's failure, or an old record: nothing new
            self.entries[job.id] = {"kind": job.kind, "label": job.label, "key": job.key,
                                    "reason": result.reason, "error": result.error,
                                    "worker": result.worker,
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        elif self.entries.pop(job.id, None) is None:
            return
        write_json_atomic(self.path, self.entries)

    def recorded(self, job: Job) -> StageLog | None:
        record = self.entries.get(job.id)
        if record is None:
            return None
        return StageLog(job.kind, job.label, job.key, cached=False, wall_s=0.0,
                        status="failed", reason=record.get("reason"),
                        error="recorded failure (rerun with --retry-failed to retry it):\n"
                        + record["error"])


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))
