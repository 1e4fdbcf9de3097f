"""PMP: Private Mask Pre-Training (Wang et al., arXiv 2602.00446), as the paper and the authors'
public pre-training script describe it.

1. Save theta_0, the random initialization (the same one the dense base starts from).
2. Stage I, early-bird mask discovery: dense AdamW training (no weight decay, no schedule,
   micro-batches of 4) at the learning rate of pre-training (the script has one rate, `eta`,
   for both stages) that scores every element by |grad| after each backward pass and takes one
   exact global top-k over all parameters (k = rho * elements); it stops when the IoU between
   consecutive masks is >= 0.99 for 5 consecutive steps, else after 500 steps with the last
   mask. Elements with equal scores (zero-gradient embedding rows of tokens absent from the
   micro-batch) are ranked by a fixed seeded random draw, so no token is excluded for its id.
   Options: an EMA of the scores over batches (a single batch's gradient is noisy, so the IoU
   rule rarely fires without it), |grad * w| scores, a per-tensor quota, and tensors excluded
   from masking.
3. Rewind every weight to theta_0.
4. Stage II, ticket training: the dense base's pre-training budget and optimizer (the same data,
   tokens and settings as `none`), with the complement's gradients zeroed after every backward
   pass and the complement held out of weight decay. The complement either stays exactly at
   theta_0 (`frozen`, the paper's W* = W_m* + W_{1-m}^0) or is projected onto a global L2 ball
   of radius R every tau steps (`projected`, the authors' script; with R = 2 this shrinks it
   toward zero, which reveals the mask in the released weights).
5. Release the dense weights; the bit-packed mask and the statistics stay private.

The mask is over tensors, not names: a table tied between the input embeddings and the output
head (GPT-2, Gemma, Qwen2.5-0.5B) is one tensor, scored, selected, masked and restored once,
under its first ``named_parameters`` name.

``mask: random`` is the ablation: a uniformly random mask of the same ratio, no Stage I.
``mask: random_rows`` is the authors' second script (`frozen_un.py`): a random 30% of the output
rows of every linear layer (the output head included) frozen at theta_0, embeddings and norms
trained; no Stage I.

Three registered variants, named for what they are:

- ``pmp``: the authors' pre-training script (one micro-batch's |grad|, one global top-k);
- ``pmp_intent``: the paper's intent, a mask that stops changing early (an EMA 0.98 of |grad|,
  rho of every tensor, scoring batches of 32): consecutive masks reach IoU 0.93-0.95 and no
  tensor is emptied;
- ``pmp_rows``: the authors' second script, random output rows frozen.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from nftbench.api import AttackOutcome, Authorization, Defense, DefenseContext
from nftbench.masks import (
    MASK_FILE,
    Mask,
    align_mask,
    global_topk,
    load_mask,
    mask_iou,
    save_mask,
)
from nftbench.masks import attack_diagnostics as mask_attack_diagnostics
from nftbench.registry import PluginConfig, register_defense
from nftbench.train import OptimConfig, train

STATS_FILE = "pmp_stats.json"


class PMPConfig(PluginConfig):
    """PMP's knobs; defaults are the authors' script's unless noted."""

    rho: float = Field(0.5, gt=0, le=1, description="trainable fraction of the elements (the "
                       "paper's mask ratio; the authors use 0.5 and 0.9)")
    complement: Literal["frozen", "projected"] = Field(
        "frozen", description="frozen: stays at theta_0 (the paper); projected: L2-ball "
        "projection of radius `radius` every `tau` steps (the authors' script)")
    mask: Literal["early_bird", "random", "random_rows"] = Field(
        "early_bird", description="early_bird: Stage I gradient scores; random: ablation, a "
        "uniformly random mask of the same ratio; random_rows: rho of every linear layer's "
        "output rows train, the rest stay at theta_0, everything else trains (frozen_un.py)")
    ties: Literal["random", "position"] = Field(
        "random", description="order of elements with equal scores: a fixed seeded random "
        "draw, or position (the former behaviour: late token ids left out first)")
    eb_max_steps: int = Field(500, ge=1, description="Stage I: at most this many steps")
    eb_iou: float = Field(0.99, gt=0, le=1, description="Stage I: IoU of consecutive masks ...")
    eb_patience: int = Field(5, ge=1, description="... reached this many steps in a row stops")
    eb_lr: float | None = Field(
        None, gt=0, description="Stage I AdamW lr (no decay, no schedule); null: the pre-training "
        "optimizer's lr, as the script uses one rate for both stages")
    eb_batch_size: int = Field(4, ge=1, description="Stage I micro-batch (sequences)")
    score: Literal["grad", "grad_weight"] = Field(
        "grad", description="element score: |grad| (the script) or |grad * w|")
    ema: float | None = Field(None, ge=0, lt=1, description="EMA decay of the scores over "
                              "steps (null: the current batch only, as the script)")
    quota: Literal["global", "per_tensor"] = Field(
        "global", description="global: one top-k over all parameters (the script); per_tensor: "
        "rho of every tensor")
    # By module type, the same on every architecture: every lookup table (tokens, and learned
    # positions: GPT-2's wpe, OPT's embed_positions) plus the output head (tied: the token
    # table itself), and every norm layer, weight and bias; what is left is the linear layers.
    # On Llama these are the tensors the former rule chose by name (embed_tokens, lm_head, *norm).
    exclude: tuple[Literal["embeddings", "norms"], ...] = Field(
        (), description="tensors kept out of the mask and trained densely, chosen by module "
        "type (embeddings: every nn.Embedding, positions included, and the output head; "
        "norms: every normalization layer); the script excludes nothing; rho applies to the "
        "rest")
    tau: int = Field(400, ge=1, description="(projected) steps between projections (the "
                     "script's effective value: its command-line default overrides the 200 of "
                     "its dataclass)")
    radius: float = Field(2.0, gt=0, description="(projected) L2 radius of the complement")
    log_every: int = Field(50, ge=1, description="steps between complement-norm records")


PMPConfigT = TypeVar("PMPConfigT", bound=PMPConfig)


#: normalization layers: torch's, and any class named like one (Hugging Face's LlamaRMSNorm,
#: GemmaRMSNorm, ... derive from nn.Module directly)
NORMS = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm,
         torch.nn.modules.batchnorm._NormBase)
NORM_NAME = re.compile(r"(Layer|RMS|Group|Batch)Norm")


def exempt(model: PreTrainedModel, exclude: tuple[str, ...]) -> set[str]:
    """The parameters ``exclude`` keeps out of the mask (see ``PMPConfig.exclude``), by module
    type, under ``named_parameters``'s names (a tied table once)."""
    modules: list[torch.nn.Module] = []
    if "embeddings" in exclude:
        modules += [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        modules += [m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                    if m is not None]
    if "norms" in exclude:
        modules += [m for m in model.modules()
                    if isinstance(m, NORMS) or NORM_NAME.search(type(m).__name__)]
    ids = {id(p) for m in modules for p in m.parameters(recurse=False)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def select_mask(scores: dict[str, torch.Tensor], cfg: PMPConfig, skip: set[str],
                tiebreak: dict[str, torch.Tensor] | None = None) -> Mask:
    """The ticket: top rho of the scores (globally or per tensor), equal scores ordered by
    ``tiebreak``; skipped tensors all in."""
    scored = {n: s for n, s in scores.items() if n not in skip}
    if cfg.quota == "global":
        mask = global_topk(scored, cfg.rho, tiebreak)
    else:
        mask = {n: global_topk({n: s}, cfg.rho, tiebreak and {n: tiebreak[n]})[n]
                for n, s in scored.items()}
    mask.update({n: torch.ones_like(scores[n], dtype=torch.bool) for n in skip})
    return {n: mask[n] for n in scores}  # parameter order


def random_rows(model: torch.nn.Module, rho: float, gen: torch.Generator) -> Mask:
    """frozen_un.py's mask: in every linear layer, ``max(1, int(out * (1 - rho)))`` output rows
    drawn at random are frozen; every other parameter trains. A linear layer is found by type:
    nn.Linear (rows are outputs) or GPT-2's Conv1D (columns are). A tied output head is a
    linear layer over the token table, so that table loses rows (tokens) too, as the script
    (which walks nn.Linear modules) would do on a tied model."""
    freeze = round(1 - rho, 9)  # (1 - 0.7 is 0.30000000000000004)
    out_dim = {id(m.weight): 1 if isinstance(m, Conv1D) else 0 for m in model.modules()
               if isinstance(m, torch.nn.Linear | Conv1D)}
    mask = {}
    for name, p in model.named_parameters():  # a tied table once
        keep = torch.ones(p.shape, dtype=torch.bool)
        dim = out_dim.get(id(p))
        if dim is not None and freeze > 0:
            n = p.shape[dim]
            rows = torch.randperm(n, generator=gen)[:max(1, int(n * freeze))]
            keep.index_fill_(dim, rows, False)
        mask[name] = keep
    return mask


@register_defense("pmp", version="3")
class PMP(Defense[PMPConfigT]):
    """Private Mask Pre-Training: train a sparse ticket found early, release dense weights."""

    authorized_tuning = True  # the owner tunes only the ticket (its private mask)

    def defend(self, ctx: DefenseContext) -> None:
        cfg, pre = self.config, ctx.pretrain
        model = ctx.init_model(pre.seed)  # theta_0 of the dense base too
        params = dict(model.named_parameters())
        skip = exempt(model, cfg.exclude)
        stats: dict = {"config": cfg.model_dump(mode="json")}

        gen = torch.Generator().manual_seed(pre.seed)
        if cfg.mask == "random":
            mask = select_mask({n: torch.rand(p.shape, generator=gen) for n, p in params.items()},
                               cfg, skip)
        elif cfg.mask == "random_rows":
            mask = random_rows(model, cfg.rho, gen)
        else:
            theta_0 = {n: p.detach().clone() for n, p in params.items()}
            mask, stats["stage1"] = self.early_bird(model, ctx, skip)
            with torch.no_grad():  # rewind to theta_0 (lottery-ticket rewinding to step 0)
                for n, p in params.items():
                    p.copy_(theta_0[n])
            del theta_0  # a model's size, not needed in Stage II

        ticket = TicketHooks(model, mask)
        norms: list[tuple[int, float]] = [(0, ticket.complement_norm())]

        def hold_complement(step: int) -> None:
            if cfg.complement == "projected" and step % cfg.tau == 0:
                ticket.project(cfg.radius)
            ticket.after_step(step)
            if step % cfg.log_every == 0:
                norms.append((step, ticket.complement_norm()))

        result = train(model, ctx.corpus_batches(pre.batch_size, pre.seed), pre.steps,
                       pre.optim(), grad_hook=ticket.grad_hook, after_step=hold_complement,
                       compute=ctx.compute, desc="pmp stage II", progress=ctx.progress)
        if result.diverged:
            raise FloatingPointError(f"PMP stage II diverged at step {result.diverged_at}")
        stats["stage2"] = {"steps": result.steps, "tokens": result.tokens, "flops": result.flops,
                           "losses": result.losses[:: max(1, len(result.losses) // 200)],
                           "complement_norm": norms}
        stats["trained_fraction"] = {n: float(m.float().mean()) for n, m in mask.items()}
        stats["total_fraction"] = sum(int(m.sum()) for m in mask.values()) / sum(
            m.numel() for m in mask.values())
        ctx.save_release(model)
        save_mask(mask, ctx.private_dir / MASK_FILE)
        (ctx.private_dir / STATS_FILE).write_text(json.dumps(stats, indent=1))

    def attack_diagnostics(self, private_dir: Path, outcome: AttackOutcome) -> dict[str, Any]:
        """The ticket against the attack: a guessed mask's IoU, the update's share on it."""
        return mask_attack_diagnostics(load_mask(private_dir / MASK_FILE), outcome)

    def build_log(self, private_dir: Path) -> list[dict[str, Any]]:
        """From ``pmp_stats.json``: Stage I's IoU of consecutive masks at each step (with the
        early-bird threshold), Stage II's training loss and the complement's norm, each on
        its own stage's steps."""
        stats_file = private_dir / STATS_FILE
        if not stats_file.exists():
            return []
        stats = json.loads(stats_file.read_text())
        rows: list[dict[str, Any]] = []
        stage1 = stats.get("stage1")
        if stage1:  # a mask is checked after every step; IoU from the second check on
            for i, iou in enumerate(stage1["iou"]):
                rows += [{"step": i + 2, "metric": "stage1_mask_iou", "value": iou},
                         {"step": i + 2, "metric": "stage1_mask_iou:threshold",
                          "value": stats["config"]["eb_iou"]}]
        stage2 = stats.get("stage2", {})
        every = max(1, stage2.get("steps", 0) // 200)  # the losses kept: every ``every``-th
        rows += [{"step": i * every + 1, "metric": "stage2_loss", "value": loss}
                 for i, loss in enumerate(stage2.get("losses", []))]
        rows += [{"step": step, "metric": "stage2_complement_norm", "value": norm}
                 for step, norm in stage2.get("complement_norm", [])]
        return rows

    def authorize(self, private_dir: Path) -> Callable[[PreTrainedModel], Authorization]:
        """The owner's tuning: only the ticket's elements move, the complement stays as
        released (its gradients zeroed, and weight decay undone on it)."""
        mask = load_mask(private_dir / MASK_FILE)

        def hooks(model: PreTrainedModel) -> Authorization:
            ticket = TicketHooks(model, mask)
            return Authorization(grad_hook=ticket.grad_hook, after_step=ticket.after_step)

        return hooks

    def early_bird(self, model: torch.nn.Module, ctx: DefenseContext,
                   skip: set[str]) -> tuple[Mask, dict]:
        """Stage I: dense training that scores elements until the mask stops changing."""
        cfg = self.config
        params = dict(model.named_parameters())
        state: dict = {"scores": None, "mask": None, "streak": 0, "iou": [], "stop": None}
        tiebreak = None
        if cfg.ties == "random":  # one fixed draw, so equal scores rank alike at every step
            gen = torch.Generator().manual_seed(ctx.pretrain.seed + 2)
            tiebreak = {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}

        def score() -> None:  # after backward (a uniform clip scale leaves top-k unchanged)
            if cfg.ema is None:  # the last batch's scores go before this batch's are made
                state["scores"] = None
            now = {n: (p.grad * p if cfg.score == "grad_weight" else p.grad).detach().abs()
                   for n, p in params.items()}
            prev = state["scores"]
            state["scores"] = now if prev is None or cfg.ema is None else {
                n: cfg.ema * prev[n] + (1 - cfg.ema) * now[n] for n in now}

        def check(step: int) -> bool:
            mask = select_mask(state["scores"], cfg, skip, tiebreak)
            if state["mask"] is not None:
                iou = mask_iou(mask, state["mask"])
                state["iou"].append(iou)
                state["streak"] = state["streak"] + 1 if iou >= cfg.eb_iou else 0
            state["mask"] = mask
            if state["streak"] >= cfg.eb_patience:
                state["stop"] = step
                return True
            return False

        lr = cfg.eb_lr if cfg.eb_lr is not None else ctx.pretrain.optim().lr
        optim = OptimConfig(optimizer="adamw", lr=lr, weight_decay=0.0, grad_clip=1.0)
        result = train(model, ctx.corpus_batches(cfg.eb_batch_size, ctx.pretrain.seed + 1),
                       cfg.eb_max_steps, optim, grad_hook=score, after_step=check,
                       compute=ctx.compute, desc="pmp stage I", progress=ctx.progress)
        return state["mask"], {"lr": lr, "iou": state["iou"], "stopped_at": state["stop"],
                               "steps": result.steps, "tokens": result.tokens,
                               "flops": result.flops, "early_bird": state["stop"] is not None}


class PMPIntentConfig(PMPConfig):
    """PMP with a stable early-bird mask; every other default is the script's."""

    ema: float | None = Field(0.98, ge=0, lt=1, description="EMA decay of the |grad| scores")
    quota: Literal["global", "per_tensor"] = Field("per_tensor", description="rho of every "
                                                   "tensor, so no tensor is emptied")
    eb_batch_size: int = Field(32, ge=1, description="Stage I scoring batch (sequences)")


@register_defense("pmp_intent", version="1")
class PMPIntent(PMP[PMPIntentConfig]):
    """PMP as the paper intends it: a mask that stops changing (EMA of |grad|, per-tensor rho)."""


class PMPRowsConfig(PMPConfig):
    """The authors' second script: random output rows of every linear layer frozen."""

    rho: float = Field(0.7, gt=0, le=1, description="share of every linear layer's output rows "
                       "that train (the script freezes 30%)")
    mask: Literal["early_bird", "random", "random_rows"] = Field(
        "random_rows", description="random_rows (this variant's mask)")


@register_defense("pmp_rows", version="1")
class PMPRows(PMP[PMPRowsConfig]):
    """PMP as the authors' frozen_un.py: 30% of each linear layer's output rows stay at init."""


class TicketHooks:
    """Training restricted to a mask's elements, in place: ``grad_hook`` zeroes the
    complement's gradients after backward, ``after_step`` puts the complement back where it
    must be (undoing weight decay), ``project`` shrinks it onto an L2 ball. Holds one masked
    copy of the weights, made once; nothing is copied per step. A tied tensor (input and output
    embeddings) is held once, so it is masked and restored once, by one mask."""

    def __init__(self, model: torch.nn.Module, mask: Mask) -> None:
        mask = align_mask(mask, model)
        params = dict(model.named_parameters())
        self.params = [params[n] for n in mask]
        self.keep = [mask[n].to(p.device, p.dtype) for n, p in zip(mask, self.params,
                                                                   strict=True)]
        # the complement's values (zeros on the ticket): theta_0's, or the release's
        self.anchor = [p.detach() * (1 - k) for p, k in zip(self.params, self.keep,
                                                            strict=True)]

    @torch.no_grad()
    def grad_hook(self) -> None:
        pairs = [(p.grad, k) for p, k in zip(self.params, self.keep, strict=True)
                 if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [k for _, k in pairs])

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        torch._foreach_mul_(self.params, self.keep)
        torch._foreach_add_(self.params, self.anchor)

    @torch.no_grad()
    def project(self, radius: float) -> None:
        norm = self.complement_norm()
        if norm > radius:
            torch._foreach_mul_(self.anchor, radius / norm)

    def complement_norm(self) -> float:
        return math.sqrt(sum(float(a.float().pow(2).sum()) for a in self.anchor))
