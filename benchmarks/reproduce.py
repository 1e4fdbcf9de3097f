"""Does a matrix reproduce on another machine? The same config run on two CPU kernel paths.

Three runs of ``nftbench run CONFIG``, each in a new process with its own empty store:

1. as is;
2. as is again: the same machine and kernel path must give a bit-identical results table;
3. with ``ATEN_CPU_CAPABILITY=avx2`` (``--capability``): torch's AVX2 kernels instead of the
   machine's best, which is what another CPU gives. Float reductions differ, long training runs
   amplify that, and the numbers can only agree statistically.

``--reference RUN_DIR`` takes run 1 from a finished run instead (e.g. ``runs/default`` after
``make run``, same config and overrides), so a 20-minute matrix is not run a third time.

It prints the kernel path of each run (from the manifests), the largest difference between the
results tables, and for every leaderboard number (final score, RG final, RG AUC, Δ vs none,
utility retention) both runs' values and whether their intervals overlap.

    .venv/bin/python benchmarks/reproduce.py configs/default.yaml --workers 2
    .venv/bin/python benchmarks/reproduce.py configs/default.yaml --workers 2 \
        --reference runs/default --skip-identical
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from nftbench.records import read_results

NUMBERS = {"final score": ("final_score", "final_ci_low", "final_ci_high"),
           "RG final": ("rg", "rg_ci_low", "rg_ci_high"),
           "RG AUC": ("rg_auc", "rg_auc_ci_low", "rg_auc_ci_high"),
           "Δ vs none": ("delta_vs_none", "delta_ci_low", "delta_ci_high"),
           "utility": ("utility_retention", "utility_ci_low", "utility_ci_high")}
KEYS = ["defense", "adversary", "task"]


def run(config: str, out: Path, extra: list[str], env: dict[str, str]) -> Path:
    cmd = [sys.executable, "-m", "nftbench.cli", "run", config, "--quiet",
           "-o", f"output_dir={out}", "-o", f"store_dir={out}/store", *extra]
    subprocess.run(cmd, check=True, env={**os.environ, **env})
    return out


def compare(a: Path, b: Path) -> pd.DataFrame:
    """One row per leaderboard number: both values and whether their intervals overlap."""
    la = pd.read_csv(a / "report" / "leaderboard.csv")
    lb = pd.read_csv(b / "report" / "leaderboard.csv")
    both = la.merge(lb, on=KEYS, suffixes=("_a", "_b"))
    rows = []
    for _, r in both.iterrows():
        for name, (mean, lo, hi) in NUMBERS.items():
            va, vb = r[f"{mean}_a"], r[f"{mean}_b"]
            if name == "utility" and r.defense == "none":
                continue  # 1 by definition
            if np.isnan(va) and np.isnan(vb):
                continue  # undefined in both
            overlap = (not np.isnan(va) and not np.isnan(vb)
                       and r[f"{lo}_a"] <= r[f"{hi}_b"] and r[f"{lo}_b"] <= r[f"{hi}_a"])
            rows.append({**{k: r[k] for k in KEYS}, "number": name,
                         "run 1": f"{va:.2f} [{r[f'{lo}_a']:.2f}, {r[f'{hi}_a']:.2f}]",
                         "run 2": f"{vb:.2f} [{r[f'{lo}_b']:.2f}, {r[f'{hi}_b']:.2f}]",
                         "overlap": bool(overlap)})
    return pd.DataFrame(rows)


def max_difference(a: Path, b: Path) -> float:
    ra, rb = (read_results(p / "results.csv") for p in (a, b))
    va, vb = ra.value.to_numpy(float), rb.value.to_numpy(float)
    if va.shape != vb.shape:
        return float("inf")
    both = ~(np.isnan(va) & np.isnan(vb))
    return float(np.nanmax(np.abs(va[both] - vb[both]))) if both.any() else 0.0


def same_matrix(a: Path, b: Path) -> bool:
    """Whether two runs ran the same matrix: their configs but for where they wrote, and the
    fingerprints of their data (world, corpus, every task's examples)."""
    def matrix(run_dir: Path) -> tuple[dict, dict]:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        config = {k: v for k, v in manifest["config"].items()
                  if k not in ("name", "output_dir", "store_dir")}
        return config, manifest["data_fingerprints"]
    return matrix(a) == matrix(b)


def kernel(out: Path) -> str:
    k = json.loads((out / "manifest.json").read_text())["hardware"]["kernel_path"]
    return (f"{k['cpu_model']}, capability {k['cpu_capability']}, amx {k['amx']}, "
            f"{k['threads']} threads, torch {k['torch']}, MKL {k['mkl'] or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--capability", default="avx2", help="ATEN_CPU_CAPABILITY of run 3")
    parser.add_argument("--skip-identical", action="store_true", help="skip run 2")
    parser.add_argument("--keep", help="keep the runs in this folder (default: a temp dir)")
    parser.add_argument("--reference", type=Path,
                        help="a finished run of the same config and overrides, used as run 1")
    args = parser.parse_args()
    extra = [x for o in args.override for x in ("-o", o)] + ["--workers", str(args.workers)]
    with tempfile.TemporaryDirectory(prefix="nftbench-repro-") as tmp:
        root = Path(args.keep or tmp)
        if args.reference:
            if not (args.reference / "report" / "leaderboard.csv").exists():
                parser.error(f"--reference {args.reference}: no report/leaderboard.csv there")
            first = args.reference
        else:
            first = run(args.config, root / "as_is", extra, {})
        print(f"run 1: {kernel(first)}")
        if not args.skip_identical:
            again = run(args.config, root / "as_is_again", extra, {})
            print(f"run 1 again: {kernel(again)}; largest difference in the results table: "
                  f"{max_difference(first, again):.3g} (bit-identical: "
                  f"{max_difference(first, again) == 0})")
        other = run(args.config, root / args.capability, extra,
                    {"ATEN_CPU_CAPABILITY": args.capability})
        print(f"run 2 (ATEN_CPU_CAPABILITY={args.capability}): {kernel(other)}; largest "
              f"difference in the results table: {max_difference(first, other):.3g}")
        if not same_matrix(first, other):
            sys.exit(f"{first} ran another matrix than {args.config} with these overrides: "
                     "its numbers cannot be compared")
        table = compare(first, other)
    print(table.to_string(index=False))
    print(f"intervals overlap for {int(table.overlap.sum())} of {len(table)} leaderboard "
          "numbers")


if __name__ == "__main__":
    main()
