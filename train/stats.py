"""Significance testing for many runs: summaries with confidence intervals and Welch's t-test.

The seed's "main weapon is statistical significance": one run's test accuracy varies by
about 0.15%, more than many of the effects being measured, so two recipes are compared over
many runs. This module turns lists of per-run results into

* :func:`summarize` — mean, sample std, SEM and the Student-t confidence interval of the mean;
* :func:`welch_test` — the difference of two means (B − A), its standard error,
  Welch–Satterthwaite degrees of freedom, t, two-sided p and the interval of the difference;
* :func:`verdict` — one plain sentence saying which is better, by how much, and how sure;
* :func:`format_mean_ci` — "94.12 ± 0.05 (95% CI, n=10)".

Degenerate inputs never raise and never print "nan": one run has no interval ("n=1: no
interval"); two constant samples have no spread to test, which the verdict says in words.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

__all__ = [
    "Summary",
    "WelchResult",
    "format_mean_ci",
    "format_p",
    "summarize",
    "verdict",
    "welch_test",
]


@dataclass(frozen=True)
class Summary:
    """Statistics of one sample of runs.

    ``std`` is the sample standard deviation (ddof=1) and ``sem`` = std/√n; both are NaN
    for n=1, and so are ``ci_low``/``ci_high``/``half_width`` (the interval is undefined).
    """

    n: int
    mean: float
    std: float
    min: float
    max: float
    sem: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        """Half the width of the confidence interval (the "±" value)."""
        return (self.ci_high - self.ci_low) / 2

    @property
    def has_interval(self) -> bool:
        return self.n >= 2

    def text(self, digits: int = 2, unit: str = "") -> str:
        """``"94.12 ± 0.05 (95% CI, n=10)"``; see :func:`format_mean_ci`."""
        return format_mean_ci(self, digits=digits, unit=unit)


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of B against A.

    ``diff`` is mean(B) − mean(A) and ``ci_low``/``ci_high`` its confidence interval.
    ``testable`` is False when either side has fewer than 2 runs (no variance to estimate):
    then ``se``, ``dof``, ``t``, ``p`` and the interval are NaN and ``reason`` says why.
    When both samples are constant (``se == 0``) the difference is exact: ``p`` is 1 if the
    constants are equal and 0 otherwise, ``t`` is 0 or ±inf, ``dof`` NaN, the interval a point.
    """

    a: Summary
    b: Summary
    diff: float
    se: float
    dof: float
    t: float
    p: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    testable: bool = True
    reason: str = ""

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    @property
    def constant(self) -> bool:
        """Both samples constant: no spread, so no test (the difference is what it is)."""
        return self.testable and self.se == 0


def _values(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what} is empty: need at least one run")
    if any(not math.isfinite(v) for v in out):
        raise ValueError(f"{what} holds a non-finite value: {out}")
    return out


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof=1), min, max, SEM and the Student-t interval of the mean.

    Raises ``ValueError`` for an empty sample or a non-finite value (a diverged run should be
    dropped or reported by the caller, not averaged).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    xs = _values(values, "the sample")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        nan = math.nan
        return Summary(n, mean, nan, xs[0], xs[0], nan, nan, nan, confidence)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    std = math.sqrt(var)
    sem = std / math.sqrt(n)
    half = _st.t.ppf(0.5 + confidence / 2, n - 1) * sem
    return Summary(n, mean, std, min(xs), max(xs), sem, mean - half, mean + half, confidence)


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> WelchResult:
    """Welch's t-test of mean(B) − mean(A): ``scipy.stats.ttest_ind(equal_var=False)`` and
    its confidence interval, around the cases scipy answers with NaN.

    se = √(s_a²/n_a + s_b²/n_b); t = diff/se with Welch–Satterthwaite degrees of freedom;
    p two-sided; interval diff ± t_{dof, (1+confidence)/2}·se. Fewer than 2 runs on a side
    gives an untestable result, two constant samples an exact one (see :class:`WelchResult`).
    """
    sa, sb = summarize(a, confidence), summarize(b, confidence)
    diff = sb.mean - sa.mean
    nan = math.nan
    if sa.n < 2 or sb.n < 2:
        sizes = f"A has {sa.n} run{'s' * (sa.n != 1)}, B has {sb.n}"
        return WelchResult(
            sa,
            sb,
            diff,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            confidence,
            False,
            f"each side needs at least 2 runs to estimate its spread ({sizes})",
        )
    se = math.sqrt(sa.std**2 / sa.n + sb.std**2 / sb.n)
    if se == 0:
        # Both samples constant: there is no noise to test against (scipy would divide 0
        # by 0 and answer NaN), and the difference is exact.
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return WelchResult(
            sa,
            sb,
            diff,
            0.0,
            nan,
            t,
            1.0 if diff == 0 else 0.0,
            diff,
            diff,
            confidence,
            True,
            "both samples are constant",
        )
    # scipy tests its first sample minus its second: B first, so t and the interval are
    # those of B − A.
    with warnings.catch_warnings():
        # A constant side (one recipe always reaching the same accuracy on a small test
        # set) is a valid input whose variance is exactly 0; scipy warns about it as if
        # it were cancellation in nearly equal data.
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = _st.ttest_ind([float(x) for x in b], [float(x) for x in a], equal_var=False)
        interval = result.confidence_interval(confidence_level=confidence)
    return WelchResult(
        sa,
        sb,
        diff,
        se,
        float(result.df),
        float(result.statistic),
        float(result.pvalue),
        float(interval.low),
        float(interval.high),
        confidence,
    )


def format_p(p: float) -> str:
    """``"p = 0.003"``, ``"p = 0.41"``, ``"p < 0.001"``: two significant digits, no nan."""
    if math.isnan(p):
        return "p undefined"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def _level(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def format_mean_ci(
    values: Sequence[float] | Summary, digits: int = 2, unit: str = "", confidence: float = 0.95
) -> str:
    """A "mean ± half-width" line: ``"94.12 ± 0.05 (95% CI, n=10)"``.

    With one run: ``"94.12 (n=1: no interval)"``. ``unit`` goes after the numbers
    (``"94.12 ± 0.05 % (95% CI, n=10)"``).
    """
    s = values if isinstance(values, Summary) else summarize(values, confidence)
    u = f" {unit}" if unit else ""
    if not s.has_interval:
        return f"{s.mean:.{digits}f}{u} (n=1: no interval)"
    return (
        f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f}{u} ({_level(s.confidence)} CI, n={s.n})"
    )


def verdict(
    result: WelchResult,
    metric: str = "accuracy",
    unit: str = "points",
    better: str = "higher",
    alpha: float = 0.05,
    names: tuple[str, str] = ("A", "B"),
    digits: int = 2,
) -> str:
    """One sentence on B versus A, e.g.

    * ``"B is better in accuracy by 0.12 ± 0.05 points (95% CI), p = 0.003"``
    * ``"no significant difference in accuracy (B − A = +0.03 ± 0.10 points, 95% CI; p = 0.41)"``

    ``better`` says which direction is good for the metric: ``"higher"`` (accuracy) or
    ``"lower"`` (time, loss). Significance is ``p < alpha``.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower'; got {better!r}")
    name_a, name_b = names
    u = f" {unit}" if unit else ""
    if not result.testable:
        return f"not testable: {result.reason}; {name_b} − {name_a} = {result.diff:+.{digits}f}{u}"
    sign = 1 if better == "higher" else -1
    winner = name_b if sign * result.diff > 0 else name_a
    size = abs(result.diff)
    if result.constant:
        if result.diff == 0:
            return (
                f"no difference in {metric}: both sides are constant at "
                f"{result.a.mean:.{digits}f}{u} (no spread to test)"
            )
        return (
            f"{winner} is better in {metric} by {size:.{digits}f}{u} (both sides "
            f"constant, no spread to test)"
        )
    level = _level(result.confidence)
    if result.p < alpha:
        return (
            f"{winner} is better in {metric} by {size:.{digits}f} ± "
            f"{result.half_width:.{digits}f}{u} ({level} CI), {format_p(result.p)}"
        )
    return (
        f"no significant difference in {metric} ({name_b} − {name_a} = "
        f"{result.diff:+.{digits}f} ± {result.half_width:.{digits}f}{u}, {level} CI; "
        f"{format_p(result.p)})"
    )
