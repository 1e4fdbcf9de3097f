"""SOPHON: non-fine-tunable learning (Deng et al., arXiv 2404.12699), adapted to causal LMs.

Starting from the dense base release, each outer step

1. backs the weights up;
2. fine-tuning suppression (FTS): for each of N fine-tuning strategies sampled from a set
   (optimizer, learning rate, batch size), simulates K steps of fine-tuning on a restricted
   task's data from the current weights (first-order MAML: a functional copy of the weights,
   no second derivatives). After every inner step the suppression loss is taken on a query
   batch at the adapted weights; its gradient there, averaged over the K steps and the N
   strategies, is clipped and applied to the real weights by Adam at ``alpha * lr``;
3. normal training reinforcement (NTR): ``ntr_steps`` steps of next-token cross-entropy on the
   pre-training corpus, by a separate Adam at ``beta * lr``;
4. intactness guard: if the capability score falls under ``guard``, restores the last weights
   that passed and stops.

Restricted tasks: an outer step simulates fine-tuning on one of them, in turn. The suppression
loss acts on the distribution over the label strings for classification tasks (each choice's
log-likelihood after the prompt, softmaxed over the choices) and on every answer token's
distribution over the vocabulary for generative tasks. Losses (``scores`` are those logits,
``y`` the gold class or token, ``C`` the number of classes):

* ``klu``: KL(uniform || p) = -(1/C) sum_j log(C p_j); its gradient p - 1/C vanishes at uniform.
* ``ice_paper``: the paper's inverse cross-entropy, -log(1 - p_y).
* ``ice_code``: the authors' code: cross-entropy on negated scores, -log softmax(-scores)_y
  (a different number from ``ice_paper`` on the same scores).
* ``entropy``: the negative entropy sum_j p_j log p_j (minimized at uniform), as in TAR.

Presets: ``paper`` samples N = 2 strategies per outer step from SGD and Adam at several
learning rates and batch sizes (the paper does not list its set; ours is in
:data:`PAPER_STRATEGIES`); ``code`` is the authors' script: N = 1, SGD at 1e-4, batch 130.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.func import functional_call
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nftbench.api import Defense, DefenseContext
from nftbench.checkpoint import Replayable
from nftbench.data import IGNORE, encode_examples, example_batches, pad_id, pad_rows
from nftbench.registry import PluginConfig, register_defense
from nftbench.train import OptimConfig, train

STATS_FILE = "sophon_stats.json"
Params = dict[str, torch.Tensor]
Loss = Literal["klu", "ice_paper", "ice_code", "entropy"]


class Strategy(BaseModel):
    """One simulated fine-tuning strategy."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(130, ge=1, description="support examples per inner step")


#: the ``paper`` preset's strategy set (the paper samples optimizer, lr and batch size)
PAPER_STRATEGIES = (Strategy(optimizer="sgd", lr=1e-4, batch_size=32),
                    Strategy(optimizer="sgd", lr=1e-3, batch_size=16),
                    Strategy(optimizer="adam", lr=1e-4, batch_size=32),
                    Strategy(optimizer="adam", lr=1e-3, batch_size=16))
#: the authors' code: one strategy, plain SGD at 1e-4 on 130 support examples
CODE_STRATEGIES = (Strategy(optimizer="sgd", lr=1e-4, batch_size=130),)


class SophonConfig(PluginConfig):
    """SOPHON's knobs; defaults are the authors' classification script's unless noted."""

    preset: Literal["paper", "code"] = Field(
        "paper", description="paper: N = 2 strategies sampled from PAPER_STRATEGIES; code: the "
        "authors' script, N = 1, SGD lr 1e-4 (n_strategies/strategies override either)")
    loss: Loss = Field("klu", description="suppression loss: klu, ice_paper, ice_code, entropy")
    tasks: tuple[str, ...] | None = Field(
        None, description="restricted tasks to suppress (null: every restricted task of the "
        "matrix); the others are held out")
    outer_steps: int = Field(1000, ge=1, description="outer iterations (code 1000, paper 800)")
    inner_steps: int = Field(50, ge=1, description="K: simulated fine-tuning steps")
    n_strategies: int | None = Field(None, ge=1, description="N strategies sampled per outer "
                                     "step (null: the preset's)")
    strategies: tuple[Strategy, ...] | None = Field(None, description="the set sampled from "
                                                    "(null: the preset's)")
    query_batch: int = Field(20, ge=1, description="query examples per inner step")
    lr: float = Field(1e-4, gt=0, description="base learning rate of both outer optimizers")
    alpha: float | None = Field(None, gt=0, description="FTS Adam lr = alpha * lr (null: 3 for "
                                "ICE, 1 otherwise, as the code)")
    beta: float | None = Field(None, gt=0, description="NTR Adam lr = beta * lr (null: 5 for "
                               "ICE, 1 otherwise)")
    grad_clip: float = Field(0.5, gt=0, description="FTS gradient-norm clip")
    ntr_steps: int = Field(1, ge=0, description="NTR steps per outer step (KLU README: 5)")
    ntr_batch: int = Field(32, ge=1, description="NTR corpus sequences per step")
    guard: float | None = Field(0.8, ge=0, le=1, description="stop and restore when the mean "
                                "capability score falls under this (null: no guard)")
    guard_every: int = Field(1, ge=1, description="outer steps between guard checks")
    test_every: int = Field(10, ge=1, description="outer steps between test fine-tunes")
    test_steps: int = Field(20, ge=0, description="test fine-tune steps (AdamW lr 1e-3, batch "
                            "32) on each restricted task; 0 disables")
    seed: int = Field(0, description="strategy sampling and data order")

    @model_validator(mode="after")
    def _enough_strategies(self) -> SophonConfig:
        if self.n_strategies is not None and self.n_strategies > len(self.strategy_set()):
            raise ValueError(f"n_strategies {self.n_strategies} > {len(self.strategy_set())} "
                             "strategies to sample from")
        return self

    def strategy_set(self) -> tuple[Strategy, ...]:
        if self.strategies is not None:
            return self.strategies
        return PAPER_STRATEGIES if self.preset == "paper" else CODE_STRATEGIES

    def n(self) -> int:
        return self.n_strategies or (2 if self.preset == "paper" else 1)

    def alpha_lr(self) -> float:
        return self.lr * (self.alpha or (3.0 if self.loss.startswith("ice") else 1.0))

    def beta_lr(self) -> float:
        return self.lr * (self.beta or (5.0 if self.loss.startswith("ice") else 1.0))


# -- losses ------------------------------------------------------------------------------------

def suppression_loss(scores: torch.Tensor, target: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Mean suppression loss over rows of ``scores`` [n, C] (logits) with gold ``target`` [n]."""
    logp = scores.float().log_softmax(-1)
    if loss == "klu":
        return (-math.log(scores.shape[-1]) - logp.mean(-1)).mean()
    if loss == "ice_paper":
        logp_y = logp.gather(-1, target[:, None]).squeeze(-1).clamp(max=-1e-7)
        return -torch.log(-torch.expm1(logp_y)).mean()  # -log(1 - p_y), stable near p_y = 1
    if loss == "ice_code":
        return F.cross_entropy(-scores.float(), target)
    if loss == "entropy":
        return (logp.exp() * logp).sum(-1).mean()
    raise ValueError(f"unknown suppression loss {loss!r}")


# -- restricted-task batches -------------------------------------------------------------------

class TaskData:
    """Support batches (fine-tuning format) and query batches (what the loss acts on) of one
    restricted task."""

    def __init__(self, examples: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                 seed: int) -> None:
        self.examples = examples
        self.classification = "choices" in examples[0]
        self.encoded = encode_examples(examples, tokenizer)
        self.pad = pad_id(tokenizer)
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.seed = seed
        self._support: dict[int, Replayable[dict[str, torch.Tensor]]] = {}

    def support(self, batch_size: int) -> dict[str, torch.Tensor]:
        return next(self._support_stream(batch_size))

    def _support_stream(self, batch_size: int, skip: int = 0
                        ) -> Replayable[dict[str, torch.Tensor]]:
        if batch_size not in self._support:
            self._support[batch_size] = Replayable(
                lambda: example_batches(self.encoded, batch_size, self.seed, self.pad), skip)
        return self._support[batch_size]

    @functools.cache  # noqa: B019 (one TaskData per stage; tokenizing every query was 9%)
    def _choice_rows(self, i: int) -> list[tuple[list[int], list[int]]]:
        """Example ``i`` encoded once per choice, the choice as its answer."""
        ex = self.examples[i]
        return encode_examples([{**ex, "answer": c} for c in ex["choices"]], self.tokenizer)

    def state(self) -> dict[str, Any]:
        """Where the streams are (for a checkpoint)."""
        return {"query_rng": self.rng.getstate(),
                "support_drawn": {str(b): s.drawn for b, s in self._support.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["query_rng"])
        self._support.clear()
        for b, drawn in state["support_drawn"].items():
            self._support_stream(int(b), skip=drawn)

    def query(self, n: int) -> dict[str, Any]:
        picked = [self.rng.randrange(len(self.examples)) for _ in range(n)]
        if not self.classification:
            rows = [self.encoded[i] for i in picked]
            return {"kind": "generative", **pad_rows(rows, self.pad)}
        # every (example, choice) sequence; the loss reads each choice's log-likelihood
        rows, target, n_choices = [], [], len(self.examples[picked[0]]["choices"])
        for i in picked:
            ex = self.examples[i]
            if len(ex["choices"]) != n_choices:
                raise ValueError("SOPHON needs the same number of choices in every example")
            rows += self._choice_rows(i)
            target.append(ex["label"])
        return {"kind": "classification", "n_choices": n_choices,
                "target": torch.tensor(target), **pad_rows(rows, self.pad)}


def query_loss(model: torch.nn.Module, params: Params, query: dict[str, Any],
               loss: Loss) -> torch.Tensor:
    """The suppression loss of the model with weights ``params`` on a query batch."""
    batch = {k: query[k].to(next(iter(params.values())).device)
             for k in ("input_ids", "attention_mask", "labels")}
    logits = functional_call(model, params, (), {"input_ids": batch["input_ids"],
                                                 "attention_mask": batch["attention_mask"]}
                             ).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    answer = labels != IGNORE
    if query["kind"] == "generative":  # every answer token, over the vocabulary
        return suppression_loss(logits[answer], labels[answer], loss)
    # classification: each choice's summed log-likelihood is its score
    token_logp = logits.float().log_softmax(-1).gather(
        -1, labels.clamp(min=0)[..., None]).squeeze(-1)
    choice_ll = (token_logp * answer).sum(-1).view(-1, query["n_choices"])
    return suppression_loss(choice_ll, query["target"].to(choice_ll.device), loss)


def lm_loss(model: torch.nn.Module, params: Params, batch: dict[str, torch.Tensor]
            ) -> torch.Tensor:
    device = next(iter(params.values())).device
    return functional_call(model, params, (), {k: v.to(device) for k, v in batch.items()}).loss


# -- fine-tuning suppression -------------------------------------------------------------------

class Suppression:
    """First-order MAML over simulated fine-tuning, on one functional copy of the weights (made
    once): memory does not grow with K, and no module is deep-copied. The meta-gradient
    accumulates in the weights' own ``.grad`` (no second buffer the size of the model)."""

    def __init__(self, model: torch.nn.Module, loss: Loss,
                 autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        self.model = model
        self.loss = loss
        self.autocast = autocast  # the matrix's precision (bf16 autocast, or nothing)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.fast = {n: p.detach().clone().requires_grad_(True) for n, p in self.params.items()}

    def simulate(self, strategy: Strategy, data: TaskData, inner_steps: int,
                 query_batch: int) -> float:
        """K simulated fine-tuning steps from the current weights; adds the query loss's
        gradient at each adapted point into the weights' ``.grad``; returns the mean query
        loss."""
        with torch.no_grad():
            for n, p in self.params.items():
                self.fast[n].copy_(p)
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        meta = [p.grad for p in self.params.values()]
        fast = list(self.fast.values())
        opt = (torch.optim.SGD(fast, lr=strategy.lr) if strategy.optimizer == "sgd"
               else torch.optim.Adam(fast, lr=strategy.lr))
        total = 0.0
        for _ in range(inner_steps):
            with self.autocast():
                support = lm_loss(self.model, self.fast, data.support(strategy.batch_size))
            grads = torch.autograd.grad(support, fast)
            for p, g in zip(fast, grads, strict=True):
                p.grad = g
            opt.step()
            with self.autocast():
                q = query_loss(self.model, self.fast, data.query(query_batch), self.loss)
            grads = torch.autograd.grad(q, fast)  # first order: d q / d fast, not d theta
            torch._foreach_add_(meta, grads)
            total += float(q.detach())
        return total / inner_steps

    def apply(self, optimizer: torch.optim.Optimizer, count: int, grad_clip: float) -> float:
        """Average the meta-gradient accumulated in ``.grad`` and step; returns its norm before
        clipping. The gradients are freed after (the next :meth:`simulate` starts from zero)."""
        torch._foreach_div_([p.grad for p in self.params.values()], count)
        norm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm


# -- the defense -------------------------------------------------------------------------------

@register_defense("sophon", version="1")
class Sophon(Defense[SophonConfig]):
    """Non-fine-tunable learning: simulated fine-tuning suppressed, the corpus reinforced."""

    uses_restricted_data = True

    def check(self, matrix: Any) -> list[str]:
        restricted = [t.label for t in matrix.restricted_tasks]
        unknown = [n for n in self.config.tasks or () if n not in restricted]
        return [f"params.tasks names {unknown}, not restricted tasks of this matrix "
                f"({restricted})"] if unknown else []

    def defend(self, ctx: DefenseContext) -> None:
        cfg = self.config
        if ctx.base is None:
            raise ValueError("sophon starts from the dense base release; none was given")
        names = list(cfg.tasks) if cfg.tasks is not None else sorted(ctx.restricted)
        unknown = [n for n in names if n not in ctx.restricted]
        if not names or unknown:
            raise ValueError(f"sophon: tasks {unknown or names} are not restricted tasks of the "
                             f"matrix ({sorted(ctx.restricted)})")
        model, tokenizer = ctx.base.load()
        model.train()
        torch.manual_seed(cfg.seed)
        data = {n: TaskData(ctx.restricted[n], tokenizer, cfg.seed + i)
                for i, n in enumerate(names)}
        # SOPHON's functional loops honour the matrix's precision; its test fine-tunes go
        # through the one training loop, which honours all of ctx.compute
        suppression = Suppression(model, cfg.loss,
                                  functools.partial(ctx.compute.autocast, model.device))
        params = list(suppression.params.values())
        fts_opt = torch.optim.Adam(params, lr=cfg.alpha_lr())
        ntr_opt = torch.optim.Adam(params, lr=cfg.beta_lr())
        rng = random.Random(cfg.seed)
        strategies, n = cfg.strategy_set(), cfg.n()
        log: list[dict[str, Any]] = []
        stats: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "tasks": names,
                                 "held_out": sorted(set(ctx.restricted) - set(names)),
                                 "log": log, "stopped_by_guard": None, "segments": []}

        saved = ctx.checkpoint.load()
        if saved is None:
            first = 1
            corpus = Replayable(lambda: ctx.corpus_batches(cfg.ntr_batch, cfg.seed))
            stats["capability_start"] = self.capability(ctx, model, tokenizer)
        else:  # resume where a killed run left off, exactly as it would have gone on
            first = saved["step"] + 1
            model.load_state_dict(saved["model"])
            fts_opt.load_state_dict(saved["fts_opt"])
            ntr_opt.load_state_dict(saved["ntr_opt"])
            rng.setstate(saved["rng"])
            torch.set_rng_state(saved["torch_rng"])
            for name, state in saved["data"].items():
                data[name].restore(state)
            corpus = Replayable(lambda: ctx.corpus_batches(cfg.ntr_batch, cfg.seed),
                                skip=saved["corpus_drawn"])
            log += saved["log"]
            stats["capability_start"] = saved["capability_start"]
            stats["segments"] = saved["segments"]
        # the last weights that passed the guard (kept only where a guard runs: a model's size)
        backup = [p.detach().clone() for p in params] if cfg.guard is not None else []
        if saved is not None:
            with torch.no_grad():
                for b, p in zip(backup, saved["backup"], strict=True):
                    b.copy_(p)
        segment = {"from_step": first, "to_step": first - 1, "wall_s": 0.0}
        stats["segments"].append(segment)
        started = time.perf_counter()

        def checkpoint(step: int) -> dict[str, Any]:
            segment["to_step"], segment["wall_s"] = step, time.perf_counter() - started
            return {"step": step, "model": model.state_dict(),
                    "fts_opt": fts_opt.state_dict(), "ntr_opt": ntr_opt.state_dict(),
                    "backup": backup, "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                    "data": {name: d.state() for name, d in data.items()},
                    "corpus_drawn": corpus.drawn, "log": log,
                    "capability_start": stats["capability_start"],
                    "segments": stats["segments"]}

        bar = tqdm(range(first, cfg.outer_steps + 1), desc="sophon", unit="outer",
                   initial=first - 1, total=cfg.outer_steps, disable=not ctx.progress,
                   leave=False)
        for step in bar:
            task = names[(step - 1) % len(names)]
            entry: dict[str, Any] = {"step": step, "task": task}
            sampled = rng.sample(range(len(strategies)), n)
            losses = [suppression.simulate(strategies[i], data[task], cfg.inner_steps,
                                           cfg.query_batch) for i in sampled]
            entry["strategies"] = sampled
            entry["suppression_loss"] = sum(losses) / len(losses)
            entry["fts_grad_norm"] = suppression.apply(fts_opt, len(losses) * cfg.inner_steps,
                                                       cfg.grad_clip)
            ntr = []
            for _ in range(cfg.ntr_steps):
                with ctx.compute.autocast(model.device):
                    loss = model(**{k: v.to(model.device)
                                    for k, v in next(corpus).items()}).loss
                loss.backward()
                ntr_opt.step()
                ntr_opt.zero_grad(set_to_none=True)
                ntr.append(float(loss.detach()))
            entry["reinforcement_loss"] = sum(ntr) / len(ntr) if ntr else None
            if not all(math.isfinite(v) for v in losses + ntr):
                raise FloatingPointError(f"SOPHON diverged at outer step {step}")
            if cfg.guard is not None and step % cfg.guard_every == 0:
                capability = self.capability(ctx, model, tokenizer)
                entry["capability"] = capability
                if capability is not None and capability < cfg.guard:
                    with torch.no_grad():
                        for p, b in zip(params, backup, strict=True):
                            p.copy_(b)
                    stats["stopped_by_guard"] = step
                    log.append(entry)
                    break
                with torch.no_grad():
                    for p, b in zip(params, backup, strict=True):
                        b.copy_(p)
            if cfg.test_steps and (step % cfg.test_every == 0 or step == cfg.outer_steps):
                entry["test_finetune"] = self.test_finetune(ctx, model, tokenizer, cfg)
            log.append(entry)
            bar.set_postfix(sup=f"{entry['suppression_loss']:.3f}",
                            ntr=f"{entry['reinforcement_loss'] or 0:.3f}")
            if step < cfg.outer_steps and ctx.checkpoint.due():
                ctx.checkpoint.save(checkpoint(step))
        bar.close()
        segment["to_step"] = log[-1]["step"] if log else first - 1
        segment["wall_s"] = time.perf_counter() - started
        stats["outer_steps_done"] = log[-1]["step"] if log else 0
        stats["compute_s"] = sum(s["wall_s"] for s in stats["segments"])
        stats["capability_end"] = self.capability(ctx, model, tokenizer)
        ctx.save_release(model)
        (ctx.private_dir / STATS_FILE).write_text(json.dumps(stats, indent=1))

    def build_log(self, private_dir: Path) -> list[dict[str, Any]]:
        """The run's trajectory from ``sophon_stats.json``: the capability at the start and at
        every guard check (with the guard it was held to), each outer step's suppression loss
        on the task it suppressed, and the probe fine-tunes' scores every ``test_every``."""
        stats_file = private_dir / STATS_FILE
        if not stats_file.exists():
            return []
        stats = json.loads(stats_file.read_text())
        guard = stats["config"].get("guard")
        rows: list[dict[str, Any]] = []

        def capability(step: int, value: float | None) -> None:
            if value is None:  # no capability tasks in the matrix
                return
            rows.append({"step": step, "metric": "capability", "value": value})
            if guard is not None:
                rows.append({"step": step, "metric": "capability:threshold", "value": guard})

        capability(0, stats.get("capability_start"))
        for entry in stats["log"]:
            step = entry["step"]
            rows.append({"step": step, "metric": "suppression_loss",
                         "value": entry["suppression_loss"], "task": entry["task"]})
            if "capability" in entry:
                capability(step, entry["capability"])
            for task, score in (entry.get("test_finetune") or {}).items():
                rows.append({"step": step, "metric": "probe_score", "value": score,
                             "task": task})
        return rows

    @staticmethod
    def capability(ctx: DefenseContext, model: PreTrainedModel,
                   tokenizer: PreTrainedTokenizerBase) -> float | None:
        """Mean score over the matrix's capability tasks (None without any)."""
        if ctx.evaluate_capability is None:
            return None
        with torch.no_grad():
            scores = ctx.evaluate_capability(model.eval(), tokenizer)
        model.train()
        return sum(scores.values()) / len(scores) if scores else None

    @staticmethod
    def test_finetune(ctx: DefenseContext, model: PreTrainedModel,
                      tokenizer: PreTrainedTokenizerBase, cfg: SophonConfig) -> dict[str, float]:
        """Each restricted task's score after a short fine-tune of a copy (a diagnostic; the
        defense never trains on these scores)."""
        if ctx.evaluate is None:
            return {}
        out = {}
        for name, examples in sorted(ctx.restricted.items()):
            probe = copy.deepcopy(model)
            batches = example_batches(encode_examples(examples, tokenizer), 32, cfg.seed,
                                      pad_id(tokenizer))
            train(probe, batches, cfg.test_steps, OptimConfig(optimizer="adamw", lr=1e-3),
                  compute=ctx.compute, progress=False)
            with torch.no_grad():
                out |= ctx.evaluate(probe.eval(), tokenizer, [name])
            del probe
        model.train()
        return out

