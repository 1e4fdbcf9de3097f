"""Does resistance grow with the suppression budget? SOPHON's horizon ladder, read from a run.

For every defended release of a finished run (e.g. ``configs/sophon_ladder.yaml``): its
suppression budget (inner steps K x outer steps, from the run's plan), RG at every budget step
of the attack (``metrics.rg_by_step``, intervals over bases, seeds and eval items) and the attack
length at which RG first reaches ``--level`` (0.5: the attacker has recovered half of what
pre-training gives over scratch). A crossing that never happens within the attack is censored:
the defense held for at least the whole budget. Prints the table, writes ``ladder.csv`` and a
figure of the crossing step against the suppression budget (into the first run's ``report/``,
or ``-o``). Runs or the published report folders in results/ (their plan re-made from the
manifest):

    .venv/bin/python benchmarks/ladder.py runs/sophon_ladder [more runs] --task qa_color
    .venv/bin/python benchmarks/ladder.py results/sophon results/sophon/k50 \
        results/sophon/k50x1000 -o /tmp/ladder

If the crossing step grows with the budget, "no resistance" at small budgets was a scale
artifact; if it stays flat, that is a finding about the method.
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker
import numpy as np
import pandas as pd

from nftbench.metrics import cell_table, crossing_step, rg_by_step
from nftbench.records import NONE, SCRATCH
from nftbench.report import PRINT_STYLE, figure_grid, legend_below, save_figure
from nftbench.run_folder import RunFolder


def budgets(run_dir: Path) -> dict[str, dict[str, int]]:
    """Defense label -> its inner steps (K), outer steps, their product, its suppression
    weight (alpha; None: the default, 1) and its preset (None: the default, ``paper``), from
    the plan (a published folder's is re-made from its manifest)."""
    plan = RunFolder(run_dir).stage_plan()
    out = {}
    for job in plan["jobs"]:
        if job["kind"] != "defend":
            continue
        label = job["label"].rsplit(" / ", 1)[0]
        params = job["payload"].get("params", {})
        k, outer = params.get("inner_steps"), params.get("outer_steps")
        if k and outer:
            out[label] = {"K": int(k), "outer": int(outer), "inner_total": int(k) * int(outer),
                          "alpha": params.get("alpha"), "preset": params.get("preset")}
    return out


def ladder(run_dir: Path, task: str, level: float) -> pd.DataFrame:
    cells = cell_table(RunFolder(run_dir).read_results())
    sizes = budgets(run_dir)
    rows = []
    for (defense, adversary), _ in cells[cells.task == task].groupby(["release", "adversary"]):
        if defense in (NONE, SCRATCH) or defense not in sizes:
            continue
        curve = rg_by_step(cells, defense, adversary, task)
        step, censored = crossing_step(curve, level)
        last = curve.iloc[-1]
        rows.append({"defense": defense, "adversary": adversary, **sizes[defense],
                     "rg_by_step": "  ".join(
                         f"{int(r.step)}: {r.rg:.2f}" if r.rg == r.rg else f"{int(r.step)}: -"
                         for r in curve.itertuples()),
                     "rg_final": last.rg, "rg_final_ci": f"[{last.ci_low:.2f}, {last.ci_high:.2f}]",
                     f"steps_to_rg_{level:g}": step, "censored": censored,
                     "bases": int(last.n_bases), "seeds": int(last.n_seeds)})
    return pd.DataFrame(rows).sort_values(["adversary", "inner_total"])


def _short(row: pd.Series, most_bases: int) -> str:
    """A release's label, with its number of bases where it has fewer than the others."""
    n = int(row.bases)
    alpha = row.get("alpha")
    strength = "" if alpha is None or alpha != alpha or alpha == 1 else f", alpha {alpha:g}"
    preset = row.get("preset")
    # the authors' code preset (one SGD strategy) is not the paper's strategy set at equal K
    variant = "" if not isinstance(preset, str) or preset == "paper" else f", {preset}"
    return f"K {row.K} x {row.outer}{strength}{variant}" + ("" if n == most_bases else
                                         f"\n({n} base{'s' if n > 1 else ''})")


def plot(table: pd.DataFrame, level: float, task: str, path: Path,
         budgets: dict[str, int]) -> None:
    adversaries = sorted(table.adversary.unique())
    fig, axes = figure_grid(len(adversaries), height=2.4, sharey=False)
    col = f"steps_to_rg_{level:g}"
    # a release the attack finds already recovered (RG at step 0 at the level: SOPHON's guard
    # gave the base back) held for no time at all; it stays in ladder.csv, named in the caption
    unsuppressed = table[col] == 0
    for ax, adversary in zip(axes, adversaries, strict=True):
        t = table[(table.adversary == adversary) & ~unsuppressed]
        for censored, marker in ((False, "o"), (True, "^")):
            g = t[t.censored == censored]
            ax.scatter(g.inner_total, g[col], marker=marker, s=40,
                       facecolors="none" if censored else "C0", edgecolors="C0",
                       label="held for the whole attack (censored)" if censored
                       else f"RG reached {level:g}")
        # a label right of its point and above it; near the top, where the title is, centred
        # below it, a level lower than its left neighbour's when they are within a decade and
        # a half (a label is about a decade wide); two points within half a decade of each
        # other at about the same attack length get theirs centred, the upper (or the right,
        # at equal lengths) above and the other below, so that no two labels meet (near the
        # top, the one below counts as the left neighbour of the next top label)
        span = 1.15 * budgets[adversary]
        labels: dict[tuple[float, float], list[str]] = {}  # releases on one point share a label
        for x, y, (_, r) in sorted(zip(t.inner_total, t[col], t.iterrows(), strict=True),
                                   key=lambda p: p[0]):
            labels.setdefault((x, y), []).append(_short(r, int(table.bases.max())))
        points = list(labels)
        # the last top label: its x, depth (points below the line) and number of lines
        top_left: tuple[float, float, int] | None = None
        for (x, y), names in labels.items():
            partners = [(x2, y2) for x2, y2 in points if (x2, y2) != (x, y)
                        and abs(np.log10(x2 / x)) <= 0.5 and abs(y2 - y) < 0.15 * span]
            lines = sum(name.count("\n") + 1 for name in names)
            if not partners and y > 0.75 * budgets[adversary]:
                depth = 6.0
                if top_left and np.log10(x / top_left[0]) < 1.5 and top_left[1] == 6.0:
                    depth = 6.0 + 8.5 * top_left[2]  # 7-point text: lines 8.5 points apart
                top_left = (x, depth, lines)
                offset, ha, va = (0, -depth), "center", "top"
            elif not partners:
                offset, ha, va = (5, 3), "left", "bottom"
            elif all(y > y2 or (y == y2 and x > x2) for x2, y2 in partners):
                offset, ha, va = (0, 6), "center", "bottom"
            else:
                offset, ha, va = (0, -6), "center", "top"
                if y > 0.75 * budgets[adversary]:
                    top_left = (x, 6.0, lines)
            ax.annotate("\n".join(names), (x, y), fontsize=7,
                        xytext=offset, textcoords="offset points", ha=ha, va=va)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        lo, hi = t.inner_total.min(), t.inner_total.max()
        ax.set_xlim(lo / 2, hi * 12)  # room for the last point's label, right of it
        ax.set_ylim(-0.05 * budgets[adversary], 1.15 * budgets[adversary])
        ax.axhline(budgets[adversary], color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel("suppression budget (K x outer steps)")
        ax.set_title(f"{adversary} (budget {budgets[adversary]} steps)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"attack steps until RG >= {level:g}")
    legend_below(fig, axes)
    save_figure(fig, path.parent, path.stem, caption=(
        f"How long SOPHON holds on {task} against its suppression budget: for each release "
        f"(K inner steps x outer steps), the first attack budget point where mean RG reaches "
        f"{level:g} (filled), or the attack's whole budget when it never does (open: censored, "
        f"the defense held). Means over up to {table.bases.max()} bases x {table.seeds.max()} "
        f"attack seeds; a release on fewer bases says how many." + (
            " Not drawn, as RG is at the level before any attack (never suppressed): "
            + ", ".join(sorted({_short(r, int(table.bases.max()))
                                for _, r in table[unsuppressed].iterrows()})) + "."
            if unsuppressed.any() else "")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+",
                        help="finished runs, or published report folders (results.csv and "
                        "manifest.json, e.g. results/sophon/k50)")
    parser.add_argument("--task", default="qa_color")
    parser.add_argument("--level", type=float, default=0.5)
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="where the table and figure go (default: the first run's report/)")
    args = parser.parse_args()
    table = pd.concat([ladder(d, args.task, args.level) for d in args.run_dirs],
                      ignore_index=True).sort_values(["adversary", "inner_total"])
    if table.empty:
        raise SystemExit(f"{args.run_dirs}: no defended release with inner_steps and "
                         f"outer_steps attacked on {args.task}")
    budgets = {a: int(max(attack_steps(d, args.task, a) for d in args.run_dirs))
               for a in table.adversary.unique()}
    out = args.out or args.run_dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "ladder.csv", index=False)
    with matplotlib.rc_context(PRINT_STYLE):
        plot(table, args.level, args.task, out / f"ladder_{args.task}.png", budgets)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"written: {out / 'ladder.csv'}, {out / f'ladder_{args.task}.png'}")


def attack_steps(run_dir: Path, task: str, adversary: str) -> float:
    """The last budget step of ``adversary``'s curves on ``task`` in a run (0 if none)."""
    r = RunFolder(run_dir).read_results()
    r = r[(r.task == task) & (r.adversary == adversary) & (r.metric == "score")]
    return float(r.step.max()) if len(r) else 0.0


if __name__ == "__main__":
    main()
