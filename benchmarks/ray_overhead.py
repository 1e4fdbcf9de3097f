"""Per-cell overhead of the Ray executor against the local process pool.

The same small matrix of many short cells (a tiny model, 2 releases x 2 adversaries x 1 task x
``--seeds`` seeds) runs from an empty store on the process pool and on a local Ray instance,
each with ``--workers`` workers, each as a new ``nftbench run`` process. For every stage the
manifest holds the worker's own start and end and the driver's round trip (submit to result);
their difference, ``dispatch_s``, is what the executor adds to a cell: queueing to a worker,
sending the job, returning the log. Also shown: how long after launch the first stage started
(process start-up, Ray's start, the workers' imports) and the whole run's wall time.

    .venv/bin/python benchmarks/ray_overhead.py [--workers 2] [--seeds 10]
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent


def matrix(seeds: int) -> dict:
    """configs/tiny.yaml with a LoRA attack beside full fine-tuning, ``seeds`` seeds, and the
    executor's default threads per worker."""
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw.pop("threads")
    raw["name"] = "ray_overhead"
    raw["adversaries"].append({"name": "lora", "params": {"steps": 4, "batch_size": 4}})
    raw["seeds"] = list(range(seeds))
    return raw


def run(config: Path, out: Path, executor: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "nftbench.cli", "run", str(config), "--quiet",
           "-o", f"output_dir={out}", "-o", f"store_dir={out}/store",
           "--executor", executor, "--workers", str(workers)]
    launch = time.time()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    wall = time.time() - launch
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    cells = pd.DataFrame([s for s in stages if s["kind"] == "attack"])
    return {"executor": executor, "workers": workers, "cells": len(cells),
            "first stage after s": min(s["started"] for s in stages) - launch,
            "wall_s": wall,
            "cell compute s (mean)": (cells.finished - cells.started).mean(),
            "dispatch ms/cell (mean)": 1000 * cells.dispatch_s.mean(),
            "dispatch ms/cell (median)": 1000 * cells.dispatch_s.median()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nftbench-ray-") as tmp:
        config = Path(tmp) / "matrix.yaml"
        config.write_text(yaml.safe_dump(matrix(args.seeds)))
        rows = [run(config, Path(tmp) / ex, ex, args.workers) for ex in ("pool", "ray")]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    pool, ray = rows
    print(f"ray - pool: {ray['dispatch ms/cell (mean)'] - pool['dispatch ms/cell (mean)']:.1f} "
          f"ms per cell; start-up {ray['first stage after s'] - pool['first stage after s']:.1f}"
          " s")


if __name__ == "__main__":
    main()
