"""Does pre-training transfer, and does it transfer on every base? Final restricted-task scores
of the undefended release against the scratch baseline, per adversary and task, over bases
(pre-training runs) and attack seeds.

Runs the matrix with the `none` defense only (stages already in the store are reused), then
prints one row per (adversary, task): none's mean with its interval over bases and seeds, the
standard deviation and range of the per-base means, scratch, and whether the two intervals are
separated. ``--bases N`` sets ``pretrain.seeds`` to 0..N-1.

    .venv/bin/python benchmarks/transfer.py configs/default.yaml --bases 5 --workers 2
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import logging
import sys

import pandas as pd

from nftbench.config import load_config
from nftbench.engine import Runner
from nftbench.metrics import seed_summary
from nftbench.plugins import load_plugins


def transfer_table(results: pd.DataFrame) -> pd.DataFrame:
    s = seed_summary(results)
    none, scratch = s[s.release == "none"], s[s.release == "scratch"]
    t = none.merge(scratch, on=["adversary", "task"], suffixes=("_none", "_scratch"))
    t["separated"] = t.ci_low_none > t.ci_high_scratch
    return t


def fmt(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--bases", type=int, help="pre-training seeds 0..N-1")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    # its own run folder (the store stays shared), so runs/<name> of the config is untouched
    overrides = ["defenses=[none]", "name=transfer", "output_dir=runs/transfer", *args.override]
    if args.bases:
        overrides.append(f"pretrain.seeds={list(range(args.bases))}")
    matrix = load_config(args.config, overrides)
    outcome = Runner(matrix, progress=False, workers=args.workers).run()
    t = transfer_table(outcome.results)
    cfg = matrix.config
    print(f"config: {args.config}  bases: {cfg.pretrain.bases}  seeds: {cfg.seeds}  "
          "(mean [95% interval over bases and seeds]; sd and range of the per-base means)")
    print(pd.DataFrame({
        "adversary": t.adversary, "task": t.task,
        "none (pre-trained)": [fmt(*r) for r in zip(t.mean_none, t.ci_low_none, t.ci_high_none,
                                                    strict=True)],
        "sd over bases": t.sd_bases_none.map(lambda x: f"{x:.3f}"),
        "range over bases": [f"{lo:.2f}-{hi:.2f}" for lo, hi in
                             zip(t.min_base_none, t.max_base_none, strict=True)],
        "scratch": [fmt(*r) for r in zip(t.mean_scratch, t.ci_low_scratch, t.ci_high_scratch,
                                         strict=True)],
        "bases x seeds": [f"{b} x {s}" for b, s in zip(t.n_bases_none, t.n_seeds_none,
                                                       strict=True)],
        "separated": t.separated,
    }).to_string(index=False))
    return 0 if t.separated.all() else 1


if __name__ == "__main__":
    sys.exit(main())
