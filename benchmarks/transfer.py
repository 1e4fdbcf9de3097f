"""Does pre-training transfer? Final restricted-task scores of the undefended release against
the scratch baseline, per adversary and task, with bootstrap CIs over seeds.

Runs the matrix with the `none` defense only (stages already in the store are reused), then
prints one row per (adversary, task):

    .venv/bin/python benchmarks/transfer.py configs/default.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from nftbench.config import load_config
from nftbench.engine import Runner
from nftbench.metrics import seed_summary
from nftbench.registry import load_plugins


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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    matrix = load_config(args.config, ["defenses=[none]", *args.override])
    outcome = Runner(matrix, progress=False).run()
    t = transfer_table(outcome.results)
    print(f"config: {args.config}  seeds: {matrix.config.seeds}  (mean [95% bootstrap CI])")
    print(pd.DataFrame({
        "adversary": t.adversary, "task": t.task,
        "none (pre-trained)": [fmt(*r) for r in zip(t.mean_none, t.ci_low_none, t.ci_high_none,
                                                    strict=True)],
        "scratch": [fmt(*r) for r in zip(t.mean_scratch, t.ci_low_scratch, t.ci_high_scratch,
                                         strict=True)],
        "seeds": t.n_seeds_none, "separated": t.separated,
    }).to_string(index=False))
    return 0 if t.separated.all() else 1


if __name__ == "__main__":
    sys.exit(main())
