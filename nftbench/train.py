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
excluded from N; a tied output head is a matmul over the token table and counts, once. These are
the model's FLOPs, the same whatever the machine does: gradient accumulation splits the same tokens
into micro-batches, and gradient checkpointing's second forward pass through each block is
counted apart (``recompute_flops``: ``2 * N_checkpointed_matmul`` per token), so hardware FLOPs
are ``flops + recompute_flops``.

How the loop runs on the machine (precision, micro-batches, checkpointing, compile, TF32) is a
:class:`ComputeConfig`, the matrix's ``compute`` block.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from nftbench.data import IGNORE
from nftbench.optim import OptimConfig, build_optimizer, lr_factor


class ComputeConfig(BaseModel):
    """How the one training loop runs on the machine. Only ``precision`` changes the
    arithmetic on purpose; the rest compute the same update another way, but each changes
    float reductions (or kernels), so every field set away from its default enters the keys of
    the stages that train (as ``threads`` does), and defaults leave every key as it was."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32; or bf16: forward and backward under bf16 autocast while "
        "weights, gradients and optimizer states stay in the model's dtype (keep model.dtype "
        "float32 for fp32 master weights; model.dtype bfloat16 trains purely in bf16)")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward/backward pass: a step's batch_size "
        "sequences are split into micro-batches whose gradients accumulate, each weighted by "
        "its share of the batch's labelled tokens, so the step is the full batch's (null: one "
        "pass per step)")
    gradient_checkpointing: bool = Field(
        False, description="keep only each block's input and recompute the block in the "
        "backward pass (Hugging Face's, non-reentrant): activation memory for one more "
        "forward pass, counted as recompute_flops")
    compile: bool = Field(False, description="torch.compile the model's forward (the first "
                          "steps pay for compilation; worth it for long runs on GPUs)")
    tf32: bool = Field(True, description="let float32 matmuls use TF32 on CUDA GPUs that have "
                       "it (Ampere and later; no effect on CPUs)")

    def key_payload(self) -> dict[str, Any]:
        """The fields away from their defaults (empty at the defaults: no key changes)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of a forward pass under this precision."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def apply(self, device: torch.device) -> None:
        """Process-wide torch settings a stage on ``device`` runs under (set at stage start,
        like the thread count): TF32 matmuls on CUDA."""
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32


def checkpointed_matmul_params(model: torch.nn.Module) -> int:
    """Matmul parameters inside the blocks that gradient checkpointing recomputes (Hugging
    Face's ``GradientCheckpointingLayer``s: the decoder blocks)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    seen: set[int] = set()
    n = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += _numel(p)
    return n


def _numel(p: torch.nn.Parameter) -> int:
    # bitsandbytes Params4bit packs two weights per byte; its quant_state knows the real shape
    quant_state = getattr(p, "quant_state", None)
    return math.prod(quant_state.shape) if quant_state is not None else p.numel()


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
        n = _numel(p)
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
    #: gradient checkpointing's second forward passes, apart from ``flops`` (0 without it)
    recompute_flops: float = 0.0
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
    recompute_flops: float = 0.0  # gradient checkpointing's extra forward passes
    losses: list[float] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def _proc_status_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (a stage's): CUDA's allocator peak, or on Linux the
    process's resident high-water mark (``/proc/self/clear_refs``); elsewhere the peak stays
    the process's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def resident_memory_mb() -> float | None:
    """The process's resident memory now (Linux), or None."""
    return _proc_status_mb("VmRSS")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last :func:`reset_peak_memory`: allocated CUDA memory on a GPU;
    on the CPU, the process's resident high-water mark (VmHWM; ``ru_maxrss``, the process's
    whole-life peak, where /proc is missing)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def _takes_logits_to_keep(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor],
            forward: Callable[..., Any] | None = None) -> torch.Tensor:
    """The causal-LM loss of ``batch`` (mean cross-entropy over labelled tokens), computing the
    output head only at the positions that predict a label.

    Fine-tuning examples carry a loss on a few answer tokens after a longer prompt; the output
    head (vocabulary x hidden, a third of the tiny model's matmul work) is wasted on every
    other position. Hugging Face causal LMs take ``logits_to_keep`` (positions to compute
    logits for), so the head runs on the union of those positions across the batch, and the
    loss is the one ``model(**batch).loss`` gives. Batches labelled everywhere (pre-training)
    and models without ``logits_to_keep`` take the plain path. ``forward`` runs the model in
    place of ``model(...)`` (its compiled form)."""
    forward = model if forward is None else forward
    labels = batch.get("labels")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    if labels is None or not _takes_logits_to_keep(type(base)):
        return forward(**batch).loss
    target = labels[:, 1:]  # position p predicts token p + 1
    keep = (target != IGNORE).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == target.shape[1]:
        return forward(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = forward(**inputs, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), target[:, keep].flatten(), ignore_index=IGNORE)


def micro_batches(batch: dict[str, torch.Tensor], size: int | None
                  ) -> list[tuple[dict[str, torch.Tensor], float]]:
    """``batch`` split into micro-batches of at most ``size`` sequences, each with the weight
    that makes the sum of their mean losses the whole batch's mean loss: its share of the
    batch's labelled target tokens (a causal LM's loss is a mean over those)."""
    n = batch["input_ids"].shape[0]
    if size is None or size >= n:
        return [(batch, 1.0)]
    parts = [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]
    if "labels" in batch:
        counts = [int((p["labels"][:, 1:] != IGNORE).sum()) for p in parts]
    else:  # labels are the inputs: every position but the first is a target
        counts = [p["input_ids"][:, 1:].numel() for p in parts]
    total = sum(counts)
    return [(p, c / total) for p, c in zip(parts, counts, strict=True) if c]


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
    compute: ComputeConfig | None = None,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``steps`` optimizer steps on ``batches``.

    ``params`` defaults to every parameter that requires grad (or pass param groups).
    ``on_eval(step)`` runs at each step in ``eval_at`` (0 = before training; model in eval mode)
    and its scores are stored on that point. ``grad_hook()`` runs after backward, before
    clipping; ``after_step(step)`` after the optimizer step, and returning True stops training
    there (an early-stopping rule). A non-finite loss stops training and sets ``diverged_at``;
    evaluation points after it are not produced. ``compute`` says how the steps run on the
    machine (precision, micro-batches, checkpointing, compile); default: fp32, whole batches.
    """
    compute = compute or ComputeConfig()
    device = next(model.parameters()).device
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, optim)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    clip_params = [p for g in optimizer.param_groups for p in g["params"]]
    n_all, n_train = count_matmul_params(model)
    flops_per_token = 4 * n_all + 2 * n_train
    recompute_per_token = 0
    eval_at = sorted(set(eval_at))
    result = TrainResult(steps=0, tokens=0, flops=0.0, wall_s=0.0)
    last_loss: float | None = None
    # compiled: the module's forward (sharing its parameters); the loss's Python stays eager
    forward = torch.compile(model) if compute.compile else model
    start = time.perf_counter()
    eval_time = 0.0

    def record(step: int) -> None:
        nonlocal eval_time
        t0 = time.perf_counter()
        scores: dict[str, float] = {}
        if on_eval is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():  # (checkpointing is inactive in eval mode)
                scores = on_eval(step)
            model.train(was_training)
        eval_time += time.perf_counter() - t0
        result.points.append(Point(
            step=step, tokens=result.tokens, flops=result.flops,
            wall_s=time.perf_counter() - start - eval_time,  # training time only
            peak_mem_mb=peak_memory_mb(device), loss=last_loss, scores=dict(scores),
            items=dict(getattr(scores, "per_item", {})), recompute_flops=result.recompute_flops,
        ))

    if 0 in eval_at:
        record(0)
    with checkpointing(model, compute.gradient_checkpointing):
        if is_checkpointing(model):  # asked here, or by the caller (QLoRA's own option)
            recompute_per_token = 2 * checkpointed_matmul_params(model)
        model.train()
        bar = tqdm(range(1, steps + 1), desc=desc, leave=False, disable=not progress,
                   unit="step")
        for step in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            factor = lr_factor(step - 1, steps, optim)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            parts = micro_batches(batch, compute.micro_batch_size)
            loss_sum = torch.zeros((), device=device)
            for part, weight in parts:
                with compute.autocast(device):
                    loss = lm_loss(model, part, forward)
                if len(parts) > 1:  # one pass per step stays bit for bit the unsplit loop
                    loss = loss * weight
                loss.backward()
                loss_sum += loss.detach().float()
            loss_value = loss_sum.item()
            if not math.isfinite(loss_value):  # no optimizer step on a non-finite loss
                optimizer.zero_grad(set_to_none=True)
                result.diverged_at = step
                result.losses.append(loss_value)
                break
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
            result.recompute_flops += float(recompute_per_token) * n_tokens
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


def is_checkpointing(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    # transformers 5.x names it "activation checkpointing" (the "gradient" names are deprecated)
    if hasattr(type(base), "is_activation_checkpointing"):
        return bool(base.is_activation_checkpointing)
    return bool(getattr(base, "is_gradient_checkpointing", False))


@contextlib.contextmanager
def checkpointing(model: torch.nn.Module, on: bool) -> Iterator[None]:
    """Hugging Face gradient checkpointing switched on for the block (if ``on`` and not on
    already), and off again after: the release never carries it. It acts only in training
    mode, so evaluation inside the block runs the plain forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    if not on or is_checkpointing(model):
        yield
        return
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing "
                         "(compute.gradient_checkpointing)")
    use_cache = getattr(base.config, "use_cache", None)
    new_names = hasattr(base, "activation_checkpointing_enable")
    if new_names:
        base.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False  # a cache is meaningless while training, and HF warns
    try:
        yield
    finally:
        if new_names:
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()
        base.config.use_cache = use_cache
