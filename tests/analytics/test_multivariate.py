"""The per-node multivariate detectors on plain numpy arrays (no database)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from analytics.detection import multivariate
from analytics.detection.base import UnknownDetector
from analytics.detection.calibration import score_from_probability
from analytics.detection.multivariate import NODE_DETECTORS, NodeDetector, node_detector_create

ALGORITHMS = sorted(NODE_DETECTORS)
NAMES = ["cpu", "errors", "latency", "memory", "requests"]
STEP = 300.0  # 5-minute rollups: 288 rows a day
T0 = 1_700_000_000.0
SD = {"cpu": 10.0, "latency": 20.0}  # marginal standard deviations below


def node_rows(n: int, *, seed: int, start: float = T0) -> tuple[np.ndarray, np.ndarray]:
    """n rows of a healthy node: cpu, latency and requests follow one load (correlated),
    errors and memory are independent noise."""
    rng = np.random.default_rng(seed)
    load = rng.normal(size=n)
    X = np.column_stack(
        [
            50 + 10 * (0.8 * load + 0.6 * rng.normal(size=n)),  # cpu %, sd 10
            0.01 + 0.002 * rng.normal(size=n),  # error rate
            200 + 20 * (0.8 * load + 0.6 * rng.normal(size=n)),  # latency ms, sd 20
            60 + 5 * rng.normal(size=n),  # memory %
            1000 + 100 * (load + 0.2 * rng.normal(size=n)),  # requests/s
        ]
    )
    return start + STEP * np.arange(n), X


HISTORY_TS, HISTORY = node_rows(600, seed=1)
NEXT = HISTORY_TS[-1] + STEP


def row(**values: float) -> np.ndarray:
    """One row at the node's typical values, with `values` changed."""
    typical = {"cpu": 50.0, "errors": 0.01, "latency": 200.0, "memory": 60.0, "requests": 1000.0}
    typical.update(values)
    return np.array([[typical[name] for name in NAMES]])


@pytest.fixture(params=ALGORITHMS)
def algorithm(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=ALGORITHMS)
def fitted(request: pytest.FixtureRequest) -> tuple[NodeDetector, dict]:
    detector = node_detector_create(request.param)
    return detector, detector.fit(HISTORY_TS, HISTORY, NAMES)


def test_cpu_and_latency_jumping_together_with_flat_requests_is_anomalous_and_named(
    fitted: tuple[NodeDetector, dict],
) -> None:
    detector, state = fitted
    k = 3.5
    # Alone, each value is one a univariate detector lets pass at medium: a normal |z| of
    # 3.5 happens about once in 2,150 rows, i.e. most days at 288 rows a day.
    assert score_from_probability(np.array([math.erfc(k / math.sqrt(2))]), 288.0)[0] < detector.threshold

    scores, _ = detector.update(state, [NEXT], row(cpu=50 + k * SD["cpu"], latency=200 + k * SD["latency"]), NAMES)

    assert scores.anomalous[0]
    assert {name for name, _ in scores.top_metrics(0, k=2)} == {"cpu", "latency"}
    assert sum(scores.contributions[0].values()) == pytest.approx(1.0)
    observed = dict(zip(scores.names, scores.observed[0], strict=True))
    expected = dict(zip(scores.names, scores.expected, strict=True))
    assert observed["cpu"] == pytest.approx(85.0)
    assert expected["cpu"] == pytest.approx(50.0, abs=2.0)


def test_a_busy_but_consistent_row_is_not_anomalous(fitted: tuple[NodeDetector, dict]) -> None:
    detector, state = fitted
    # Load up by 2 sd: requests, cpu and latency all rise together, as they always do.
    busy = row(cpu=50 + 16, latency=200 + 32, requests=1000 + 200)

    scores, _ = detector.update(state, [NEXT], busy, NAMES)

    assert not scores.anomalous[0]
    assert scores.contributions[0] == {}


def test_normal_stream_of_2000_rows_raises_at_most_a_handful_of_alarms(algorithm: str) -> None:
    detector = node_detector_create(algorithm, sensitivity="medium")
    ts, X = node_rows(2000, seed=7)
    state = detector.fit(ts[:500], X[:500], NAMES)
    alarms = 0
    for start in (500, 1250):
        scores, state = detector.update(state, ts[start : start + 750], X[start : start + 750], NAMES)
        assert not scores.warming.any()
        alarms += int(scores.anomalous.sum())

    assert alarms <= 5


def test_an_incident_inside_the_fitted_history_is_not_learned_as_normal(algorithm: str) -> None:
    detector = node_detector_create(algorithm)
    incident = row(cpu=50 + 5 * SD["cpu"], latency=200 + 5 * SD["latency"])[0]
    history = HISTORY.copy()
    history[200:203] = incident  # a quarter of an hour of it, in the middle of the history

    state = detector.fit(HISTORY_TS, history, NAMES)
    scores, _ = detector.update(state, [NEXT], incident[None, :], NAMES)

    assert scores.anomalous[0]


def test_a_lasting_change_alarms_then_is_learned_instead_of_alarming_for_ever() -> None:
    # The admission of one anomalous row in five is the same code for both algorithms; LOF
    # refits in milliseconds.
    detector = node_detector_create("lof")
    ts, X = node_rows(1500, seed=21)
    X[600:, NAMES.index("cpu")] += 4 * SD["cpu"]  # a deploy made cpu heavier for good
    state = detector.fit(ts[:600], X[:600], NAMES)

    alarms = []
    for start in range(600, 1500, 150):
        scores, state = detector.update(state, ts[start : start + 150], X[start : start + 150], NAMES)
        alarms.append(int(scores.anomalous.sum()))

    assert alarms[0] > 100
    assert alarms[-1] <= 2


def test_warm_up_is_flagged_and_scores_zero(algorithm: str) -> None:
    detector = node_detector_create(algorithm, min_rows=64)
    ts, X = node_rows(100, seed=3)
    X[10] = [500.0, 1.0, 5000.0, 100.0, 0.0]  # an absurd row during warm-up

    scores, state = detector.update(detector.initial_state(), ts[:40], X[:40], NAMES)
    assert scores.warming.all()
    assert (scores.score == 0).all()
    assert not scores.anomalous.any()

    scores, state = detector.update(state, ts[40:70], X[40:70], NAMES)  # the reference reaches 64 rows
    assert scores.warming.all()
    scores, _ = detector.update(state, ts[70:], X[70:], NAMES)
    assert not scores.warming.any()


def test_a_missing_metric_is_imputed_by_its_median_and_flagged(fitted: tuple[NodeDetector, dict]) -> None:
    detector, state = fitted
    ts, X = node_rows(20, seed=11, start=NEXT)
    X[:, NAMES.index("memory")] = np.nan
    X[3, NAMES.index("cpu")] = np.inf

    scores, new_state = detector.update(state, ts, X, NAMES)
    without_column, _ = detector.update(state, ts, np.delete(X, 3, axis=1), [n for n in NAMES if n != "memory"])

    assert len(scores) == 20
    assert scores.imputed[:, scores.names.index("memory")].all()
    assert scores.imputed[3, scores.names.index("cpu")]
    assert np.isfinite(scores.score).all()
    assert not scores.warming.any()
    # A column that is absent is the same as a column of NaN.
    np.testing.assert_array_equal(without_column.score, scores.score)
    # Rows with imputed values are not learned.
    assert new_state["pending"] == state["pending"]


def test_columns_in_another_order_give_the_same_scores(fitted: tuple[NodeDetector, dict]) -> None:
    detector, state = fitted
    ts, X = node_rows(50, seed=12, start=NEXT)
    order = [4, 2, 0, 3, 1]

    scores, _ = detector.update(state, ts, X, NAMES)
    reordered, _ = detector.update(state, ts, X[:, order], [NAMES[j] for j in order])

    np.testing.assert_array_equal(reordered.score, scores.score)
    assert reordered.names == scores.names


def test_a_new_metric_resets_the_reference_and_warms_up_again(fitted: tuple[NodeDetector, dict]) -> None:
    detector, state = fitted
    ts, X = node_rows(10, seed=13, start=NEXT)

    scores, new_state = detector.update(state, ts, np.column_stack([X, np.ones(10)]), [*NAMES, "disk"])

    assert scores.info["reset"]
    assert scores.warming.all()
    assert new_state["names"] == sorted([*NAMES, "disk"])
    assert scores.info["reference_rows"] == 10


def test_a_constant_metric_divides_by_no_zero_and_its_first_move_is_anomalous(algorithm: str) -> None:
    detector = node_detector_create(algorithm)
    ts, X = node_rows(400, seed=14)
    X[:, NAMES.index("errors")] = 0.0
    state = detector.fit(ts[:300], X[:300], NAMES)
    X[-1, NAMES.index("errors")] = 0.05

    scores, new_state = detector.update(state, ts[300:], X[300:], NAMES)

    assert np.isfinite(scores.score).all()
    assert np.flatnonzero(scores.anomalous).tolist() == [99]
    assert scores.top_metrics(99, k=1)[0][0] == "errors"
    json.dumps(new_state, allow_nan=False)


def test_unordered_and_duplicate_timestamps_are_sorted_and_the_last_row_wins(
    fitted: tuple[NodeDetector, dict],
) -> None:
    detector, state = fitted
    ts, X = node_rows(30, seed=15, start=NEXT)
    shuffle = np.random.default_rng(0).permutation(30)
    stale = np.array([HISTORY_TS[-1], HISTORY_TS[-5]])  # not newer than the state: dropped
    absurd = row(cpu=500.0, latency=5000.0)  # sent first for ts[4], replaced by the row sent after it

    scores, new_state = detector.update(
        state,
        np.concatenate([[ts[4]], ts[shuffle], stale]),
        np.concatenate([absurd, X[shuffle], HISTORY[[-1, -5]]]),
        NAMES,
    )
    in_order, _ = detector.update(state, ts, X, NAMES)

    np.testing.assert_array_equal(scores.timestamps, ts)
    np.testing.assert_array_equal(scores.score, in_order.score)
    assert new_state["last_ts"] == ts[-1]


def test_state_round_trips_through_json_with_identical_scores(fitted: tuple[NodeDetector, dict]) -> None:
    detector, state = fitted
    original = copy.deepcopy(state)
    ts, X = node_rows(100, seed=16, start=NEXT)
    X[50] = row(cpu=95.0, latency=290.0)[0]

    scores, after = detector.update(state, ts, X, NAMES)
    restored = json.loads(json.dumps(state, allow_nan=False))
    # Without the process's cached models too: the refit from the state is deterministic.
    multivariate._MODEL_CACHE.clear()
    again, after_again = detector.update(restored, ts, X, NAMES)

    assert state == original  # update does not mutate the state it is given
    np.testing.assert_array_equal(again.score, scores.score)
    assert again.contributions == scores.contributions
    assert scores.anomalous[50]
    assert json.loads(json.dumps(after)) == json.loads(json.dumps(after_again))


def test_unknown_node_detector_lists_the_known_ones() -> None:
    with pytest.raises(UnknownDetector) as error:
        node_detector_create("one_class_svm")

    assert "isolation_forest" in str(error.value)
    assert "lof" in str(error.value)
