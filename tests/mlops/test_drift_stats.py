"""Drift statistics (mlops/drift_stats.py) on minute-series-like data: a window of the same
process is rarely drift whatever its size, a trivial difference is not drift even when huge
windows make it significant, and a moved level, a wider noise or a new seasonal shape are.

The data is a level plus a daily sine (1440 points a day) plus AR(1) noise (phi 0.5), so
consecutive points are correlated as in a real minute series. Seeds are fixed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy.signal import lfilter

from mlops.drift_stats import (
    QUANTILES,
    Reference,
    Thresholds,
    effective_size,
    feature_drift,
    precision_drift,
    rate_drift,
    reference_of,
)

DAY = 1440
PHI = 0.5
LEVEL = 10.0
# The daily swing, in noise standard deviations. With a much stronger season the raw values
# lose power (effective_size counts the season as autocorrelation): one reason the service
# also watches residuals from the seasonal profile.
AMPLITUDE = 1.5
REFERENCE_DAYS = 3
THRESHOLDS = Thresholds()


def minute_series(
    rng: np.random.Generator, days: float, *, start_day: float = 0, noise_sd: float = 1.0, phase: float = 0.0
) -> np.ndarray:
    """`days` of a minute series from `start_day` on: level + daily sine + AR(1) noise of sd `noise_sd`."""
    n = round(days * DAY)
    innovations = rng.normal(scale=noise_sd * np.sqrt(1 - PHI**2), size=n)
    innovations[0] = rng.normal(scale=noise_sd)  # start in the stationary distribution
    noise = lfilter([1.0], [1.0, -PHI], innovations)
    return seasonal_profile(days, start_day=start_day, phase=phase) + noise


def seasonal_profile(days: float, *, start_day: float = 0, phase: float = 0.0) -> np.ndarray:
    """The level and daily sine: with phase 0, what a model learns from the training days."""
    t = np.arange(round(start_day * DAY), round((start_day + days) * DAY))
    return LEVEL + AMPLITUDE * np.sin(2 * np.pi * t / DAY + phase)


def json_safe(result: dict[str, Any]) -> dict[str, Any]:
    """The result, after checking it serialises as strict JSON (no NaN, no infinity)."""
    json.dumps(result, allow_nan=False)
    return result


def drift_of_same_process(seed: int, *, current_days: int, residuals: bool) -> dict[str, Any]:
    """Training days, then `current_days` more of the same process, compared."""
    rng = np.random.default_rng(seed)
    values = minute_series(rng, REFERENCE_DAYS + current_days)
    if residuals:
        values = values - seasonal_profile(REFERENCE_DAYS + current_days)
    cut = REFERENCE_DAYS * DAY
    reference = reference_of(values[:cut])
    assert reference is not None
    return feature_drift(reference, values[cut:], THRESHOLDS)


def drift_of_changed_process(
    seed: int, *, residuals: bool, shift: float = 0.0, noise_sd: float = 1.0
) -> dict[str, Any]:
    """Training days, then one day whose level moved by `shift` or whose noise has sd `noise_sd`."""
    rng = np.random.default_rng(seed)
    training = minute_series(rng, REFERENCE_DAYS)
    current = minute_series(rng, 1, start_day=REFERENCE_DAYS, noise_sd=noise_sd) + shift
    if residuals:
        training = training - seasonal_profile(REFERENCE_DAYS)
        current = current - seasonal_profile(1, start_day=REFERENCE_DAYS)
    reference = reference_of(training)
    assert reference is not None
    return json_safe(feature_drift(reference, current, THRESHOLDS))


# --- Same process: rarely drift, whatever the window ---------------------------------------


@pytest.mark.parametrize("residuals", [False, True], ids=["values", "residuals"])
@pytest.mark.parametrize("current_days", [1, 10])
def test_a_window_of_the_same_process_is_rarely_drift(current_days: int, residuals: bool) -> None:
    flagged = sum(
        drift_of_same_process(seed, current_days=current_days, residuals=residuals)["drifted"] for seed in range(100)
    )

    assert flagged <= 5


def test_an_hour_of_residuals_of_the_same_process_is_rarely_drift() -> None:
    """Sixty correlated points often look different by chance: PSI over ten bins is about 0.2
    at the median. The p-value on effective sizes (a third of the points for phi = 0.5) keeps
    that from being drift; counting every point as independent flags about one hour in ten."""
    hour = 1 / 24
    flagged = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        residuals = minute_series(rng, REFERENCE_DAYS + hour) - seasonal_profile(REFERENCE_DAYS + hour)
        reference = reference_of(residuals[: REFERENCE_DAYS * DAY])
        assert reference is not None
        flagged += feature_drift(reference, residuals[REFERENCE_DAYS * DAY :], THRESHOLDS)["drifted"]

    assert flagged <= 10


@pytest.mark.parametrize("shift_sd", [0.05, 0.2])
def test_a_trivial_shift_is_not_drift_even_with_twenty_days_each(shift_sd: float) -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        reference = reference_of(minute_series(rng, 20))
        assert reference is not None
        current = minute_series(rng, 20, start_day=20) + shift_sd * reference.robust_scale

        result = json_safe(feature_drift(reference, current, THRESHOLDS))

        assert not result["drifted"]
        if shift_sd == 0.2:
            # Forty days make a fifth of a standard deviation significant: only the practical
            # size (PSI, Wasserstein) keeps it from being called drift.
            assert result["ks_p"] < THRESHOLDS.alpha
            assert result["psi"] < THRESHOLDS.psi and result["wasserstein"] < THRESHOLDS.wasserstein


# --- Changed process: drift ----------------------------------------------------------------


@pytest.mark.parametrize("residuals", [False, True], ids=["values", "residuals"])
def test_a_level_moved_by_one_and_a_half_noise_sd_is_drift(residuals: bool) -> None:
    results = [drift_of_changed_process(seed, residuals=residuals, shift=1.5) for seed in range(20)]

    assert all(result["drifted"] for result in results)


@pytest.mark.parametrize("residuals", [False, True], ids=["values", "residuals"])
def test_a_noise_two_and_a_half_times_wider_is_drift(residuals: bool) -> None:
    results = [drift_of_changed_process(seed, residuals=residuals, noise_sd=2.5) for seed in range(20)]

    assert all(result["drifted"] for result in results)


def test_a_new_seasonal_shape_is_drift_in_the_residuals_not_in_the_values() -> None:
    """A day whose sine is shifted by half a day has the same values, only at other hours.

    The marginal distribution of the values is unchanged, so no statistic of the values can
    see it. Residuals from the seasonal profile the model learned can: where the model
    expects a peak there is a trough, and the residuals spread twice the amplitude. This is
    why the service compares residuals for a change of seasonal shape.
    """
    for seed in range(20):
        rng = np.random.default_rng(seed)
        training = minute_series(rng, REFERENCE_DAYS)
        current = minute_series(rng, 1, start_day=REFERENCE_DAYS, phase=np.pi)
        learned_profile = seasonal_profile(REFERENCE_DAYS + 1)
        values_reference = reference_of(training)
        residuals_reference = reference_of(training - learned_profile[: REFERENCE_DAYS * DAY])
        assert values_reference is not None and residuals_reference is not None

        by_values = json_safe(feature_drift(values_reference, current, THRESHOLDS))
        by_residuals = json_safe(
            feature_drift(residuals_reference, current - learned_profile[REFERENCE_DAYS * DAY :], THRESHOLDS)
        )

        assert not by_values["drifted"]
        assert by_residuals["drifted"]


# --- The statistics themselves -------------------------------------------------------------


def test_a_window_equal_to_the_reference_has_no_distance() -> None:
    values = minute_series(np.random.default_rng(0), 3)
    reference = reference_of(values)
    assert reference is not None

    result = json_safe(feature_drift(reference, values, THRESHOLDS))

    assert result["ks"] < 0.02
    assert result["psi"] < 0.01
    assert result["wasserstein"] == pytest.approx(0.0, abs=1e-12)
    assert result["ks_p"] > 0.99
    assert not result["drifted"]


def test_a_constant_reference_compares_without_error_and_sees_a_moved_constant() -> None:
    reference = reference_of(np.full(500, 3.0))
    assert reference is not None
    assert reference.quantiles == [3.0] * QUANTILES
    assert reference.n_eff == 500  # no variance, no autocorrelation to discount

    same = json_safe(feature_drift(reference, np.full(100, 3.0), THRESHOLDS))
    moved = json_safe(feature_drift(reference, np.full(100, 4.0), THRESHOLDS))

    assert same["ks"] == 0.0 and same["psi"] == pytest.approx(0.0) and same["wasserstein"] == 0.0
    assert not same["drifted"]
    # One bin holds everything on both sides, so PSI cannot see the move; KS and the
    # Wasserstein distance (in raw units: a constant has no spread) can.
    assert moved["ks"] == 1.0 and moved["wasserstein"] == pytest.approx(1.0)
    assert moved["drifted"]


def test_a_reference_mostly_of_one_value_is_equal_to_itself() -> None:
    """Coinciding deciles (a counter that is 0 most minutes) merge bins rather than break PSI."""
    rng = np.random.default_rng(0)
    values = np.where(rng.random(5000) < 0.6, 0.0, rng.exponential(5.0, 5000))
    reference = reference_of(values)
    assert reference is not None

    result = json_safe(feature_drift(reference, values, THRESHOLDS))
    busier = json_safe(
        feature_drift(reference, np.where(rng.random(5000) < 0.2, 0.0, rng.exponential(5.0, 5000)), THRESHOLDS)
    )

    assert result["psi"] < 0.01 and result["ks"] < 0.02
    assert not result["drifted"]
    assert busier["psi"] > THRESHOLDS.psi and busier["drifted"]


def test_effective_size_discounts_autocorrelation() -> None:
    rng = np.random.default_rng(0)
    independent = rng.normal(size=20_000)
    ar1 = lfilter([1.0], [1.0, -PHI], rng.normal(size=20_000))

    # n (1 - rho) / (1 + rho): about n for independent values, n / 3 for phi = 0.5.
    assert effective_size(independent) == pytest.approx(20_000, rel=0.05)
    assert effective_size(ar1) == pytest.approx(20_000 / 3, rel=0.1)
    assert effective_size(np.cumsum(rng.normal(size=1000))) == pytest.approx(1000 * 0.01 / 1.99)  # rho clipped
    assert effective_size(np.array([1.0, 2.0])) == 2.0
    assert effective_size(np.array([1.0, np.nan])) == 1.0


def test_too_few_finite_values_are_not_compared() -> None:
    reference = reference_of(np.arange(10.0))
    assert reference is not None

    assert reference_of(np.array([1.0, np.nan, np.inf])) is None
    assert json_safe(feature_drift(reference, np.array([np.nan, 5.0]), THRESHOLDS)) == {
        "n": 1,
        "drifted": False,
        "insufficient": True,
    }


def test_non_finite_values_are_ignored() -> None:
    values = minute_series(np.random.default_rng(0), 1)
    reference = reference_of(np.concatenate([values, [np.nan, np.inf, -np.inf]]))
    assert reference is not None and reference.n == DAY

    result = json_safe(feature_drift(reference, np.concatenate([values, [np.nan, -np.inf]]), THRESHOLDS))

    assert result["n"] == DAY and result["ks"] < 0.02


def test_a_reference_survives_a_json_round_trip() -> None:
    reference = reference_of(minute_series(np.random.default_rng(0), 1))
    assert reference is not None

    restored = Reference.from_dict(json.loads(json.dumps(reference.as_dict(), allow_nan=False)))

    assert restored == reference
    assert np.all(np.diff(restored.quantiles) >= 0)
    with pytest.raises(ValueError, match="101 quantiles"):
        Reference.from_dict({**reference.as_dict(), "quantiles": [0.0, 1.0]})


# --- Concept drift: anomaly rate and feedback precision ------------------------------------


def test_ten_anomalies_in_a_day_of_a_model_trained_on_one_a_day_is_drift() -> None:
    result = json_safe(rate_drift(reference_rate_per_day=1.0, count=10, days=1.0, alpha=THRESHOLDS.alpha))

    assert result["drifted"]
    assert result["p"] < 1e-6
    assert result["rate_per_day"] == 10.0


def test_two_anomalies_in_a_day_of_a_model_trained_on_one_a_day_is_not_drift() -> None:
    result = json_safe(rate_drift(reference_rate_per_day=1.0, count=2, days=1.0, alpha=THRESHOLDS.alpha))

    assert not result["drifted"]


def test_a_first_anomaly_of_a_model_that_saw_none_in_training_is_not_drift() -> None:
    result = json_safe(rate_drift(reference_rate_per_day=0.0, count=1, days=1.0, alpha=THRESHOLDS.alpha))

    assert not result["drifted"]
    assert result["p"] == pytest.approx(1 - np.exp(-0.1))  # against the floor of 0.1 a day


def test_many_anomalies_of_a_model_that_saw_none_in_training_is_drift() -> None:
    result = json_safe(rate_drift(reference_rate_per_day=0.0, count=5, days=1.0, alpha=THRESHOLDS.alpha))

    assert result["drifted"]


def test_rate_drift_needs_a_positive_window() -> None:
    with pytest.raises(ValueError, match="days"):
        rate_drift(reference_rate_per_day=1.0, count=1, days=0.0, alpha=THRESHOLDS.alpha)


def test_precision_falling_from_nine_in_ten_to_one_in_six_is_drift() -> None:
    result = json_safe(precision_drift(reference=(9, 10), recent=(1, 6)))

    assert result == {"precision": pytest.approx(1 / 6), "reference_precision": 0.9, "feedback": 6, "drifted": True}


def test_precision_on_four_answers_is_too_little_feedback_for_drift() -> None:
    assert not precision_drift(reference=(9, 10), recent=(0, 4))["drifted"]


def test_low_precision_without_a_reference_precision_is_drift() -> None:
    result = json_safe(precision_drift(reference=(0, 0), recent=(1, 6)))

    assert result["reference_precision"] is None
    assert result["drifted"]


def test_low_precision_that_was_always_low_is_not_drift() -> None:
    assert not precision_drift(reference=(3, 10), recent=(1, 6))["drifted"]
