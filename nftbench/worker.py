"""Runs one stage of the DAG: in the driver (sequential), a pool process or a Ray actor.

A :class:`StageWorker` is built once per process from the plain config (never from live objects,
so it can be rebuilt anywhere). ``run(job)`` returns at once when the job's entry is already in
the store; otherwise it claims the entry (a second worker that wants it waits, then reads it),
builds it into a temporary folder and lets the store make it visible atomically.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gc
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

import nftbench
from nftbench.api import AttackContext, AttackOutcome, DefenseContext, Release
from nftbench.checkpoint import Checkpoint
from nftbench.config import Matrix, MatrixData, resolve
from nftbench.data import corpus_batches, in_prompt_format, pack_corpus
from nftbench.evaluation import Evaluator
from nftbench.models import (
    init_model,
    load_pretrained,
    load_tokenizer,
    save_release,
    train_tokenizer,
)
from nftbench.plugins import load_plugins
from nftbench.records import Job, StageLog
from nftbench.run_folder import RunFolder
from nftbench.store import Store
from nftbench.threads import openmp_runtime
from nftbench.train import peak_memory_mb, reset_peak_memory, resident_memory_mb, train
from nftbench.world import World

log = logging.getLogger("nftbench")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to rebuild the matrix: plain data only."""

    config: dict[str, Any]  # the resolved MatrixConfig, dumped to JSON types
    plugin_dirs: tuple[str, ...] = ()
    #: every task's examples by split, as the driver read them (None: read them again)
    examples: dict[str, dict[str, list[dict[str, Any]]]] | None = None
    progress: bool = True
    threads: int | None = None  # torch threads of every stage (the config's; None: as is)


def quiet_libraries() -> None:
    """nftbench draws one bar per cell and per training run; the per-file and per-split bars
    and info logs of the libraries it drives would bury them."""
    import datasets
    import transformers

    for noisy in ("lm_eval", "lm-eval", "transformers", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def budget_points(points: int | list[int], steps: int) -> list[int]:
    """Evenly spaced steps from 0 to ``steps`` (inclusive), or the explicit ones within budget."""
    if isinstance(points, list):
        return sorted({p for p in points if p <= steps} | {0, steps})
    return sorted({round(i * steps / (points - 1)) for i in range(points)})


class StageWorker:
    def __init__(self, spec: WorkerSpec, matrix: Matrix | None = None) -> None:
        if matrix is None:  # a fresh process: plugins and the matrix from plain data
            quiet_libraries()
            load_plugins(spec.plugin_dirs)
            matrix = resolve(spec.config, check_data=spec.examples is None)
            if spec.examples is not None:  # the driver's, read once for the whole run
                matrix = replace(matrix, data=MatrixData(World(matrix.config.world),
                                                         spec.examples))
        self.matrix = matrix
        self.cfg = matrix.config
        self.progress = spec.progress
        self.threads = spec.threads
        self.store = Store(self.cfg.store_path)
        self.data = matrix.resolved_data()
        self.world = self.data.world
        self.variants = {(v.kind, v.label): v for kind in ("defenses", "adversaries", "tasks")
                         for v in getattr(matrix, kind)}
        self.whoami = f"{socket.gethostname()}:{os.getpid()}"
        self.wait_policy = {**nftbench.WAIT_POLICY, "runtime": openmp_runtime()}
        self._evaluator: Evaluator | None = None
        self._tokenizer: Any = None
        self._corpus: torch.Tensor | None = None

    # -- shared per-process state, built on first use --------------------------------------

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator({t.label: t.plugin for t in self.matrix.tasks},
                                        self.data.eval_examples(),
                                        RunFolder(self.cfg.run_dir).lm_eval_tasks,
                                        self.cfg.eval.batch_size,
                                        include_path=self.cfg.eval.include_path,
                                        chat=self.cfg.model.prompt_format == "chat")
        return self._evaluator

    def train_examples(self, label: str, reader: str = "adversary") -> list[dict[str, Any]]:
        """A task's train split as ``reader`` (adversary or defense) reads it, in the model's
        prompt format (what plugins fine-tune on)."""
        return in_prompt_format(self.data.read_by(label, reader)["train"],
                                self.cfg.model.prompt_format)

    def tokenizer(self, job_id: str | None) -> Any:
        if self._tokenizer is None:
            if job_id is None:
                self._tokenizer = load_tokenizer(self.cfg.model)
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.entry(job_id))
        return self._tokenizer

    def corpus(self, tokenizer: Any) -> torch.Tensor:
        """The packed pre-training corpus, tokenized only when a stage trains on it."""
        if self._corpus is None:
            self._corpus = pack_corpus(self.world.documents(), tokenizer,
                                       self.cfg.pretrain.seq_len)
        return self._corpus

    def filtered_corpus(self, tokenizer: Any, attributes: Sequence[str]) -> torch.Tensor:
        """The packed corpus without the facts of ``attributes`` (for data filtering)."""
        return pack_corpus(self.world.documents(without=attributes), tokenizer,
                           self.cfg.pretrain.seq_len)

    def entry(self, job_id: str) -> Path:
        kind, key = job_id.split(":", 1)
        return self.store.path(kind, key)

    def release(self, job_id: str) -> Release:
        return Release(self.entry(job_id) / "release", self.cfg.model)

    def capability_evaluator(self) -> Scorer | None:
        names = tuple(t.label for t in self.matrix.capability_tasks)
        return Scorer(self.evaluator, names) if names else None

    # -- running a job -----------------------------------------------------------------------

    def run(self, job: Job) -> StageLog:
        """Run ``job`` unless its entry is in the store; never raises (a failure is a log)."""
        started = time.time()
        if self.threads:  # the config's count, whichever executor runs the stage
            torch.set_num_threads(self.threads)
        self.cfg.compute.apply(self.cfg.model.torch_device())
        limit = self.cfg.limits.cell_timeout_s if job.kind == "attack" else None
        try:
            with time_limit(limit):
                result = self._run(job)
        except Exception as err:
            tb = "".join(traceback.format_exception(err))
            result = StageLog(job.kind, job.label, job.key, cached=False, wall_s=0.0,
                              status="failed", error=tb, reason=failure_reason(err),
                              worker=self.whoami)
        result.started, result.finished = started, time.time()
        result.threads = torch.get_num_threads()
        result.wait_policy = self.wait_policy
        result.nice = os.nice(0)
        if not result.cached:
            return_memory(self.cfg.model.torch_device())
        return result

    def _run(self, job: Job) -> StageLog:
        store = self.store
        if store.has(job.kind, job.key):
            return self._cached(job)
        with store.claim(job.kind, job.key):
            if store.has(job.kind, job.key):  # another worker computed it while we waited
                return self._cached(job)
            log.info("%-8s %-40s running (%s)", job.kind, job.label, job.key[:10])
            device = self.cfg.model.torch_device()
            reset_peak_memory(device)
            start_mem = resident_memory_mb()
            start = time.perf_counter()
            build = getattr(self, f"build_{job.kind}")
            peak = {"peak_mem_mb": None, "start_mem_mb": start_mem}

            def measure() -> dict[str, Any]:  # kept in the entry's meta
                peak["peak_mem_mb"] = round(peak_memory_mb(device), 1)
                return peak

            with store.write(job.kind, job.key, job.payload, measure=measure) as tmp:
                build(job, tmp)
            self.checkpoint(job).clear()  # the entry is written: its checkpoint is spent
            wall = time.perf_counter() - start
        log.info("%-8s %-40s done in %.1fs (peak %.0f MB)", job.kind, job.label, wall,
                 peak["peak_mem_mb"])
        return StageLog(job.kind, job.label, job.key, cached=False, wall_s=wall,
                        computed_wall_s=wall, worker=self.whoami, **peak)

    def _cached(self, job: Job) -> StageLog:
        log.info("%-8s %-40s cached  (%s)", job.kind, job.label, job.key[:10])
        meta = self.store.meta(job.kind, job.key)
        return StageLog(job.kind, job.label, job.key, cached=True, wall_s=0.0,
                        computed_wall_s=meta["wall_s"], worker=self.whoami,
                        peak_mem_mb=meta.get("peak_mem_mb"), start_mem_mb=meta.get("start_mem_mb"))

    def checkpoint(self, job: Job) -> Checkpoint:
        """The stage's checkpoint in the store (resumed by the next attempt at its key)."""
        return Checkpoint(self.store.partial_path(job.kind, job.key),
                          every_s=self.cfg.checkpoint_every_s)

    # -- the stages --------------------------------------------------------------------------

    def build_tokenizer(self, job: Job, tmp: Path) -> None:
        train_tokenizer(self.world.documents(), self.cfg.model.tiny.vocab_size).save_pretrained(
            tmp)

    def build_pretrain(self, job: Job, tmp: Path) -> None:
        spec, pre = self.cfg.model, self.cfg.pretrain.for_base(job.args["seed"])
        tokenizer = self.tokenizer(job.args["tokenizer"])
        model = init_model(spec, tokenizer, pre.seed) if spec.is_tiny else load_pretrained(spec)
        batches = corpus_batches(self.corpus(tokenizer), pre.batch_size, pre.seed)
        result = train(model, batches, pre.steps, pre.optim(), compute=self.cfg.compute,
                       desc="pretrain", progress=self.progress)
        if result.diverged:
            raise FloatingPointError(f"pre-training diverged at step {result.diverged_at}")
        save_release(model, tokenizer, tmp / "release")
        write_json(tmp / "train_log.json", {"losses": result.losses, "tokens": result.tokens,
                                            "flops": result.flops, "wall_s": result.wall_s,
                                            "recompute_flops": result.recompute_flops})

    def build_defend(self, job: Job, tmp: Path) -> None:
        variant = self.variants[("defense", job.args["defense"])]
        tokenizer = self.tokenizer(job.args["tokenizer"])
        # Task data and scorers only for a defense whose key covers them (uses_restricted_data
        # puts the tasks' fingerprints in it): no defense can read what its key does not name.
        reads_tasks = variant.plugin.uses_restricted_data
        restricted = {t.label: self.train_examples(t.label, "defense")
                      for t in self.matrix.restricted_tasks} if reads_tasks else {}
        ctx = DefenseContext(spec=self.cfg.model, tokenizer=tokenizer,
                             corpus=self.corpus(tokenizer),
                             pretrain=self.cfg.pretrain.for_base(job.args["base_seed"]),
                             base=self.release(job.args["base"]), restricted=restricted,
                             release_dir=tmp / "release", private_dir=tmp / "private",
                             progress=self.progress,
                             evaluate=self.evaluator if reads_tasks else None,
                             evaluate_capability=self.capability_evaluator() if reads_tasks
                             else None,
                             corpus_without=functools.partial(self.filtered_corpus, tokenizer),
                             checkpoint=self.checkpoint(job), compute=self.cfg.compute)
        ctx.private_dir.mkdir()
        variant.plugin.defend(ctx)
        Release(ctx.release_dir, self.cfg.model)  # validates the allow-list

    def build_scratch(self, job: Job, tmp: Path) -> None:
        tokenizer = self.tokenizer(job.args["tokenizer"])
        save_release(init_model(self.cfg.model, tokenizer, job.args["seed"]), tokenizer,
                     tmp / "release")

    def build_utility(self, job: Job, tmp: Path) -> None:
        names = [t.label for t in self.matrix.capability_tasks]
        model, tok = self.release(job.args["release"]).load()
        scores = self.evaluator(model, tok, names)
        write_json(tmp / "scores.json", scores)
        write_json(tmp / "items.json", scores.per_item)

    def build_attack(self, job: Job, tmp: Path) -> None:
        """One cell: the adversary fine-tunes the release on the task. An owner cell runs the
        adversary's recipe with the defense's authorization (its private artifacts)."""
        a = job.args
        adversary = self.variants[("adversary", a["adversary"])]
        task = a["task"]
        release_dir = self.entry(a["release"])
        private = release_dir / "private"  # a defended release's; scratch has none
        defense = self.variants.get(("defense", a["release_label"]))  # None for scratch
        owner = defense.plugin.authorize(private) if a["owner"] else None
        points = self.cfg.eval.budget_points
        who = "owner " if owner else ""
        # The adversary gets a view of the public release outside the store (walking up from
        # it reaches no private artifact), scorers that hold nothing but the lm-eval tasks, and
        # no path; the harness scores the private mask below, after the attack.
        with public_view(self.entry(a["release"]) / "release") as view:
            release = Release(view, self.cfg.model)
            ctx = AttackContext(
                seed=a["seed"], evaluate=Scorer(self.evaluator, (task,)),
                evaluate_capability=self.capability_evaluator(),
                budget_points=functools.partial(budget_points, points),
                progress=self.progress, authorization=owner, compute=self.cfg.compute,
                desc=f"{who}{adversary.label}/{task}/s{a['seed']}",
                public_examples={t.label: self.train_examples(t.label)
                                 for t in self.matrix.capability_tasks
                                 if "train" in t.plugin.splits})
            torch.manual_seed(a["seed"])
            result = adversary.plugin.attack(release, self.train_examples(task), ctx)
            diagnostics = dict(ctx.diagnostics)
            if defense is not None:  # what only the defense's private artifacts can measure
                diagnostics |= defense.plugin.attack_diagnostics(private, AttackOutcome(
                    release=release.path, guesses=ctx.guesses(), result=result,
                    model=None if result.diverged else ctx.outputs.get("model")))
        write_json(tmp / "curve.json", {
            "diagnostics": diagnostics,
            "diverged_at": result.diverged_at, "steps": result.steps,
            "tokens": result.tokens, "flops": result.flops, "wall_s": result.wall_s,
            "recompute_flops": result.recompute_flops,
            "eval_s": result.eval_s,
            "points": [asdict(p) for p in result.points]})


def return_memory(device: torch.device) -> None:
    """Give a finished stage's memory back, so the next stage starts from the process's own.
    glibc keeps freed blocks under its (self-raising) mmap threshold in its heap: after a model
    of 0.5B parameters, 15 GB stayed resident between stages until ``malloc_trim``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class StageTimeout(Exception):
    """A stage ran past its time limit."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`StageTimeout` in this thread after ``seconds`` (SIGALRM: the main thread
    of a process, which is where every executor runs stages). The partial stage is discarded
    by the store like any failed write."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning("time limits need the main thread; running without one")
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise StageTimeout(f"time limit of {seconds:g} s exceeded")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def failure_reason(err: BaseException) -> str:
    """One line that says why a stage failed, for the log, ``status`` and the results."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return f"out of memory ({type(err).__name__})"
    if isinstance(err, StageTimeout):
        return str(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"disk full while writing ({err.filename or 'the store'})"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@dataclass(frozen=True)
class Scorer:
    """Scores a model on fixed tasks through lm-eval: what an adversary's context holds of the
    harness (no store, no run folder, no private path)."""

    evaluator: Evaluator
    names: tuple[str, ...]

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        return self.evaluator(model, tokenizer, list(self.names))


@contextmanager
def public_view(release_dir: Path) -> Iterator[Path]:
    """A copy of a release folder in a fresh temporary folder outside the store (hard links
    where the filesystem allows, so it costs nothing), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="nftbench-release-"))
    view = root / "release"
    try:
        view.mkdir()
        for file in release_dir.iterdir():
            try:
                os.link(file, view / file.name)
            except OSError:  # another filesystem
                shutil.copy2(file, view / file.name)
        yield view
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
