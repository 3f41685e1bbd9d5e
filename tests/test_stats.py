"""Summaries and Welch's test against scipy, hand-computed values and degenerate samples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from train.stats import format_mean_ci, format_p, summarize, verdict, welch_test


def _t_two_sided_p(t: float, dof: float, steps: int = 4000) -> float:
    """Two-sided p of Student's t, by Simpson's rule on the density (independent of scipy)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    f = lambda x: c * (1 + x * x / dof) ** (-(dof + 1) / 2)  # noqa: E731
    h = abs(t) / steps
    s = f(0) + f(abs(t)) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 1 - 2 * s * h / 3


# ---- summarize --------------------------------------------------------------------------


def test_summary_basics():
    s = summarize([1, 2, 3, 4, 5])
    assert (s.n, s.mean, s.min, s.max) == (5, 3, 1, 5)
    assert s.std == pytest.approx(math.sqrt(2.5))  # sample std, ddof=1
    assert s.sem == pytest.approx(math.sqrt(2.5 / 5))


@pytest.mark.parametrize("n", [2, 3, 10, 50])
def test_summary_interval_matches_scipy(n):
    x = np.random.default_rng(n).normal(94.0, 0.15, n)
    s = summarize(x)
    lo, hi = st.t.interval(0.95, n - 1, loc=x.mean(), scale=st.sem(x))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert s.std == pytest.approx(x.std(ddof=1))
    s90 = summarize(x, confidence=0.9)
    lo, hi = st.t.interval(0.9, n - 1, loc=x.mean(), scale=st.sem(x))
    assert (s90.ci_low, s90.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_summary_of_one_run_has_no_interval():
    s = summarize([94.1])
    assert s.n == 1 and s.mean == 94.1 and s.min == s.max == 94.1
    assert math.isnan(s.std) and math.isnan(s.sem) and math.isnan(s.ci_low)
    assert not s.has_interval
    assert format_mean_ci([94.1]) == "94.10 (n=1: no interval)"
    assert "nan" not in s.text()


def test_summary_of_constant_runs():
    s = summarize([94.0, 94.0, 94.0])
    assert s.std == 0 and s.ci_low == s.ci_high == 94.0
    assert format_mean_ci(s) == "94.00 ± 0.00 (95% CI, n=3)"


def test_summary_rejects_empty_and_nonfinite():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, math.nan])


def test_format_mean_ci():
    x = [94.0, 94.2, 94.1, 93.9]
    s = summarize(x)
    text = format_mean_ci(x, digits=3, unit="%")
    assert text == f"{s.mean:.3f} ± {s.half_width:.3f} % (95% CI, n=4)"


# ---- Welch's test -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_welch_matches_the_formulas(seed, confidence):
    """welch_test is scipy's; this writes Welch's test out by hand (B − A, not A − B)."""
    rng = np.random.default_rng(seed)
    na, nb = rng.integers(2, 30, size=2)
    a = rng.normal(94.0, rng.uniform(0.05, 0.3), na)
    b = rng.normal(94.0 + rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.3), nb)
    r = welch_test(a, b, confidence)
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    diff = b.mean() - a.mean()
    assert r.diff == pytest.approx(diff, rel=1e-12)
    assert r.se == pytest.approx(se, rel=1e-12)
    assert r.dof == pytest.approx(dof, rel=1e-10)
    assert r.t == pytest.approx(diff / se, rel=1e-9)
    assert r.p == pytest.approx(_t_two_sided_p(diff / se, dof), abs=1e-8)
    half = st.t.ppf((1 + confidence) / 2, dof) * se  # the t table's quantile
    assert (r.ci_low, r.ci_high) == (pytest.approx(diff - half), pytest.approx(diff + half))
    assert r.half_width == pytest.approx(half)


def test_welch_hand_computed_equal_sizes():
    # a: mean 3, var 2.5; b: mean 6, var 10. se² = 2.5/5 + 10/5 = 2.5; t = 3/√2.5;
    # dof = 2.5² / (0.5²/4 + 2²/4) = 6.25/1.0625 = 100/17.
    r = welch_test([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert r.diff == 3
    assert r.se == pytest.approx(math.sqrt(2.5))
    assert r.t == pytest.approx(3 / math.sqrt(2.5))  # 1.8974
    assert r.dof == pytest.approx(100 / 17)  # 5.8824
    assert r.p == pytest.approx(_t_two_sided_p(r.t, 100 / 17), abs=1e-8)
    assert 0.10 < r.p < 0.11  # t table: ν≈6, t=1.90


def test_welch_hand_computed_unequal_sizes():
    # a: mean 11, var 2 (n=2); b: mean 22, var 4 (n=3). va = 1, vb = 4/3, se² = 7/3;
    # dof = (7/3)² / (1²/1 + (4/3)²/2) = (49/9)/(17/9) = 49/17; t = 11/√(7/3).
    r = welch_test([10, 12], [20, 22, 24])
    assert r.se == pytest.approx(math.sqrt(7 / 3))
    assert r.dof == pytest.approx(49 / 17)
    assert r.t == pytest.approx(11 / math.sqrt(7 / 3))
    assert r.p == pytest.approx(_t_two_sided_p(r.t, 49 / 17), abs=1e-8)


def test_welch_one_side_constant_is_fine():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "precision loss" warning included
        r = welch_test([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert r.dof == pytest.approx(2)  # all the variance comes from B
    # t = 1 / √(1/3) on 2 degrees of freedom
    assert r.t == pytest.approx(math.sqrt(3))
    assert r.p == pytest.approx(_t_two_sided_p(math.sqrt(3), 2), abs=1e-8)


def test_welch_needs_two_runs_per_side():
    r = welch_test([94.1], [94.0, 94.2])
    assert not r.testable and math.isnan(r.p)
    text = verdict(r)
    assert text.startswith("not testable") and "A has 1 run" in text
    assert "nan" not in text.lower()


def test_welch_both_constant():
    same = welch_test([94.0, 94.0], [94.0, 94.0, 94.0])
    assert same.constant and same.p == 1.0 and same.t == 0
    text = verdict(same)
    assert text.startswith("no difference") and "nan" not in text.lower()
    apart = welch_test([94.0, 94.0], [94.5, 94.5])
    assert apart.constant and apart.p == 0.0 and apart.t == math.inf
    text = verdict(apart)
    assert text.startswith("B is better in accuracy by 0.50 points")
    assert "nan" not in text.lower() and "inf" not in text.lower()


# ---- verdict ----------------------------------------------------------------------------


def test_verdict_significant_and_directions():
    a = [94.00, 94.05, 93.95, 94.02, 93.98, 94.01]
    b = [94.20, 94.25, 94.15, 94.22, 94.18, 94.21]
    r = welch_test(a, b)
    text = verdict(r)
    assert text == (
        f"B is better in accuracy by {r.diff:.2f} ± {r.half_width:.2f} points "
        f"(95% CI), {format_p(r.p)}"
    )
    # same data as times: lower is better, so A wins
    assert verdict(r, metric="time", unit="s", better="lower").startswith("A is better in time")
    assert verdict(r, names=("old", "new")).startswith("new is better")


def test_verdict_not_significant():
    r = welch_test([94.0, 94.3, 93.8, 94.1], [94.1, 93.9, 94.2, 94.0])
    text = verdict(r)
    assert text.startswith("no significant difference in accuracy (B − A = ")
    assert format_p(r.p) in text
    with pytest.raises(ValueError):
        verdict(r, better="bigger")


def test_format_p():
    assert format_p(0.0031) == "p = 0.0031"
    assert format_p(0.41) == "p = 0.41"
    assert format_p(1e-6) == "p < 0.001"
    assert format_p(math.nan) == "p undefined"
