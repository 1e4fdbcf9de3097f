"""The one training loop: pre-training, defenses and adversaries all call :func:`train`.

It owns what every caller needs and nothing more: optimizer and schedule from an
:class:`OptimConfig`, gradient clipping, a gradient hook (PMP zeroes its complement there),
evaluation callbacks at budget points, divergence detection, and compute accounting (steps,
tokens, estimated FLOPs, wall seconds, peak memory) at every point.

FLOPs (documented in the README): per trained token, a forward pass costs 2 multiply-adds per
matmul parameter, the backward pass through activations another 2 for every matmul parameter
(frozen or not, because gradients must flow through frozen layers to reach trainable ones), and
the weight gradients 2 more for each *trainable* matmul parameter:
``flops = tokens * (4 * N_matmul + 2 * N_trainable_matmul)``; full fine-tuning gives the usual
``6 * N * tokens``. Embedding lookups (tokens, learned positions) are not matmuls and are
excluded from N; a tied output head is a matmul over the token table and counts, once.
"""

from __future__ import annotations

import functools
import inspect
import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from nftbench.data import IGNORE
from nftbench.optim import OptimConfig, build_optimizer, lr_factor


def count_matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts, excluding lookup tables: the input embeddings and
    every other nn.Embedding (GPT-2's and OPT's learned positions). A tied output head counts,
    once: it is a matmul over the table."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    lookups = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    skip = {id(p) for m in [*lookups, embed] if m is not None for p in m.parameters()}
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is not None:  # a tied lm_head *is* a matmul even though it shares the table
        skip -= {id(p) for p in out.parameters()}
    total = trainable = 0
    for p in model.parameters():
        if id(p) in skip:
            continue
        # bitsandbytes Params4bit packs two weights per byte; its quant_state knows the real shape
        quant_state = getattr(p, "quant_state", None)
        n = math.prod(quant_state.shape) if quant_state is not None else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


@dataclass
class Point:
    """Compute accounting at one budget point, plus whatever the evaluation callback returned."""

    step: int
    tokens: int
    flops: float
    wall_s: float
    peak_mem_mb: float
    loss: float | None
    scores: dict[str, float] = field(default_factory=dict)
    #: per-item outcomes of the scores, where the evaluation kept them (see ``Scores``)
    items: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    flops: float
    wall_s: float  # training only
    eval_s: float = 0.0  # spent in on_eval
    diverged_at: int | None = None
    losses: list[float] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is the process peak in KiB on Linux: an upper bound for the CPU case.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def _takes_logits_to_keep(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal-LM loss of ``batch`` (mean cross-entropy over labelled tokens), computing the
    output head only at the positions that predict a label.

    Fine-tuning examples carry a loss on a few answer tokens after a longer prompt; the output
    head (vocabulary x hidden, a third of the tiny model's matmul work) is wasted on every
    other position. Hugging Face causal LMs take ``logits_to_keep`` (positions to compute
    logits for), so the head runs on the union of those positions across the batch, and the
    loss is the one ``model(**batch).loss`` gives. Batches labelled everywhere (pre-training)
    and models without ``logits_to_keep`` take the plain path."""
    labels = batch.get("labels")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    if labels is None or not _takes_logits_to_keep(type(base)):
        return model(**batch).loss
    target = labels[:, 1:]  # position p predicts token p + 1
    keep = (target != IGNORE).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == target.shape[1]:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), target[:, keep].flatten(), ignore_index=IGNORE)


def train(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    optim: OptimConfig,
    *,
    params: Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]] | None = None,
    eval_at: Sequence[int] = (),
    on_eval: Callable[[int], dict[str, float]] | None = None,
    grad_hook: Callable[[], None] | None = None,
    after_step: Callable[[int], bool | None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``steps`` optimizer steps on ``batches``.

    ``params`` defaults to every parameter that requires grad (or pass param groups).
    ``on_eval(step)`` runs at each step in ``eval_at`` (0 = before training; model in eval mode)
    and its scores are stored on that point. ``grad_hook()`` runs after backward, before
    clipping; ``after_step(step)`` after the optimizer step, and returning True stops training
    there (an early-stopping rule). A non-finite loss stops training and sets ``diverged_at``;
    evaluation points after it are not produced.
    """
    device = next(model.parameters()).device
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optim)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]
    n_all, n_train = count_matmul_params(model)
    flops_per_token = 4 * n_all + 2 * n_train
    eval_at = sorted(set(eval_at))
    result = TrainResult(steps=0, tokens=0, flops=0.0, wall_s=0.0)
    last_loss: float | None = None
    start = time.perf_counter()
    eval_time = 0.0

    def record(step: int) -> None:
        nonlocal eval_time
        t0 = time.perf_counter()
        scores: dict[str, float] = {}
        if on_eval is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                scores = on_eval(step)
            model.train(was_training)
        eval_time += time.perf_counter() - t0
        result.points.append(Point(
            step=step, tokens=result.tokens, flops=result.flops,
            wall_s=time.perf_counter() - start - eval_time,  # training time only
            peak_mem_mb=peak_memory_mb(device), loss=last_loss, scores=dict(scores),
            items=dict(getattr(scores, "per_item", {})),
        ))

    if 0 in eval_at:
        record(0)
    model.train()
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False, disable=not progress, unit="step")
    for step in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        factor = lr_factor(step - 1, steps, optim)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        loss = lm_loss(model, batch)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            result.diverged_at = step
            result.losses.append(loss_value)
            break
        loss.backward()
        if grad_hook is not None:
            grad_hook()
        if optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stop = after_step(step) if after_step is not None else False
        n_tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch \
            else batch["input_ids"].numel()
        result.steps = step
        result.tokens += n_tokens
        result.flops += float(flops_per_token) * n_tokens
        result.losses.append(loss_value)
        last_loss = loss_value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if step in eval_at:
            record(step)
        if stop:
            break
    bar.close()
    model.eval()
    result.wall_s = time.perf_counter() - start - eval_time
    result.eval_s = eval_time
    return result
