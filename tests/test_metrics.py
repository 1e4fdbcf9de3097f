"""Metrics on hand-made tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nftbench.engine import RESULT_COLUMNS, row
from nftbench.metrics import bootstrap_ci, cell_summary, seed_summary


def curve(release: str, seed: int, scores: list[float], status: str = "ok") -> list[dict]:
    return [row(release=release, adversary="ft", task="qa", role="restricted", seed=seed,
                step=10 * i, tokens=100 * i, flops=1e6 * i, metric="score", value=v,
                status=status) for i, v in enumerate(scores)]


def table() -> pd.DataFrame:
    rows = (curve("none", 0, [0.1, 0.5, 0.8]) + curve("none", 1, [0.1, 0.6, 0.9])
            + curve("scratch", 0, [0.0, 0.1, 0.2]) + curve("scratch", 1, [0.0, 0.2, 0.3])
            + curve("scratch", 2, [0.0, 0.9], status="diverged")
            + [row(release="none", adversary="ft", task="qa", role="restricted", seed=2,
                   metric="score", value=None, status="failed")])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_bootstrap_ci() -> None:
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert all(np.isnan(bootstrap_ci([])))
    assert bootstrap_ci([1.0, 2.0]) == bootstrap_ci([1.0, 2.0])  # deterministic


def test_cell_summary_gain_and_status() -> None:
    cells = cell_summary(table()).set_index(["release", "seed"])
    assert cells.loc[("none", 0), "gain"] == pytest.approx(0.7)
    assert cells.loc[("none", 0), "steps"] == 20
    assert cells.loc[("scratch", 2), "status"] == "diverged"
    assert np.isnan(cells.loc[("scratch", 2), "sT"])  # a diverged cell has no final score
    assert cells.loc[("none", 2), "status"] == "failed"


def test_seed_summary_counts_failed_and_diverged_apart() -> None:
    s = seed_summary(table()).set_index("release")
    assert s.loc["none", "mean"] == pytest.approx(0.85)
    assert s.loc["none", "n_seeds"] == 2 and s.loc["none", "n_failed"] == 1
    assert s.loc["scratch", "mean"] == pytest.approx(0.25)  # the diverged 0.9 is not averaged
    assert s.loc["scratch", "n_diverged"] == 1
    assert s.loc["none", "ci_low"] <= 0.85 <= s.loc["none", "ci_high"]
