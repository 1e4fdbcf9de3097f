"""Cost of running a finished matrix again (every stage found in the store).

Runs ``nftbench run CONFIG`` twice into a fresh output folder, each as a new process (start-up
included, as a user sees it), and prints both wall times and their ratio.

    .venv/bin/python benchmarks/rerun.py configs/smoke.yaml
"""

from __future__ import annotations

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
           "-o", f"output_dir={out}", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/smoke.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args()
    extra = [x for o in args.override for x in ("-o", o)]
    with tempfile.TemporaryDirectory(prefix="nftbench-rerun-") as tmp:
        out = Path(tmp) / "run"
        first, m1 = timed_run(args.config, out, extra)
        second, m2 = timed_run(args.config, out, extra)
    rows = [
        {"run": "first", "wall_s": first,
         "stages computed": sum(not s["cached"] for s in m1["stages"])},
        {"run": "again", "wall_s": second,
         "stages computed": sum(not s["cached"] for s in m2["stages"])},
    ]
    table = pd.DataFrame(rows)
    print(f"config: {args.config}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(f"rerun / first = {second / first:.1%}")


if __name__ == "__main__":
    main()
