"""Wall time of a whole matrix: a first run, the same run again, and the first run on N workers.

Three runs of ``nftbench run CONFIG``, each a new process (start-up and report included, as a
user sees them), side by side in one invocation (``--skip-sequential``: only the pool run and
its rerun, the two numbers ``make run`` is judged by):

1. sequential, from an empty store;
2. the same command again (every stage found in the store): the rerun cost;
3. ``--workers N`` (the local process pool), from another empty store: the speedup.

Each run gets its own output folder and store under a temporary directory, so nothing is shared
with ``runs/``. Nothing else should run on the machine meanwhile.

    .venv/bin/python benchmarks/matrix_wall.py configs/default.yaml --workers 2
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


def timed_run(config: str, out: Path, extra: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "nftbench.cli", "run", config, "--quiet",
           "-o", f"output_dir={out}", "-o", f"store_dir={out}/store", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start, json.loads((out / "manifest.json").read_text())


def summary(label: str, wall: float, manifest: dict) -> dict:
    stages = manifest["stages"]
    return {"run": label, "wall_s": wall,
            "computed": sum(not s["cached"] for s in stages if s["status"] == "ok"),
            "from store": sum(s["cached"] for s in stages),
            "failed": sum(s["status"] == "failed" for s in stages),
            "workers": len({s["worker"] for s in stages if not s["cached"]})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--skip-sequential", action="store_true",
                        help="time only the pool run (the README's `make run`) and its rerun, "
                        "without the sequential run (no speedup then)")
    args = parser.parse_args()
    extra = [x for o in args.override for x in ("-o", o)]
    pool_args = [*extra, "--workers", str(args.workers)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="nftbench-wall-") as tmp:
        if not args.skip_sequential:
            seq = Path(tmp) / "sequential"
            first, m1 = timed_run(args.config, seq, extra)
            again, m2 = timed_run(args.config, seq, extra)
            rows += [summary("sequential, empty store", first, m1),
                     summary("sequential, again", again, m2)]
        pooled, m3 = timed_run(args.config, Path(tmp) / "pool", pool_args)
        rows.append(summary(f"pool of {args.workers}, empty store", pooled, m3))
        if args.skip_sequential:  # the rerun cost, on the pool's store
            first, again, m2 = pooled, *timed_run(args.config, Path(tmp) / "pool", pool_args)
            rows.append(summary(f"pool of {args.workers}, again", again, m2))
    print(f"config: {args.config}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(f"rerun / first run      = {again / first:.1%}")
    if args.skip_sequential:
        return
    print(f"speedup, {args.workers} workers     = {first / pooled:.2f}x")
    # What the pool could reach with a perfect schedule: every stage's compute, as timed in
    # the pool, spread over the workers (start-up and the report not counted).
    stages = [s for s in m3["stages"] if not s["cached"] and s["status"] == "ok"]
    spread = sum(s["wall_s"] for s in stages)
    cells_seq = [s["wall_s"] for s in m1["stages"] if s["kind"] == "attack"]
    cells_pool = [s["wall_s"] for s in m3["stages"] if s["kind"] == "attack"]
    bound = spread / args.workers
    print(f"pool stage compute: {spread:.0f} s spread over {args.workers} workers -> ideal "
          f"{bound:.0f} s ({first / bound:.2f}x); the pool took {pooled:.0f} s, start-up and "
          "report included")
    print(f"mean attack cell: {sum(cells_seq) / len(cells_seq):.2f} s sequential, "
          f"{sum(cells_pool) / len(cells_pool):.2f} s in a pool worker "
          f"({sum(cells_pool) / sum(cells_seq):.2f}x)")


if __name__ == "__main__":
    main()
