"""Can the benchmark tell a strong defense from a weaker one? Releases of known strength, made by
interpolating the weights of the positive control (`filtered`) with `none`, base by base:
``release(alpha) = (1 - alpha) * none + alpha * filtered``. RG on the filtered attribute's task
should fall monotonically from 1 (alpha 0, the undefended base) towards that of `filtered`
(alpha 1), and the design (bases x seeds) should separate adjacent steps.

1. runs CONFIG with defenses none and filtered (stages in the store are reused);
2. writes the interpolated releases of every base under OUT/alpha<a>/base<seed>;
3. runs them as `external` defenses beside none, on TASK, with the first adversary;
4. prints RG (with its interval) per alpha, whether it is monotone, whether adjacent steps'
   intervals are disjoint, and the smallest RG difference the design resolves: the minimal
   detectable difference at 5% two-sided and 80% power, (t_0.975 + t_0.8) * sqrt(2) * se, from
   the intervals' mean half-width.

    .venv/bin/python benchmarks/power.py configs/default.yaml --task qa_color --workers 2
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from nftbench.config import load_config
from nftbench.engine import Runner
from nftbench.metrics import cell_table, relative_gain
from nftbench.models import load_release, save_release
from nftbench.plugins import load_plugins


def interpolate(none_dir: Path, filtered_dir: Path, alpha: float, out: Path, spec) -> None:
    model, tokenizer = load_release(none_dir, spec)
    other, _ = load_release(filtered_dir, spec)
    theirs = dict(other.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(1 - alpha).add_(theirs[name], alpha=alpha)
    save_release(model, tokenizer, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--task", default="qa_color", help="the filtered attribute's task")
    parser.add_argument("--attribute", default="color", help="the attribute filtered out")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--out", default="runs/power", help="interpolated releases and the run")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    alphas = [float(a) for a in args.alphas.split(",")]
    filtered = f"{{name: filtered, params: {{attributes: [{args.attribute}]}}}}"
    out = Path(args.out).resolve()
    source = load_config(args.config, [*args.override, f"defenses=[none, {filtered}]",
                                       "name=power_source", f"output_dir={out}/source"])
    runner = Runner(source, progress=False, workers=args.workers)
    runner.run()
    releases = {(j.args["defense"], j.args["base_seed"]): runner.store.path(j.kind, j.key)
                / "release" for j in runner.plan if j.kind == "defend"}
    spec = source.config.model
    for alpha in alphas:
        for base in source.config.pretrain.bases:
            # always rewritten: releases left by an earlier run of another world or base would
            # be stale (the same weights give the same files, so stages stay cached)
            interpolate(releases["none", base], releases["filtered", base], alpha,
                        out / f"alpha{alpha:g}" / f"base{base}", spec)
    mixes = ", ".join(f"{{name: external, label: 'mix[alpha={a:g}]', params: "
                      f"{{path: '{out}/alpha{a:g}/base{{base}}'}}}}" for a in alphas)
    keep = [t.label for t in source.capability_tasks] + [args.task]
    matrix = load_config(args.config, [
        *args.override, f"defenses=[none, {mixes}]", f"tasks={keep}",
        f"adversaries=[{source.config.adversaries[0].model_dump_json()}]",  # YAML reads JSON
        "name=power", f"output_dir={out}/run"])
    results = Runner(matrix, progress=False, workers=args.workers).run().results
    cells = cell_table(results)
    adversary = matrix.adversaries[0].label
    rows = []
    for a in alphas:
        rg = relative_gain(cells, f"mix[alpha={a:g}]", adversary, args.task)
        rows.append({"alpha": a, "RG": rg.mean, "ci_low": rg.ci_low, "ci_high": rg.ci_high,
                     "bases": rg.n_bases, "seeds": rg.n_seeds, "undefined": rg.undefined})
    table = pd.DataFrame(rows)
    cfg = matrix.config
    print(f"config: {args.config}; task {args.task}; adversary {adversary}; "
          f"{len(cfg.pretrain.bases)} bases x {len(cfg.seeds)} seeds")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    rg = table.RG.to_numpy()
    print(f"monotone (RG falls as alpha grows): {bool(np.all(np.diff(rg) <= 0))}")
    disjoint = [bool(table.ci_low[i] > table.ci_high[i + 1]) for i in range(len(table) - 1)]
    print(f"adjacent steps with disjoint intervals: {sum(disjoint)} of {len(disjoint)}")
    half = ((table.ci_high - table.ci_low) / 2).mean()
    df = max(len(cfg.pretrain.bases) - 1, 1)
    se = half / stats.t.ppf(0.975, df)
    mdd = (stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * np.sqrt(2) * se
    print(f"smallest RG difference resolved (5% two-sided, 80% power, df {df}): {mdd:.2f}")


if __name__ == "__main__":
    main()
