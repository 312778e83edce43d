"""Has a model's world moved? Drift statistics comparing its training reference with a recent window.

A feature (the values a model sees, or its residuals from the learned seasonal profile) is
summarised at training time by a `Reference`: its quantiles and its effective sample size.
`feature_drift` compares a recent window with it by three statistics:

- the population stability index (PSI) over the reference deciles: how much the shares of
  values have moved between ten bins a model was trained on;
- the Kolmogorov-Smirnov distance D, with a p-value from the effective sizes of both sides:
  is the difference more than the chance of two samples?
- the Wasserstein-1 distance in reference robust standard deviations: how far, in the
  feature's own units of spread, the distribution has moved.

A window has drifted when the difference is significant AND of practical size. Either alone
is wrong: with a window of weeks any trivial difference is significant, and with a window of
an hour a large PSI is often chance. Values of a minute series are strongly autocorrelated,
so a window of n points carries far fewer than n independent observations; the p-value uses
`effective_size` rather than n, or every ripple of a seasonal series would be "significant".

Raw values must be compared over whole seasonal periods: a few hours of a daily cycle see
part of its range and really are distributed differently from whole days. Residuals from the
learned seasonal profile have no such constraint, and they also see a change of seasonal
shape, which leaves the distribution of the values unchanged.

Two concept-drift checks complete the picture: `rate_drift` (the model opens anomalies far
more often than in training) and `precision_drift` (feedback says its anomalies are mostly
false). Everything returned is JSON-safe: plain floats, None where a statistic is undefined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

# Reference summary size: quantiles at probabilities linspace(0, 1, QUANTILES).
QUANTILES = 101
PROBABILITIES = np.linspace(0.0, 1.0, QUANTILES)

# A share of 0 would make the PSI infinite: an empty bin counts as this share.
PSI_EPSILON = 1e-4
# Robust standard deviations from the IQR and from the 5-95% range, for a normal distribution.
IQR_PER_SD = 1.349
P5_P95_PER_SD = 3.29
# The rate floor, per day, under a model that saw no anomaly in training: without it one
# anomaly would be infinitely surprising.
RATE_FLOOR_PER_DAY = 0.1


@dataclass(frozen=True)
class Reference:
    """A feature's distribution at training time, small enough to store with the model."""

    quantiles: list[float]  # QUANTILES values at PROBABILITIES, non-decreasing
    n: int  # finite values summarised
    n_eff: float  # their effective sample size (see effective_size)

    def as_dict(self) -> dict[str, Any]:
        return {"quantiles": list(self.quantiles), "n": self.n, "n_eff": self.n_eff}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        quantiles = [float(q) for q in d["quantiles"]]
        if len(quantiles) != QUANTILES:
            raise ValueError(f"a reference has {QUANTILES} quantiles, not {len(quantiles)}")
        return cls(quantiles=quantiles, n=int(d["n"]), n_eff=float(d["n_eff"]))

    @property
    def robust_scale(self) -> float:
        """The reference's spread as a standard deviation: IQR/1.349, else (q95 - q5)/3.29.

        A feature constant over half its values has no IQR, and one constant over 90% no
        5-95% range either; the scale is then 1.0, so the Wasserstein distance is in the
        feature's own units rather than infinite.
        """
        q = self.quantiles
        for spread in ((q[75] - q[25]) / IQR_PER_SD, (q[95] - q[5]) / P5_P95_PER_SD):
            if spread > 0 and math.isfinite(spread):
                return spread
        return 1.0


def _finite(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def effective_size(values: np.ndarray) -> float:
    """How many independent observations `values` (in time order) are worth.

    For an AR(1) process with lag-1 autocorrelation rho, the mean of n points has the
    variance of n (1 - rho) / (1 + rho) independent ones. rho is estimated on the finite
    values, clipped to [0, 0.99] (negative autocorrelation is not credited with extra
    information; 0.99 keeps a near-constant trend from counting for nothing), and is 0 for
    a constant series. At least min(n, 2), so two values are always a sample of two.

    A seasonal series counts its season as autocorrelation too, which makes the size
    conservative for raw values: the intended direction, as a false drift alarm costs a
    retrain and an unexplained alert.
    """
    x = _finite(values)
    n = len(x)
    if n < 2:
        return float(n)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd values: rho undefined, taken as 0
        centred = x - x.mean()
        denominator = float(np.dot(centred, centred))
        rho = float(np.dot(centred[:-1], centred[1:])) / denominator if denominator > 0 else 0.0
    rho = min(max(rho, 0.0), 0.99) if math.isfinite(rho) else 0.0
    return max(n * (1.0 - rho) / (1.0 + rho), float(min(n, 2)))


def reference_of(values: np.ndarray) -> Reference | None:
    """The reference of a training feature (in time order); None with fewer than 2 finite values."""
    x = _finite(values)
    if len(x) < 2:
        return None
    # Linear interpolation of sorted values is monotone in exact arithmetic; the running
    # maximum removes any rounding wobble so consumers may rely on it.
    quantiles = np.maximum.accumulate(np.quantile(x, PROBABILITIES))
    return Reference(quantiles=[float(q) for q in quantiles], n=len(x), n_eff=effective_size(x))


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.01  # KS p-value below which a difference is significant
    psi: float = 0.2  # population stability index at which a difference matters
    wasserstein: float = 0.5  # Wasserstein-1 distance, in reference robust standard deviations, that matters


def _reference_cdf(quantiles: np.ndarray, x: np.ndarray, *, left: bool) -> np.ndarray:
    """The reference CDF, linear between its quantiles: F(x) or, with `left`, F(x-) = P(X < x).

    Where quantiles coincide (a value repeated in the reference) the CDF jumps, and the two
    limits differ; np.interp is undefined on repeated abscissae, hence the explicit search.
    """
    k = np.searchsorted(quantiles, x, side="left" if left else "right")
    lo = np.clip(k - 1, 0, QUANTILES - 1)
    hi = np.clip(k, 0, QUANTILES - 1)
    span = quantiles[hi] - quantiles[lo]
    safe_span = np.where(span > 0, span, 1.0)
    fraction = np.where(span > 0, (x - quantiles[lo]) / safe_span, 0.0)
    cdf = PROBABILITIES[lo] + fraction * (PROBABILITIES[hi] - PROBABILITIES[lo])
    return np.where(k == 0, 0.0, np.where(k == QUANTILES, 1.0, cdf))


def _psi(quantiles: np.ndarray, current: np.ndarray) -> float:
    """PSI over bins [d_i, d_(i+1)) whose edges are the reference deciles, outer bins open.

    Each bin expects the reference's share of it: 0.1 for a continuous reference. Deciles
    that coincide (a value repeated over more than a tenth of the reference) merge their bins,
    and the repeated value's mass is expected in the bin it falls in, so a reference equal to
    itself scores 0 however many of its values are equal.
    """
    edges = np.unique(quantiles[10:100:10])
    expected = np.diff(np.concatenate([[0.0], _reference_cdf(quantiles, edges, left=True), [1.0]]))
    counts = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    actual = counts / len(current)
    expected = np.maximum(expected, PSI_EPSILON)
    actual = np.maximum(actual, PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _ks(quantiles: np.ndarray, current_sorted: np.ndarray) -> float:
    """sup |F_ref - F_cur|, exact for the piecewise-linear F_ref and the step F_cur.

    Between consecutive points of the union of reference quantiles and current values F_ref
    is linear and F_cur constant, so the supremum is at a point of the union, on one side or
    the other of its jump.
    """
    xs = np.union1d(quantiles, current_sorted)
    n = len(current_sorted)
    gaps = [
        _reference_cdf(quantiles, xs, left=False) - np.searchsorted(current_sorted, xs, side="right") / n,
        _reference_cdf(quantiles, xs, left=True) - np.searchsorted(current_sorted, xs, side="left") / n,
    ]
    return float(max(np.abs(gap).max() for gap in gaps))


def _ks_p_value(d: float, n_eff_reference: float, n_eff_current: float) -> float:
    """Asymptotic two-sample KS p-value on the effective sizes, with Stephens' correction."""
    en = n_eff_reference * n_eff_current / (n_eff_reference + n_eff_current)
    root = math.sqrt(en)
    return float(min(max(stats.kstwobign.sf((root + 0.12 + 0.11 / root) * d), 0.0), 1.0))


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def feature_drift(
    reference: Reference, current: np.ndarray, thresholds: Thresholds, *, independence: float | None = None
) -> dict[str, Any]:
    """Compare a recent window (in time order) of a feature with its training reference.

    `independence` is the share of points that count as independent observations (n_eff / n),
    when it is known from normal conditions: from the reference's residuals, say. Estimated on
    each window instead, a persistent shift in the recent window reads as autocorrelation and
    hides itself, and a seasonal series' season does too. Both sizes then use it.

    Returns {"n", "n_eff", "psi", "ks", "ks_p", "wasserstein", "drifted"}; the Wasserstein
    distance is in reference robust standard deviations (`Reference.robust_scale`).
    drifted = significant (ks_p < alpha) and large (psi or wasserstein at its threshold).
    With fewer than 2 finite values there is nothing to compare:
    {"n": n, "drifted": False, "insufficient": True}.
    A statistic overflowing on absurd values is None and does not count towards drift.
    """
    values = _finite(current)
    n = len(values)
    if n < 2:
        return {"n": n, "drifted": False, "insufficient": True}
    quantiles = np.asarray(reference.quantiles, dtype=np.float64)
    if independence is not None:
        share = min(max(independence, 0.0), 1.0)
        n_eff, n_eff_reference = max(n * share, 2.0), max(reference.n * share, 2.0)
    else:
        n_eff, n_eff_reference = effective_size(values), reference.n_eff
    with np.errstate(over="ignore", invalid="ignore"):
        psi = _json_float(_psi(quantiles, values))
        ks = _json_float(_ks(quantiles, np.sort(values)))
        ks_p = None if ks is None else _json_float(_ks_p_value(ks, n_eff_reference, n_eff))
        distance = float(np.mean(np.abs(quantiles - np.quantile(values, PROBABILITIES))))
        wasserstein = _json_float(distance / reference.robust_scale)
    significant = ks_p is not None and ks_p < thresholds.alpha
    large = (psi is not None and psi >= thresholds.psi) or (
        wasserstein is not None and wasserstein >= thresholds.wasserstein
    )
    return {
        "n": n,
        "n_eff": n_eff,
        "psi": psi,
        "ks": ks,
        "ks_p": ks_p,
        "wasserstein": wasserstein,
        "drifted": significant and large,
    }


def rate_drift(
    *, reference_rate_per_day: float, count: int, days: float, alpha: float, min_count: int = 3
) -> dict[str, Any]:
    """Concept drift of the anomaly rate: `count` anomalies in the last `days` against training.

    p = P(X >= count) for X Poisson with mean max(reference rate, 0.1/day) * days. The floor
    stops a model that saw no anomaly in training from flagging on its first one. Drifted when
    the count is at least `min_count`, significant (p < alpha) and at least twice the
    training rate: a rate that is significantly but slightly higher is not worth a retrain.
    """
    if days <= 0:
        raise ValueError(f"days must be positive, not {days}")
    mu = max(reference_rate_per_day, RATE_FLOOR_PER_DAY) * days
    p = float(stats.poisson.sf(count - 1, mu))
    rate = count / days
    return {
        "count": count,
        "days": float(days),
        "rate_per_day": rate,
        "reference_rate_per_day": float(reference_rate_per_day),
        "p": p,
        "drifted": bool(count >= min_count and p < alpha and rate >= 2 * reference_rate_per_day),
    }


def _precision(true_positives: int, feedback: int) -> float | None:
    return true_positives / feedback if feedback > 0 else None


def precision_drift(
    *,
    reference: tuple[int, int],
    recent: tuple[int, int],
    min_feedback: int = 5,
    floor: float = 0.5,
    drop: float = 0.2,
) -> dict[str, Any]:
    """Concept drift seen by users: the share of true positives among anomalies with feedback.

    Each tuple is (true positives, anomalies with any feedback: true, false or expected).
    Drifted when the recent window has at least `min_feedback` answers, its precision is
    below `floor`, and it fell by at least `drop` from the reference (or there is no
    reference precision to compare with). Precision is None without feedback.
    """
    precision = _precision(*recent)
    reference_precision = _precision(*reference)
    drifted = (
        recent[1] >= min_feedback
        and precision is not None
        and precision < floor
        and (reference_precision is None or reference_precision - precision >= drop)
    )
    return {
        "precision": precision,
        "reference_precision": reference_precision,
        "feedback": recent[1],
        "drifted": drifted,
    }
