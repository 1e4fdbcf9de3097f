"""The stage DAG of a matrix, planned before anything runs.

Every job is one stage whose output is one store entry. Its key is the content hash of the
payload (kind, resolved config, the keys of its inputs, data fingerprints, plugin versions), and
every input key is itself a content hash, so the whole graph, keys included, follows from the
config alone. That is what lets a rerun skip finished work, ``nftbench status`` say which cells
are done without running anything, and any worker run any job whose inputs are in the store::

    tokenizer ─► pretrain (per base) ─► defend (per defense x base) ─┬─► utility (per release)
             └─► scratch (per seed) ─────────────────────────────────┴─► attack (per release x
                        adversary x task x seed; owner cells for defenses with authorized tuning)

A base is one pre-training run (a pre-training seed). Every defense is applied to every base;
scratch does not depend on the base, so it is attacked once per seed and shared by every base's
comparison.
"""

from __future__ import annotations

from typing import Any

from nftbench.api import Defense
from nftbench.config import Matrix
from nftbench.evaluation import EVAL_FORMAT
from nftbench.records import SCRATCH, Job
from nftbench.store import content_key, stage_key
from nftbench.world import World


def _job(kind: str, label: str, payload: dict[str, Any], **kw: Any) -> Job:
    return Job(kind, label, stage_key(kind, payload), payload, **kw)


def has_authorization(defense: Defense) -> bool:
    """Whether the owner gets cells of its own (the defense declares authorized tuning)."""
    return defense.authorized_tuning


def base_label(seed: int) -> str:
    return f"base {seed}"


def build_plan(matrix: Matrix, world: World, task_fp: dict[str, str],
               defense_fp: dict[str, str] | None = None) -> list[Job]:
    """Every stage of ``matrix`` in an order that respects its dependencies. ``task_fp``: each
    task's fingerprint as the adversaries read it; ``defense_fp``: as the defenses read it,
    where ``restricted_data`` cuts the restricted tasks' train splits (None: the same)."""
    defense_fp = defense_fp or task_fp
    cfg = matrix.config
    spec = cfg.model
    # The prompt format changes no pre-training: it enters only the stages that fine-tune or
    # score on tasks, and only where it is not plain (whose keys were published without it).
    spec_payload = spec.model_dump(mode="json", exclude={"device", "prompt_format"})
    chat = {"prompt_format": spec.prompt_format} if spec.prompt_format != "plain" else {}
    threads = cfg.threads  # enters every key of a stage that computes with torch
    # how training stages run (bf16, micro-batches, ...): only where set, so defaults move no key
    compute = {"compute": cfg.compute.key_payload()} if cfg.compute.key_payload() else {}
    jobs: list[Job] = []

    if spec.is_tiny:
        tok = _job("tokenizer", "bpe", {"vocab_size": spec.tiny.vocab_size,
                                        "world": world.fingerprint})
        jobs.append(tok)
        tokenizer_key, tok_id = tok.key, tok.id
    else:  # a hub or local tokenizer is read, not built
        tokenizer_key, tok_id = content_key(spec.name_or_path), None
    tok_deps = (tok_id,) if tok_id else ()
    # The packed corpus is a deterministic function of these, so they name it.
    corpus_fp = content_key({"world": world.fingerprint, "tokenizer": tokenizer_key,
                             "seq_len": cfg.pretrain.seq_len})
    bases: dict[int, Job] = {}
    for b in cfg.pretrain.bases:
        bases[b] = _job("pretrain", base_label(b),
                        {"model": spec_payload, "tokenizer": tokenizer_key,
                         "pretrain": cfg.pretrain.key_payload(b), "corpus": corpus_fp,
                         "threads": threads, **compute},
                        deps=tok_deps, args={"tokenizer": tok_id, "seed": b})
    jobs += bases.values()

    restricted = [t.label for t in matrix.restricted_tasks]
    capability = [t.label for t in matrix.capability_tasks]
    # (defense label, base seed) -> its release
    releases: dict[tuple[str, int], Job] = {}
    for b, base in bases.items():
        for d in matrix.defenses:
            payload = {"defense": d.name, "version": d.version, "params": d.params,
                       "base": base.key, "tokenizer": tokenizer_key, "corpus": corpus_fp,
                       "pretrain": cfg.pretrain.key_payload(b), "threads": threads,
                       **compute}
            if d.plugin.uses_restricted_data:  # it may also read capability scores (a guard)
                payload["restricted"] = {k: defense_fp[k] for k in restricted}
                payload["capability"] = {k: task_fp[k] for k in capability}
                payload |= chat
            releases[d.label, b] = _job(
                "defend", f"{d.label} / {base_label(b)}", payload, deps=(base.id, *tok_deps),
                args={"defense": d.label, "base": base.id, "base_seed": b, "tokenizer": tok_id})
    scratch = {s: _job("scratch", f"seed {s}", {"model": spec_payload,
                                                 "tokenizer": tokenizer_key, "seed": s},
                       deps=tok_deps, args={"seed": s, "tokenizer": tok_id})
               for s in cfg.seeds}
    jobs += [*releases.values(), *scratch.values()]

    # (release label, base seed or None for scratch, its job)
    targets = [(label, b, job) for (label, b), job in releases.items()]
    targets.append((SCRATCH, None, scratch[cfg.seeds[0]]))
    if capability:
        for label, b, release in targets:
            payload = {"release": release.key, "tasks": {n: task_fp[n] for n in capability},
                       "task_params": {t.label: t.params for t in matrix.capability_tasks},
                       "eval_format": EVAL_FORMAT, "threads": threads, **chat}
            where = label if b is None else f"{label} / {base_label(b)}"
            jobs.append(_job("utility", where, payload, deps=(release.id,),
                             args={"release": release.id, "release_label": label, "base": b}))

    points = cfg.eval.budget_points
    owners = {d.label for d in matrix.defenses if has_authorization(d.plugin)}
    keys = [(label, b) for (label, b) in releases] + [(SCRATCH, None)]
    cells = [(label, b, a, t, s, False) for label, b in keys
             for a in matrix.adversaries for t in matrix.restricted_tasks for s in cfg.seeds]
    cells += [(label, b, a, t, s, True) for label, b in releases if label in owners
              for a in matrix.adversaries if a.plugin.owner_recipe
              for t in matrix.restricted_tasks for s in cfg.seeds]
    for label, b, adversary, task, seed, owner in cells:
        release = scratch[seed] if label == SCRATCH else releases[label, b]
        payload = {"release": release.key, "adversary": adversary.name,
                   "version": adversary.version, "params": adversary.params,
                   "task": task.label, "task_params": task.params, "data": task_fp[task.label],
                   "seed": seed, "budget_points": points,
                   "capability_after": {c: task_fp[c] for c in capability},
                   "eval_format": EVAL_FORMAT, "threads": threads, **compute, **chat}
        if owner:
            payload["authorized"] = True
        who = "owner " if owner else ""
        where = label if b is None else f"{label} / {base_label(b)}"
        jobs.append(_job(
            "attack", f"{who}{adversary.label} > {where} / {task.label} / seed {seed}", payload,
            deps=(release.id,),
            args={"release": release.id, "release_label": label, "base": b,
                  "adversary": adversary.label, "task": task.label, "seed": seed,
                  "owner": owner},
            cell={"release": label, "base": b, "adversary": adversary.label, "task": task.label,
                  "seed": seed, "authorized": owner}))
    return jobs
