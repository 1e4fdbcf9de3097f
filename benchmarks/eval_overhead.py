"""Share of an attack cell's wall time spent in evaluation, and the time per curve point.

Runs the matrix (finished stages come from the store; their recorded times are those of the run
that computed them) and prints one row per restricted task from every attack cell's record:
the whole cell (loading, training, evaluation, saving), training alone, evaluation alone.

    .venv/bin/python benchmarks/eval_overhead.py configs/default.yaml
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import logging

import pandas as pd

from nftbench.config import load_config
from nftbench.engine import Runner
from nftbench.registry import load_plugins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    matrix = load_config(args.config, args.override)
    runner = Runner(matrix, progress=False)
    runner.run()
    kinds = {t.label: t.plugin.kind for t in matrix.tasks}
    rows = []
    for stage in runner.stages:
        if stage.kind != "attack" or stage.status != "ok":
            continue
        path = runner.store.path("attack", stage.key)
        meta = json.loads((path / "entry.json").read_text())
        curve = json.loads((path / "curve.json").read_text())
        task = meta["payload"]["task"]
        rows.append({"task": task, "kind": kinds[task], "cell_s": meta["wall_s"],
                     "train_s": curve["wall_s"], "eval_s": curve["eval_s"],
                     "points": len(curve["points"])})
    df = pd.DataFrame(rows)
    per_task = df.groupby(["task", "kind"]).agg(
        cells=("cell_s", "size"), cell_s=("cell_s", "mean"), train_s=("train_s", "mean"),
        eval_s=("eval_s", "mean"), points=("points", "mean")).reset_index()
    per_task["eval_share"] = per_task.eval_s / per_task.cell_s
    per_task["s_per_point"] = per_task.eval_s / per_task.points
    # the rest: loading the release, the capability check of the attacked model, saving
    per_task["not_training_share"] = 1 - per_task.train_s / per_task.cell_s
    total = df[["cell_s", "eval_s", "train_s"]].sum()
    print(f"config: {args.config}  (means over cells; times in seconds)")
    print(per_task.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"all cells: curve evaluation is {total.eval_s / total.cell_s:.1%} of attack wall "
          f"time; everything but training {1 - total.train_s / total.cell_s:.1%}")


if __name__ == "__main__":
    main()
