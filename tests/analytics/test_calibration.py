"""One meaning for every score (analytics/detection/calibration.py): the score of a tail
probability, its inverse, the learned tail model, and what a threshold means in false alarms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analytics.detection import detector_create
from analytics.detection.calibration import (
    SENSITIVITIES,
    TAIL_QUANTILE,
    TailModel,
    probability_for_score,
    score_from_probability,
)

T0 = 1_704_067_200.0


def normal_two_sided_tail(k: float) -> float:
    """P(|Z| >= k) for a standard normal Z."""
    return math.erfc(k / math.sqrt(2))


@pytest.fixture(scope="module")
def gaussian_model() -> TailModel:
    """The model of a detector that saw 50,000 |z| of pure Gaussian noise."""
    draws = np.abs(np.random.default_rng(0).normal(size=50_000))
    return TailModel.prior(mean=1.0, top=16.0).learn(draws)


# --- Score and probability ----------------------------------------------------------------


@pytest.mark.parametrize("per_day", [24.0, 288.0, 1440.0, 8640.0])
def test_the_score_falls_from_1_to_0_as_the_tail_probability_grows(per_day: float) -> None:
    p = np.concatenate([[0.0], np.logspace(-15, 0, 200)])

    score = score_from_probability(p, per_day)

    assert ((score >= 0) & (score <= 1)).all()
    assert (np.diff(score) <= 0).all()
    assert score[0] == 1.0 and score[-1] == 0.0
    assert score[1] < 1.0  # stable for tiny p: a one-in-1e15 point is not exactly certain
    # Out-of-range probabilities are clipped, never NaN.
    assert score_from_probability(np.array([-0.5, 1.5]), per_day).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("per_day", [24.0, 288.0, 1440.0, 8640.0])
@pytest.mark.parametrize("score", [0.5, *SENSITIVITIES.values(), 0.999])
def test_probability_for_score_inverts_the_score(per_day: float, score: float) -> None:
    p = probability_for_score(score, per_day)

    assert 0 < p < 1
    assert score_from_probability(np.array([p]), per_day)[0] == pytest.approx(score, rel=1e-9)


def test_the_same_score_needs_a_rarer_point_on_a_series_that_sends_more_points() -> None:
    # A point one-in-a-thousand is ordinary for a series sending 1,440 points a day and
    # remarkable for one sending 24: the score is about a normal day of the series.
    assert score_from_probability(np.array([1e-3]), 24.0)[0] > 0.97
    assert score_from_probability(np.array([1e-3]), 1440.0)[0] < 0.25
    thresholds = [probability_for_score(0.9, per_day) for per_day in (24.0, 288.0, 1440.0, 8640.0)]
    assert thresholds == sorted(thresholds, reverse=True)


@pytest.mark.parametrize("sensitivity", list(SENSITIVITIES))
@pytest.mark.parametrize("per_day", [24.0, 288.0, 1440.0, 8640.0])
def test_one_minus_the_threshold_is_about_the_expected_false_alarms_per_series_day(
    sensitivity: str, per_day: float
) -> None:
    threshold = SENSITIVITIES[sensitivity]

    alarms_per_day = per_day * probability_for_score(threshold, per_day)

    # -ln(threshold): 1.02x (low), 1.05x (medium), 1.15x (high) of 1 - threshold.
    assert 1 - threshold <= alarms_per_day <= 1.2 * (1 - threshold)


def test_the_sensitivities_order_from_fewest_to_most_alarms() -> None:
    assert SENSITIVITIES["low"] > SENSITIVITIES["medium"] > SENSITIVITIES["high"]
    assert all(0 < threshold < 1 for threshold in SENSITIVITIES.values())


# --- The tail model -----------------------------------------------------------------------


def test_a_model_learned_on_gaussian_noise_matches_the_normal_tail_at_2_and_3_sd(gaussian_model: TailModel) -> None:
    for k in (2.0, 3.0):
        learned = float(gaussian_model.probability(np.array([k]))[0])
        assert normal_two_sided_tail(k) / 3 <= learned <= 3 * normal_two_sided_tail(k), k


def test_beyond_the_data_the_exponential_tail_errs_on_the_side_of_fewer_alarms(gaussian_model: TailModel) -> None:
    # A Gaussian tail falls faster than any exponential: extrapolated, the model calls a 5 sd
    # point less rare than the normal does (and so alarms less), yet still very rare.
    for k in (4.0, 5.0, 6.0):
        learned = float(gaussian_model.probability(np.array([k]))[0])
        assert normal_two_sided_tail(k) <= learned < 1e-3


def test_probability_is_1_at_0_and_never_rises_with_the_statistic(gaussian_model: TailModel) -> None:
    for model in (TailModel.prior(mean=1.0, top=16.0), gaussian_model):
        stats = np.linspace(0, 40, 801)
        p = model.probability(stats)
        assert p[0] == pytest.approx(1.0)
        assert (np.diff(p) <= 1e-12).all()
        assert ((p >= 0) & (p <= 1)).all()
        assert model.probability(np.array([-3.0]))[0] == pytest.approx(1.0)  # negative stats count as 0


def test_quantile_inverts_probability_beyond_the_95th_percentile(gaussian_model: TailModel) -> None:
    u = gaussian_model.quantile(TAIL_QUANTILE)
    assert 1.8 < u < 2.2  # the 95th percentile of |N(0, 1)| is 1.96

    for x in np.linspace(u + 0.05, 12.0, 25):
        p = float(gaussian_model.probability(np.array([x]))[0])
        assert p < TAIL_QUANTILE
        assert gaussian_model.quantile(p) == pytest.approx(x, rel=1e-9)
    # In the body the quantile is the 95th percentile itself.
    assert gaussian_model.quantile(0.3) == u


def test_a_weight_counts_as_that_many_observations() -> None:
    model = TailModel.prior(mean=1.0, top=16.0)
    stats = np.array([0.5, 3.0, 7.5])

    twice = model.learn(np.repeat(stats, 2))
    weighted = model.learn(stats, np.full(3, 2.0))

    np.testing.assert_allclose(weighted.counts, twice.counts)
    assert model.learn(stats, np.zeros(3)).counts.tolist() == model.counts.tolist()  # weight 0 teaches nothing
    fifth = model.learn(np.array([7.5]), np.array([0.2]))
    full = model.learn(np.array([7.5]))
    assert model.probability(np.array([7.5]))[0] < fifth.probability(np.array([7.5]))[0]
    assert fifth.probability(np.array([7.5]))[0] < full.probability(np.array([7.5]))[0]


def test_old_observations_fade_so_the_model_follows_a_lasting_change(gaussian_model: TailModel) -> None:
    wider = np.abs(3 * np.random.default_rng(1).normal(size=60_000))  # the noise tripled for good

    after = gaussian_model.learn(wider)

    # A 6 "old sd" point is rare before, and as common as a 2 sd one of the new noise after.
    assert gaussian_model.probability(np.array([6.0]))[0] < 1e-4
    assert after.probability(np.array([6.0]))[0] == pytest.approx(normal_two_sided_tail(2.0), rel=0.3)


def test_non_finite_statistics_are_not_learned(gaussian_model: TailModel) -> None:
    after = gaussian_model.learn(np.array([np.nan, np.inf, -np.inf]))
    assert after.counts.tolist() == gaussian_model.counts.tolist()


def test_an_absurdly_large_statistic_lands_in_the_last_bin() -> None:
    # Regression: a finite statistic above ~2e18 * top / bins overflows the int64 cast
    # of the bin index (RuntimeWarning "invalid value encountered in cast"; without the
    # warning filter np.bincount raises ValueError on the negative index). A single value of
    # 1e30 in a series crashes every residual detector through this.
    model = TailModel.prior(mean=1.0, top=16.0)

    after = model.learn(np.array([1e30, 1e300]))

    assert after.counts[-1] == pytest.approx(model.counts[-1] * math.exp(-2 / 20_000) + 2)
    assert after.counts[:-1].sum() < model.counts[:-1].sum()


def test_the_model_round_trips_through_json(gaussian_model: TailModel) -> None:
    restored = TailModel.from_state(json.loads(json.dumps(gaussian_model.to_state())))
    stats = np.array([0.5, 2.0, 3.0, 6.0])
    # Counts are stored as float32: the probabilities agree to float32 precision.
    np.testing.assert_allclose(restored.probability(stats), gaussian_model.probability(stats), rtol=1e-5)


# --- What medium means on pure noise -------------------------------------------------------


def test_on_twenty_days_of_gaussian_noise_medium_flags_at_most_half_a_point_a_day() -> None:
    # 1 - 0.9 = 0.1 expected false alarms per series-day; 0.5 a day leaves room for the
    # randomness of 20 days while still failing a calibration off by a factor of five.
    days, per_day = 20, 1440
    rng = np.random.default_rng(2)
    ts = T0 + 60.0 * np.arange(days * per_day)
    vs = 100 + rng.normal(size=len(ts))
    detector = detector_create("robust_zscore", sensitivity="medium")

    scores, state = detector.update(detector.initial_state(), ts, vs)

    judged = ~scores.warming
    at_or_above = int((scores.score[judged] >= SENSITIVITIES["medium"]).sum())
    assert at_or_above <= 0.5 * days
    assert int(scores.anomalous.sum()) == at_or_above
    # Calibrated, not silenced: a point 8 sd off is still far above the threshold.
    spike, _ = detector.update(state, np.array([ts[-1] + 60.0]), np.array([108.0]))
    assert spike.anomalous[0]
