"""The matrix engine: every arrow of the data flow is a stage whose output lives in the store.

::

    tokenizer ─► pretrain (base) ─► defend (per defense) ─► release ─┬─► attack ─► curve
               └► scratch (per seed) ───────────────────────────────┘
    release ─► utility (capability tasks)

A stage's key hashes its kind, its resolved config, the keys of its inputs, the fingerprints of
the data it reads and the plugin's version, so a rerun skips finished work and a changed config
never reuses a stale result. A defense with authorized tuning (PMP) also gets owner cells: the
owner runs each plain fine-tuning recipe restricted by its private artifacts, in rows marked
``authorized``. Cells run sequentially here. An exception in one cell is recorded
with its traceback and the matrix goes on; a diverged attack is a result, stored like any other.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from nftbench.api import AttackContext, Authorization, DefenseContext, Release
from nftbench.config import Matrix, Variant
from nftbench.data import corpus_batches, pack_corpus
from nftbench.evaluation import Evaluator
from nftbench.manifest import write_manifest
from nftbench.masks import MASK_FILE, load_mask, mask_fraction, mask_iou, update_share
from nftbench.models import (
    init_model,
    load_pretrained,
    load_tokenizer,
    save_release,
    train_tokenizer,
    weight_update,
)
from nftbench.store import Store, content_key
from nftbench.train import train
from nftbench.world import World

log = logging.getLogger("nftbench")
SCRATCH = "scratch"
CAPABILITY_AFTER = "capability_after/"  # metric prefix: capability of an attacked model
STATUS_FAILED = 3  # exit code when some cells failed


def budget_points(points: int | list[int], steps: int) -> list[int]:
    """Evenly spaced steps from 0 to ``steps`` (inclusive), or the explicit ones within budget."""
    if isinstance(points, list):
        return sorted({p for p in points if p <= steps} | {0, steps})
    return sorted({round(i * steps / (points - 1)) for i in range(points)})


@dataclass
class StageLog:
    kind: str
    label: str
    key: str
    cached: bool
    wall_s: float  # in this run (0 for a stage found in the store)
    computed_wall_s: float | None = None  # when the stored entry was computed
    status: str = "ok"
    error: str | None = None


@dataclass
class RunOutcome:
    results: pd.DataFrame
    stages: list[StageLog] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[StageLog]:
        return [s for s in self.stages if s.status == "failed"]


class Runner:
    """Executes one matrix over one store."""

    def __init__(self, matrix: Matrix, progress: bool = True) -> None:
        self.matrix = matrix
        self.cfg = matrix.config
        self.run_dir = self.cfg.run_dir
        self.store = Store(self.cfg.store_path)
        self.progress = progress
        self.world = World(self.cfg.world)
        self.stages: list[StageLog] = []
        self._corpus: torch.Tensor | None = None
        self._private: dict[str, Path] = {}  # release key -> its private artifacts (harness only)
        self.task_data = {t.label: {s: t.plugin.examples(s, self.world) for s in t.plugin.splits}
                          for t in matrix.tasks}
        self.task_fp = {t.label: t.plugin.fingerprint(self.world) for t in matrix.tasks}

    # -- helpers ---------------------------------------------------------------------------

    def _stage(self, kind: str, label: str, payload: dict[str, Any], build) -> tuple[str, Path]:
        """Return (key, entry path), running ``build(tmp_dir)`` if the entry is missing."""
        key = self.store.key(kind, payload)
        if self.store.has(kind, key):
            self.stages.append(StageLog(kind, label, key, cached=True, wall_s=0.0,
                                        computed_wall_s=self.store.meta(kind, key)["wall_s"]))
            log.info("%-8s %-40s cached  (%s)", kind, label, key[:10])
            return key, self.store.path(kind, key)
        log.info("%-8s %-40s running (%s)", kind, label, key[:10])
        start = time.perf_counter()
        with self.store.write(kind, key, payload) as tmp:
            build(tmp)
        wall = time.perf_counter() - start
        self.stages.append(StageLog(kind, label, key, cached=False, wall_s=wall,
                                    computed_wall_s=wall))
        log.info("%-8s %-40s done in %.1fs", kind, label, wall)
        return key, self.store.path(kind, key)

    def _spec_payload(self) -> dict[str, Any]:
        return self.cfg.model.model_dump(mode="json", exclude={"device"})

    # -- stages ----------------------------------------------------------------------------

    def tokenizer(self):
        spec = self.cfg.model
        if not spec.is_tiny:
            self.tokenizer_key = content_key(spec.name_or_path)
            return load_tokenizer(spec)

        def build(tmp: Path) -> None:
            train_tokenizer(self.world.documents(), spec.tiny.vocab_size).save_pretrained(tmp)

        payload = {"vocab_size": spec.tiny.vocab_size, "world": self.world.fingerprint}
        self.tokenizer_key, path = self._stage("tokenizer", "bpe", payload, build)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    def corpus(self, tokenizer) -> torch.Tensor:
        """The packed pre-training corpus, tokenized only when a stage trains on it."""
        if self._corpus is None:
            self._corpus = pack_corpus(self.world.documents(), tokenizer,
                                       self.cfg.pretrain.seq_len)
        return self._corpus

    def pretrain(self, tokenizer, corpus_fp: str) -> tuple[str, Release]:
        spec, pre = self.cfg.model, self.cfg.pretrain

        def build(tmp: Path) -> None:
            model = init_model(spec, tokenizer, pre.seed) if spec.is_tiny else load_pretrained(
                spec)
            batches = corpus_batches(self.corpus(tokenizer), pre.batch_size, pre.seed)
            result = train(model, batches, pre.steps,
                           pre.optim, desc="pretrain", progress=self.progress)
            if result.diverged:
                raise FloatingPointError(f"pre-training diverged at step {result.diverged_at}")
            save_release(model, tokenizer, tmp / "release")
            write_json(tmp / "train_log.json", {"losses": result.losses, "tokens": result.tokens,
                                                "flops": result.flops, "wall_s": result.wall_s})

        payload = {"model": self._spec_payload(), "tokenizer": self.tokenizer_key,
                   "pretrain": pre.model_dump(mode="json"), "corpus": corpus_fp}
        key, path = self._stage("pretrain", "base", payload, build)
        return key, Release(path / "release", spec)

    def defend(self, variant: Variant, tokenizer, corpus_fp: str, base_key: str,
               base: Release, evaluator: Evaluator) -> tuple[str, Release]:
        defense = variant.plugin
        restricted = {t.label: self.task_data[t.label]["train"]
                      for t in self.matrix.restricted_tasks}
        capability = [t.label for t in self.matrix.capability_tasks]

        def build(tmp: Path) -> None:
            ctx = DefenseContext(spec=self.cfg.model, tokenizer=tokenizer,
                                 corpus=self.corpus(tokenizer),
                                 pretrain=self.cfg.pretrain, base=base, restricted=restricted,
                                 release_dir=tmp / "release", private_dir=tmp / "private",
                                 progress=self.progress, evaluate=evaluator,
                                 evaluate_capability=(lambda m, t: evaluator(m, t, capability))
                                 if capability else None)
            ctx.private_dir.mkdir()
            defense.defend(ctx)
            Release(ctx.release_dir, self.cfg.model)  # validates the allow-list

        payload = {"defense": variant.name, "version": variant.version,
                   "params": variant.params, "base": base_key, "tokenizer": self.tokenizer_key,
                   "corpus": corpus_fp, "pretrain": self.cfg.pretrain.model_dump(mode="json")}
        if defense.uses_restricted_data:  # it may also read capability scores (a guard)
            payload["restricted"] = {k: self.task_fp[k] for k in restricted}
            payload["capability"] = {k: self.task_fp[k] for k in capability}
        key, path = self._stage("defend", variant.label, payload, build)
        self._private[key] = path / "private"
        return key, Release(path / "release", self.cfg.model)

    def scratch(self, tokenizer, seed: int) -> tuple[str, Release]:
        def build(tmp: Path) -> None:
            save_release(init_model(self.cfg.model, tokenizer, seed), tokenizer, tmp / "release")

        payload = {"model": self._spec_payload(), "tokenizer": self.tokenizer_key, "seed": seed}
        key, path = self._stage("scratch", f"seed {seed}", payload, build)
        return key, Release(path / "release", self.cfg.model)

    def utility(self, label: str, release_key: str, release: Release,
                evaluator: Evaluator) -> dict[str, float]:
        names = [t.label for t in self.matrix.capability_tasks]
        if not names:
            return {}

        def build(tmp: Path) -> None:
            model, tok = release.load()
            write_json(tmp / "scores.json", evaluator(model, tok, names))

        payload = {"release": release_key, "tasks": {n: self.task_fp[n] for n in names},
                   "task_params": {t.label: t.params for t in self.matrix.capability_tasks}}
        _, path = self._stage("utility", label, payload, build)
        return read_json(path / "scores.json")

    def attack(self, release_label: str, release_key: str, release: Release, adversary: Variant,
               task: Variant, seed: int, evaluator: Evaluator,
               owner: Callable[[Any], Authorization] | None = None) -> dict[str, Any]:
        """One cell: ``adversary`` fine-tunes ``release`` on ``task``. With ``owner`` (the
        defense's authorization), the owner runs the adversary's recipe on its own release."""
        points = self.cfg.eval.budget_points
        who = "owner " if owner else ""
        label = f"{who}{adversary.label} > {release_label} / {task.label} / seed {seed}"

        def build(tmp: Path) -> None:
            capability = [t.label for t in self.matrix.capability_tasks]
            ctx = AttackContext(
                seed=seed, evaluate=lambda m, t: evaluator(m, t, [task.label]),
                evaluate_capability=(lambda m, t: evaluator(m, t, capability)) if capability
                else None,
                budget_points=lambda steps: budget_points(points, steps),
                progress=self.progress, authorization=owner,
                desc=f"{who}{adversary.label}/{task.label}/s{seed}")
            torch.manual_seed(seed)
            result = adversary.plugin.attack(release, self.task_data[task.label]["train"], ctx)
            diagnostics = dict(ctx.diagnostics)
            private = self._private.get(release_key)  # scratch releases have none
            if private and (private / MASK_FILE).exists():
                # scored here, by the harness: the adversary never sees the private mask
                mask = load_mask(private / MASK_FILE)
                if ctx.mask_guess is not None:
                    diagnostics["mask_iou"] = mask_iou(ctx.mask_guess, mask)
                if ctx.trained is not None and not result.diverged:
                    share = update_share(weight_update(ctx.trained, release.path), mask)
                    if share is not None:
                        diagnostics["update_share_ticket"] = share
                        diagnostics["ticket_fraction"] = mask_fraction(mask)
            write_json(tmp / "curve.json", {
                "diagnostics": diagnostics,
                "diverged_at": result.diverged_at, "steps": result.steps,
                "tokens": result.tokens, "flops": result.flops, "wall_s": result.wall_s,
                "eval_s": result.eval_s,
                "points": [asdict(p) for p in result.points]})

        payload = {"release": release_key, "adversary": adversary.name,
                   "version": adversary.version, "params": adversary.params,
                   "task": task.label, "task_params": task.params, "data": self.task_fp[task.label],
                   "seed": seed, "budget_points": points,
                   "capability_after": {t.label: self.task_fp[t.label]
                                        for t in self.matrix.capability_tasks}}
        if owner is not None:
            payload["authorized"] = True
        _, path = self._stage("attack", label, payload, build)
        return read_json(path / "curve.json")

    # -- the matrix ------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        start = time.perf_counter()
        m, cfg = self.matrix, self.cfg
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        evaluator = Evaluator({t.label: t.plugin for t in m.tasks}, self.world,
                              self.run_dir / "lm_eval_tasks", cfg.eval.batch_size)
        tokenizer = self.tokenizer()
        # The packed corpus is a deterministic function of these, so they name it.
        corpus_fp = content_key({"world": self.world.fingerprint, "tokenizer": self.tokenizer_key,
                                 "seq_len": cfg.pretrain.seq_len})
        base_key, base = self.pretrain(tokenizer, corpus_fp)

        releases: dict[str, tuple[str, Release]] = {}
        for d in m.defenses:
            try:
                releases[d.label] = self.defend(d, tokenizer, corpus_fp, base_key, base,
                                               evaluator)
            except Exception as err:  # one broken defense must not stop the others
                self._record_failure("defend", d.label, err)
        scratch = {s: self.scratch(tokenizer, s) for s in cfg.seeds}
        self._link_releases(releases, scratch)

        rows: list[dict[str, Any]] = []
        targets = [(label, *releases[label]) for label in releases]
        for label, key, release in [*targets, (SCRATCH, *scratch[cfg.seeds[0]])]:
            try:
                for task, score in self.utility(label, key, release, evaluator).items():
                    rows.append(row(release=label, adversary="-", task=task, role="capability",
                                    seed=None, step=0, metric="score", value=score))
            except Exception as err:
                self._record_failure("utility", label, err)

        owners = self._owners(releases)
        cells = [(label, a, t, s, None) for label in [*releases, SCRATCH] for a in m.adversaries
                 for t in m.restricted_tasks for s in cfg.seeds]
        cells += [(label, a, t, s, owner) for label, owner in owners.items()
                  for a in m.adversaries if a.plugin.owner_recipe
                  for t in m.restricted_tasks for s in cfg.seeds]
        for label, adversary, task, seed, owner in tqdm(cells, desc="cells", unit="cell",
                                                        disable=not self.progress):
            key, release = scratch[seed] if label == SCRATCH else releases[label]
            ids = dict(release=label, adversary=adversary.label, task=task.label,
                       role="restricted", seed=seed, authorized=owner is not None)
            try:
                curve = self.attack(label, key, release, adversary, task, seed, evaluator,
                                    owner)
            except Exception as err:
                self._record_failure("attack", f"{'owner ' if owner else ''}{adversary.label} "
                                     f"> {label}/{task.label}/s{seed}", err)
                rows.append(row(**ids, step=None, metric="score", value=None, status="failed"))
                continue
            rows += curve_rows(curve, ids, task.label)
        for d in m.defenses:  # a defense that failed: its cells count as failed, not resisted
            if d.label not in releases:
                rows += [row(release=d.label, adversary=a.label, task=t.label,
                             role="restricted", seed=s, metric="score", status="failed")
                         for a in m.adversaries for t in m.restricted_tasks for s in cfg.seeds]

        results = pd.DataFrame(rows, columns=RESULT_COLUMNS).astype(
            {"seed": "Int64", "step": "Int64", "tokens": "Int64", "trial": "Int64"})
        outcome = RunOutcome(results=results, stages=self.stages,
                             wall_s=time.perf_counter() - start)
        results.to_csv(self.run_dir / "results.csv", index=False)
        results.to_parquet(self.run_dir / "results.parquet", index=False)
        write_manifest(self.run_dir / "manifest.json", m, outcome,
                       data={"world": self.world.fingerprint, "corpus": corpus_fp,
                             "tasks": self.task_fp})
        return outcome

    def _owners(self, releases: dict[str, tuple[str, Release]]
                ) -> dict[str, Callable[[Any], Authorization]]:
        """Each defended release whose defense has authorized tuning -> its authorization."""
        out = {}
        for d in self.matrix.defenses:
            if d.label in releases:
                owner = d.plugin.authorize(self._private[releases[d.label][0]])
                if owner is not None:
                    out[d.label] = owner
        return out

    def _record_failure(self, kind: str, label: str, err: Exception) -> None:
        tb = "".join(traceback.format_exception(err))
        log.error("%-8s %-40s FAILED: %s", kind, label, err)
        self.stages.append(StageLog(kind, label, "", cached=False, wall_s=0.0, status="failed",
                                    error=tb))

    def _link_releases(self, releases: dict[str, tuple[str, Release]],
                       scratch: dict[int, tuple[str, Release]]) -> None:
        """``RUN_DIR/releases/<label>`` points at each release in the store (for lm_eval)."""
        folder = self.run_dir / "releases"
        folder.mkdir(parents=True, exist_ok=True)
        links = {label: rel for label, (_, rel) in releases.items()}
        links |= {f"{SCRATCH}-seed{s}": rel for s, (_, rel) in scratch.items()}
        for label, rel in links.items():
            link = folder / label.replace("/", "_")
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(os.path.relpath(rel.path.resolve(), folder.resolve())))


RESULT_COLUMNS = ["release", "adversary", "task", "role", "seed", "step", "tokens", "flops",
                  "wall_s", "peak_mem_mb", "metric", "value", "status", "authorized", "trial"]


def row(**kw: Any) -> dict[str, Any]:
    base = dict.fromkeys(RESULT_COLUMNS)
    base.update(status="ok", authorized=False)
    base.update(kw)
    return base


def curve_rows(curve: dict[str, Any], ids: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """Tidy rows of one attack curve: a score and a loss row per budget point."""
    status = "diverged" if curve["diverged_at"] is not None else "ok"
    out = []
    for p in curve["points"]:
        common = dict(ids, step=p["step"], tokens=p["tokens"], flops=p["flops"],
                      wall_s=p["wall_s"], peak_mem_mb=p["peak_mem_mb"], status=status)
        out.append(row(**common, metric="score", value=p["scores"].get(task)))
        if p["loss"] is not None:
            out.append(row(**common, metric="loss", value=p["loss"]))
    if status == "diverged":
        out.append(row(**ids, step=curve["diverged_at"], metric="diverged_at",
                       value=float(curve["diverged_at"]), status=status))
    last = curve["points"][-1] if curve["points"] else {}
    for e in curve.get("diagnostics", {}).get("effort", []):  # a sweep's attacker-effort curve
        for metric, value in (("effort_best", e["best_score"]), ("trial_score", e["score"])):
            out.append(row(**ids, trial=e["trial"], tokens=e["tokens"], flops=e["flops"],
                           metric=metric, value=value, status=status))
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


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
