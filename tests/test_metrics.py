"""Metrics on hand-made tables with known answers: cells, and the intervals over bases and seeds
(textbook values, planted variance components, Fieller's ratio interval)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nftbench.metrics import (
    cell_summary,
    cell_table,
    complete_grid,
    components,
    crossing_step,
    item_covariance,
    mean_covariance,
    mean_interval,
    paired_difference,
    ratio_interval,
    relative_gain,
    rg_by_step,
    seed_summary,
    utility,
    variance_components,
)
from nftbench.records import RESULT_COLUMNS, row


def curve(release: str, seed: int, scores: list[float], status: str = "ok",
          base: int | None = None, n_items: int | None = None) -> list[dict]:
    return [row(release=release, base=base, adversary="ft", task="qa", role="restricted",
                seed=seed, step=10 * i, tokens=100 * i, flops=1e6 * i, metric="score", value=v,
                status=status, n_items=n_items) for i, v in enumerate(scores)]


def table() -> pd.DataFrame:
    rows = (curve("none", 0, [0.1, 0.5, 0.8]) + curve("none", 1, [0.1, 0.6, 0.9])
            + curve("scratch", 0, [0.0, 0.1, 0.2]) + curve("scratch", 1, [0.0, 0.2, 0.3])
            + curve("scratch", 2, [0.0, 0.9], status="diverged")
            + [row(release="none", adversary="ft", task="qa", role="restricted", seed=2,
                   metric="score", value=None, status="failed")])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


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


def test_t_interval_on_three_values_is_the_textbook_one() -> None:
    x = np.array([0.55, 0.84, 0.52])  # three bases, one seed each
    est = mean_interval(x[:, None])
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert (est.mean, est.ci_low, est.ci_high) == pytest.approx((x.mean(), x.mean() - half,
                                                                 x.mean() + half))
    assert est.n_bases == 3 and est.n_seeds == 1
    # the same three values as seeds of one base give the same interval
    one_base = mean_interval(x[None, :])
    assert (one_base.ci_low, one_base.ci_high) == pytest.approx((est.ci_low, est.ci_high))
    # one cell: no spread to estimate, so no interval
    assert np.isnan(mean_interval(np.array([[0.5]])).ci_low)


def test_balanced_grid_variance_is_the_textbook_one() -> None:
    """With no seed effect the estimate is the variance of the base means over B with B - 1
    degrees of freedom (the classic two-stage result); a seed effect the F test finds adds its
    component; item variance widens a final score's interval."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.2, size=(4, 1)) + rng.normal(0, 0.01, size=(4, 3))
    cov, df = mean_covariance(x[:, :, None])
    assert cov[0, 0] == pytest.approx(x.mean(axis=1).var(ddof=1) / 4)
    assert df == 3
    est = mean_interval(x)
    half = stats.t.ppf(0.975, 3) * np.sqrt(x.mean(axis=1).var(ddof=1) / 4)
    assert est.ci_high - est.mean == pytest.approx(half)
    # a strong seed effect shared by every base is kept, and widens the interval
    seeded = x + np.array([[0.0, 0.3, -0.3]])
    cov_s, df_s = mean_covariance(seeded[:, :, None])
    assert cov_s[0, 0] > cov[0, 0] + 0.01 and 1 <= df_s < 4
    # a known item variance with nothing else varying: the normal interval
    flat = mean_interval(np.full((3, 2), 0.5), item_var=0.01)
    assert (flat.ci_low, flat.ci_high) == pytest.approx((0.5 - 0.196, 0.5 + 0.196), abs=1e-3)


def test_intervals_cover_at_the_default_design() -> None:
    """3 bases x 2 seeds, a planted base effect and noise, no seed effect: the t interval of a
    mean and of a paired difference covers near its nominal 95% (2,000 simulated grids; the
    Monte Carlo error is about 0.005). ``benchmarks/coverage.py`` does this for every interval."""
    rng = np.random.default_rng(7)
    hits_mean, hits_diff = [], []
    for _ in range(2000):
        base = rng.normal(0, 0.04, (3, 1))
        a = 0.8 + base + rng.normal(0, 0.026, (3, 2))
        d = 0.5 + 0.5 * base + rng.normal(0, 0.04, (3, 1)) + rng.normal(0, 0.026, (3, 2))
        e = mean_interval(a)
        hits_mean.append(e.ci_low <= 0.8 <= e.ci_high)
        e = mean_interval(d - a)
        hits_diff.append(e.ci_low <= -0.3 <= e.ci_high)
    assert 0.93 <= np.mean(hits_mean) <= 0.97
    assert 0.93 <= np.mean(hits_diff) <= 0.97


def test_planted_variance_components_are_recovered() -> None:
    rng = np.random.default_rng(0)
    b, s = 200, 60
    x = (rng.normal(0, 0.20, (b, 1)) + rng.normal(0, 0.10, (1, s))
         + rng.normal(0, 0.05, (b, s)))
    comp = {k: float(v[0, 0]) for k, v in components(x[:, :, None]).items()}
    assert comp["base"] == pytest.approx(0.04, rel=0.25)
    assert comp["seed"] == pytest.approx(0.01, rel=0.5)
    assert comp["resid"] == pytest.approx(0.0025, rel=0.1)


def test_fieller_interval_solves_its_equation() -> None:
    rng = np.random.default_rng(3)
    den = 0.6 + rng.normal(0, 0.05, (3, 3))
    num = 0.3 + 0.5 * (den - 0.6) + rng.normal(0, 0.03, (3, 3))
    est = ratio_interval(num, den)
    assert not est.undefined
    assert est.mean == pytest.approx(num.mean() / den.mean())
    assert est.ci_low < est.mean < est.ci_high
    v, df = mean_covariance(np.stack([num, den], axis=-1), np.array([1.0, -est.mean]))
    t = stats.t.ppf(0.975, df)
    for r in (est.ci_low, est.ci_high):  # each bound is a root of the Fieller quadratic
        lhs = (num.mean() - r * den.mean()) ** 2
        rhs = t**2 * (v[0, 0] - 2 * r * v[0, 1] + r**2 * v[1, 1])
        assert lhs == pytest.approx(rhs, rel=1e-6)


def test_ratio_undefined_when_denominator_is_within_noise_or_negative() -> None:
    rng = np.random.default_rng(4)
    noisy = rng.normal(0.02, 0.1, (3, 3))
    assert "within noise" in ratio_interval(noisy + 0.3, noisy, min_gap=0.0).undefined
    small = np.full((3, 3), 0.03) + rng.normal(0, 1e-4, (3, 3))
    under = ratio_interval(small, small, min_gap=0.05).undefined  # its interval excludes 0
    assert "under the minimum gap 0.05" in under and "noise" not in under
    assert "minimum gap" in ratio_interval(small[:1, :1], small[:1, :1], min_gap=0.05).undefined
    negative = -0.4 + rng.normal(0, 0.02, (3, 3))
    assert ratio_interval(negative, negative).undefined.startswith("negative transfer")


def test_complete_grid_drops_a_failed_seed_from_every_base() -> None:
    idx = pd.MultiIndex.from_tuples([(0, 0), (0, 1), (1, 0), (1, 1)], names=["base", "seed"])
    wide = pd.DataFrame({"v": [1.0, 2.0, 3.0, np.nan]}, index=idx)
    assert list(complete_grid(wide).index) == [(0, 0), (1, 0)]


def based_table() -> pd.DataFrame:
    """3 bases x 2 seeds; the defense halves none's gain over scratch on every base."""
    rows = []
    for b, level in enumerate([0.9, 0.6, 0.75]):
        for s in range(2):
            rows += curve("none", s, [0.1, level + 0.01 * s], base=b, n_items=200)
            rows += curve("def", s, [0.1, (level + 0.01 * s + 0.2) / 2], base=b, n_items=200)
        rows.append(row(release="none", base=b, adversary="-", task="cap", role="capability",
                        step=0, metric="score", value=0.9 + 0.02 * b))
        rows.append(row(release="def", base=b, adversary="-", task="cap", role="capability",
                        step=0, metric="score", value=0.45 + 0.01 * b))
    for s in range(2):
        rows += curve("scratch", s, [0.1, 0.2], n_items=200)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_relative_gain_pairs_bases_and_scratch_by_seed() -> None:
    cells = cell_table(based_table())
    rg = relative_gain(cells, "def", "ft", "qa")
    assert rg.mean == pytest.approx(0.5) and rg.n_bases == 3 and rg.n_seeds == 2
    # exact proportionality on every base: the paired interval is tight around 0.5
    assert rg.ci_low == pytest.approx(0.5, abs=1e-6) and rg.ci_high == pytest.approx(0.5,
                                                                                     abs=1e-6)
    util = utility(based_table()).set_index("release")
    assert util.loc["def", "retention"] == pytest.approx(0.46 / 0.92)
    assert util.loc["def", "n_bases"] == 3


def test_variance_components_table_sees_the_base_effect() -> None:
    comp = variance_components(based_table()).set_index("release")
    none = comp.loc["none"]
    assert none.share_base > 0.9 and none.n_bases == 3 and none.n_items == 200
    assert none.var_items == pytest.approx(0.76 * 0.24 / 200, rel=0.05)


def items_table(none_items: list[str], def_items: list[str]) -> pd.DataFrame:
    """One base x len(lists) seeds: final scores with their items' outcomes kept."""
    rows = []
    for s, (a, d) in enumerate(zip(none_items, def_items, strict=True)):
        for release, items in (("none", a), ("def", d)):
            rows += [row(release=release, base=0, adversary="ft", task="qa", role="restricted",
                         seed=s, step=10 * i, metric="score", value=v.count("1") / len(v),
                         n_items=len(v), items=v)
                     for i, v in enumerate(["0" * len(items), items])]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_paired_difference_carries_the_items_discordance() -> None:
    """Every seed's difference is exactly -0.01: the grid alone gives a zero-width interval.
    The items say one question of 100 separates the models, and the task's population of
    questions could hold more or fewer such questions: the interval is the paired one."""
    none = "1" * 100
    miss = "0" + "1" * 99
    est = paired_difference(cell_table(items_table([none, none], [miss, miss])), "def", "ft",
                            "qa")
    d = np.array([-1.0] + [0.0] * 99)
    half = stats.norm.ppf(0.975) * np.sqrt(d.var(ddof=1) / 100)
    assert est.mean == pytest.approx(-0.01)
    assert est.ci_high - est.mean == pytest.approx(half, rel=1e-3)
    # the same scores with two questions flipped in opposite directions: Δ = 0, but wider
    swap = "10" + "1" * 98, "01" + "1" * 98
    est = paired_difference(cell_table(items_table([swap[0]] * 2, [swap[1]] * 2)), "def",
                            "ft", "qa")
    assert est.mean == pytest.approx(0.0) and est.ci_high > half * 1.3
    # a run that kept no items: the interval is the grid's alone (zero width here)
    old = items_table([none, none], [miss, miss]).assign(items=None)
    est = paired_difference(cell_table(old), "def", "ft", "qa")
    assert est.ci_low == pytest.approx(est.ci_high)


def test_item_covariance_recovers_planted_binomial_variance() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random(4000) < 0.3).astype(float)
    y = np.where(rng.random(4000) < 0.9, x, 1 - x)  # agrees with x on 90% of items
    cov = item_covariance(x, y)
    assert cov[0, 0] == pytest.approx(0.21 / 4000, rel=0.1)
    # var(x - y) = P(disagree) - Δ^2 ≈ 0.1
    assert (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) == pytest.approx(0.1 / 4000, rel=0.1)


def test_item_level_intervals_cover_the_population_of_questions() -> None:
    """Deterministic models (every base and seed alike) on a sample of 150 questions from a
    population where none, the defense and scratch get each question right with planted joint
    probabilities: Δ and RG vary only with the sample of questions, and their item-level
    intervals cover the population's values near 95% (2,000 samples)."""
    rng = np.random.default_rng(3)
    # joint outcomes (none, def, scratch) and their population probabilities
    outcomes = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]],
                        float)
    probs = np.array([0.45, 0.25, 0.05, 0.1, 0.1, 0.05])
    p = probs @ outcomes
    true_diff, true_rg = p[1] - p[0], (p[1] - p[2]) / (p[0] - p[2])
    hits_diff, hits_rg = [], []
    for _ in range(2000):
        x = outcomes[rng.choice(len(probs), 150, p=probs)]  # [items, 3]
        none, dfn, scr = x.T
        grid = np.ones((3, 2))
        e = mean_interval(grid * (dfn - none).mean(), 0.95,
                          float(item_covariance(dfn - none)[0, 0]))
        hits_diff.append(e.ci_low <= true_diff <= e.ci_high)
        e = ratio_interval(grid * (dfn - scr).mean(), grid * (none - scr).mean(),
                           item_cov=item_covariance(dfn - scr, none - scr))
        hits_rg.append(e.ci_low <= true_rg <= e.ci_high)
    assert 0.93 <= np.mean(hits_diff) <= 0.97
    assert 0.93 <= np.mean(hits_rg) <= 0.97


def test_rg_by_step_and_where_it_crosses() -> None:
    """At step 0 every release scores 0.1 (no gain yet: RG undefined, with the reason); at the
    last step the defense holds half of none's gain over scratch on every base."""
    curve_rg = rg_by_step(cell_table(based_table()), "def", "ft", "qa").set_index("step")
    assert list(curve_rg.index) == [0, 10]
    assert np.isnan(curve_rg.loc[0, "rg"]) and "within noise" in curve_rg.loc[0, "undefined"]
    assert curve_rg.loc[10, "rg"] == pytest.approx(0.5)
    assert crossing_step(curve_rg.reset_index(), 0.5) == (10.0, False)
    assert crossing_step(curve_rg.reset_index(), 0.9) == (10.0, True)  # censored at the budget
