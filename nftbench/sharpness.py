"""Sharpness of a release: the top eigenvalue of the Hessian of an attacker's loss at the
released weights.

PMP's claim is mechanistic: fine-tuning a release away from its private mask is unstable,
because the release sits where the loss is sharply curved in directions the mask never
trained. The top Hessian eigenvalue of the restricted task's loss (the answer loss on the
attacker's own train split, as fine-tuning sees it) measures that curvature for any defense;
gradient descent at learning rate lr is unstable along a direction of curvature above 2 / lr.

It is computed by power iteration on Hessian-vector products: reverse-over-reverse
differentiation with ``torch.func`` (``vjp`` of ``grad``), on a model switched to eager
attention (fused attention kernels have no second derivative). ``nftbench sharpness CONFIG
--task T`` measures every release of a matrix (every defense on every base), reusing its
stages from the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy import stats
from torch.func import functional_call, grad, vjp

from nftbench.data import encode_examples, in_prompt_format, pad_id, pad_rows

Params = dict[str, torch.Tensor]


@dataclass
class Sharpness:
    """The top eigenvalue (Rayleigh quotient of the last iterate) and how it was reached."""

    eigenvalue: float
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list)


def _power(hvp: Callable[[Params], Params], like: Params, shift: float, iters: int, tol: float,
           seed: int) -> Sharpness:
    """Power iteration on H - shift * I: its eigenvalue of largest magnitude (plus ``shift``)."""
    gen = torch.Generator().manual_seed(seed)
    v = {n: torch.randn(p.shape, generator=gen).to(p) for n, p in like.items()}
    history: list[float] = []
    for i in range(iters):
        norm = math.sqrt(sum(float(x.pow(2).sum()) for x in v.values()))
        v = {n: x / norm for n, x in v.items()}
        hv = hvp(v)
        hv = {n: hv[n] - shift * v[n] for n in v} if shift else hv
        value = sum(float((hv[n] * v[n]).sum()) for n in v) + shift  # v is a unit vector
        history.append(value)
        if i and abs(value - history[-2]) <= tol * max(abs(value), 1e-12):
            return Sharpness(value, i + 1, True, history)
        v = {n: x.detach() for n, x in hv.items()}
    return Sharpness(history[-1], iters, False, history)


def top_eigenvalue(loss: Callable[[Params], torch.Tensor], params: Params, *, iters: int = 50,
                   tol: float = 1e-3, seed: int = 0) -> Sharpness:
    """The largest (algebraic) eigenvalue of the Hessian of ``loss`` at ``params``.

    Power iteration from a seeded random direction finds the eigenvalue of largest magnitude;
    away from a minimum that can be a negative one, so when it is, the iteration is run again
    on ``H - lambda I``, whose largest-magnitude eigenvalue is then ``lambda_max - lambda``.
    Stops when the estimate changes by less than ``tol`` (relative) between iterations."""
    _, vjp_fn = vjp(grad(loss), params)

    def hvp(v: Params) -> Params:
        return vjp_fn(v)[0]

    first = _power(hvp, params, 0.0, iters, tol, seed)
    if first.eigenvalue >= 0:
        return first
    top = _power(hvp, params, first.eigenvalue, iters, tol, seed)
    return Sharpness(top.eigenvalue, first.iterations + top.iterations,
                     first.converged and top.converged, first.history + top.history)


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                ) -> Callable[[Params], torch.Tensor]:
    """The fine-tuning loss (mean over answer tokens) as a function of the parameters."""
    def loss(params: Params) -> torch.Tensor:
        return functional_call(model, params, args=(), kwargs=batch).loss
    return loss


def release_sharpness(model: Any, tokenizer: Any, examples: list[dict[str, Any]], *,
                      iters: int = 50, tol: float = 1e-3, seed: int = 0) -> Sharpness:
    """Top Hessian eigenvalue of the answer loss over ``examples`` (one batch) at ``model``'s
    weights, every parameter included."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    model.eval()  # no dropout: the loss must be a deterministic function of the weights
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in pad_rows(encode_examples(examples, tokenizer),
                                                   pad_id(tokenizer)).items()}
    params = {n: p.detach() for n, p in model.named_parameters()}
    return top_eigenvalue(answer_loss(model, batch), params, iters=iters, tol=tol, seed=seed)


def summarize(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean top eigenvalue per (defense, task) with a t interval over bases."""
    rows = []
    for (defense, task), g in table.groupby(["defense", "task"], sort=False):
        x = g.eigenvalue.to_numpy(float)
        half = (stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
                if len(x) > 1 else float("nan"))
        rows.append({"defense": defense, "task": task, "eigenvalue": x.mean(),
                     "ci_low": x.mean() - half, "ci_high": x.mean() + half,
                     "stable_sgd_lr": 2 / x.mean() if x.mean() > 0 else float("inf"),
                     "bases": len(x), "converged": int(g.converged.sum())})
    return pd.DataFrame(rows)


def measure(matrix: Any, tasks: list[str], *, iters: int = 50, tol: float = 1e-3,
            workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Top eigenvalue of every release of ``matrix`` (each defense on each base) on the named
    tasks' train splits. Runs the matrix's shared stages first (reused from the store)."""
    from nftbench.engine import Runner
    from nftbench.models import load_release

    runner = Runner(matrix, progress=progress, workers=workers)
    runner.plan = [j for j in runner.plan if j.kind != "attack"]
    outcome = runner.run()
    failed = [s.label for s in outcome.failed]
    if failed:
        raise RuntimeError(f"stages failed, so their releases cannot be measured: {failed}")
    plugins = {t.label: t.plugin for t in matrix.tasks}
    unknown = sorted(set(tasks) - set(plugins))
    if unknown:
        raise KeyError(f"tasks {unknown} are not in the matrix; it has {sorted(plugins)}")
    rows = []
    for job in runner.plan:
        if job.kind != "defend":
            continue
        folder = runner.store.path(job.kind, job.key) / "release"
        for task in tasks:
            model, tokenizer = load_release(folder, matrix.config.model)
            examples = in_prompt_format(runner.data.examples[task]["train"],
                                        matrix.config.model.prompt_format)
            s = release_sharpness(model, tokenizer, examples, iters=iters, tol=tol)
            rows.append({"defense": job.args["defense"], "base": job.args["base_seed"],
                         "task": task, "eigenvalue": s.eigenvalue, "iterations": s.iterations,
                         "converged": s.converged})
    return pd.DataFrame(rows)


def plot_against_rg(table: pd.DataFrame, board: pd.DataFrame, folder: Path) -> list[Path]:
    """Sharpness against RG final, one figure per task, a panel per adversary: a point per
    defense at the median eigenvalue over bases (the bar spans the bases' range) and its RG
    with the leaderboard's interval. If PMP's mechanism holds, sharper releases resist more
    (lower RG)."""
    import matplotlib.ticker

    # (nftbench.report selects the Agg backend)
    from nftbench.report import (
        PRINT_STYLE,
        figure_grid,
        legend_below,
        release_styles,
        save_figure,
    )

    with matplotlib.rc_context(PRINT_STYLE):  # the report's print fonts and sizes
        paths = []
        for task, t in table.groupby("task"):
            b = board[(board.task == task) & board.rg.notna()]
            adversaries = sorted(b.adversary.unique())
            if not adversaries:
                continue
            fig, axes = figure_grid(len(adversaries), height=2.2)
            per = t.groupby("defense").eigenvalue.agg(["median", "min", "max"])
            style = release_styles(b.rename(columns={"defense": "release"}))
            for ax, adversary in zip(axes, adversaries, strict=True):
                rows = b[b.adversary == adversary].set_index("defense")
                for defense in per.index:
                    if defense not in rows.index:
                        continue
                    e, r = per.loc[defense], rows.loc[defense]
                    ax.errorbar(e["median"], r.rg, xerr=[[e["median"] - max(e["min"], 1e-9)],
                                                         [e["max"] - e["median"]]],
                                yerr=[[r.rg - r.rg_ci_low], [r.rg_ci_high - r.rg]],
                                color=style[defense].color, marker=style[defense].marker,
                                linestyle="none", label=defense, capsize=2, markersize=4)
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.axhline(1.0, color="0.7", linewidth=0.8)
                ax.axhline(0.0, color="0.7", linewidth=0.8)
                ax.set_title(adversary)
                ax.grid(alpha=0.3)
            fig.supxlabel("top Hessian eigenvalue at release (log)", fontsize=8)
            axes[0].set_ylabel(f"RG final on {task}")
            legend_below(fig, axes)
            paths += save_figure(fig, Path(folder), f"sharpness_vs_rg_{task}", caption=(
                f"Sharpness of each release against its resistance on {task}: the top Hessian "
                f"eigenvalue of the release's answer loss (median over {t.base.nunique()} bases, "
                f"the bar spans their range) against RG final (mean and 95% interval), one panel "
                f"per adversary. If PMP's mechanism holds, sharper releases resist more (lower "
                f"RG)."))
        return paths
