"""Explanations: the sentence a person reads and the same facts as JSON, from plain values."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from analytics.detection.explain import explain, explain_node, format_value, seasonality_name
from analytics.detection.windows import AnomalyWindow

T0 = datetime(2025, 3, 4, 14, 1, tzinfo=UTC).timestamp()


def window(**changes: object) -> AnomalyWindow:
    fields: dict[str, object] = {
        "start": T0,
        "end": T0 + 480,
        "peak_ts": T0 + 120,
        "peak_score": 0.995,
        "label": "level_shift",
        "observed": 912.0,
        "expected": 240.0,
        "lower": 180.0,
        "upper": 310.0,
        "deviation": 7.4,
        "detectors": ("level_shift", "robust_zscore"),
        "points": 9,
    }
    fields.update(changes)
    return AnomalyWindow(**fields)  # type: ignore[arg-type]


def test_a_series_anomaly_reads_as_one_plain_sentence() -> None:
    sentence, _ = explain(window(), metric="latency_p99", unit="ms", period=86_400, node="web-1")
    assert sentence == (
        "latency_p99 on web-1 was 912 ms at 2025-03-04 14:03 UTC, expected 240 ms (normal range 180\u2013310 ms): "
        "7.4 robust standard deviations above normal. Level shift from 14:01 to 14:09, detected by level_shift, "
        "robust_zscore; daily seasonality used."
    )


def test_the_facts_hold_every_number_of_the_sentence_unrounded_and_are_json() -> None:
    _, facts = explain(window(observed=912.345), metric="latency_p99", unit="ms", period=604_800, node="web-1")
    assert json.loads(json.dumps(facts)) == facts
    assert facts["observed"] == 912.345 and facts["expected"] == 240.0
    assert facts["band"] == [180.0, 310.0] and facts["deviation"] == 7.4 and facts["direction"] == "above"
    assert facts["label"] == "level_shift" and facts["detectors"] == ["level_shift", "robust_zscore"]
    assert (facts["seasonality"], facts["seasonality_seconds"]) == ("weekly", 604_800.0)
    assert facts["score"] == 0.995 and facts["peak_ts"] == "2025-03-04T14:03:00+00:00"


def test_a_dip_of_a_single_point_without_seasonality() -> None:
    dip = window(start=T0, end=T0, peak_ts=T0, label="dip", observed=2.0, expected=40.0, deviation=-5.25)
    sentence, facts = explain(dip, metric="requests", unit="", period=None, detectors=["seasonal"])
    assert "requests was 2 at 2025-03-04 14:01 UTC, expected 40" in sentence
    assert "5.2 robust standard deviations below normal. Dip detected by seasonal; no seasonality." in sentence
    assert " from " not in sentence
    assert (facts["direction"], facts["seasonality"], facts["seasonality_seconds"]) == ("below", "none", None)


def test_missing_expected_values_are_left_out_rather_than_printed_as_nan() -> None:
    blind = window(expected=math.nan, lower=math.nan, upper=math.inf, deviation=math.nan)
    sentence, facts = explain(blind, metric="queue", unit="", period=None)
    assert "nan" not in sentence.lower() and "inf" not in sentence.lower()
    assert sentence.startswith("queue was 912 at")
    assert facts["expected"] is None and facts["band"] == [None, None] and facts["direction"] is None
    json.dumps(facts, allow_nan=False)


def test_values_are_rounded_for_people_with_their_unit() -> None:
    assert format_value(42.5, "percent") == "42.5%"
    assert format_value(123456.7, "bytes") == "123,457 bytes"
    assert format_value(0.012345, "s") == "0.0123 s"
    assert format_value(7.0, "") == "7"
    assert format_value(None, "ms") == "n/a"


def test_seasonalities_are_named_and_other_periods_are_durations() -> None:
    assert [seasonality_name(p) for p in (None, 0, 3600, 86_000, 604_800, 43_200)] == [
        "none",
        "none",
        "hourly",
        "daily",
        "weekly",
        "12h",
    ]


def test_a_node_anomaly_names_its_top_metrics_with_their_shares() -> None:
    sentence, facts = explain_node(
        node="db-1",
        start=T0,
        end=T0 + 180,
        peak_ts=T0 + 60,
        peak_score=0.99,
        label="spike",
        detector="isolation_forest",
        contributions={"latency": 6.0, "cpu": 3.0, "memory": 1.0, "disk": 0.0},
        observed={"latency": 250.0, "cpu": 95.0, "memory": 70.0},
        expected={"latency": 100.0, "cpu": 50.0, "memory": 70.0},
        units={"latency": "ms", "cpu": "percent", "memory": "percent"},
        points=4,
    )
    assert sentence == (
        "db-1 behaved unusually at 2025-03-04 14:02 UTC (score 0.99), from 14:01 to 14:04. Spike driven by "
        "latency (60%, 250 ms vs 100 ms expected), cpu (30%, 95% vs 50% expected) and memory (10%, 70% vs 70% "
        "expected); detected by isolation_forest."
    )
    assert facts["top_metrics"] == ["latency", "cpu", "memory"]
    assert [c["share"] for c in facts["contributions"]] == [0.6, 0.3, 0.1, 0.0]
    assert facts["contributions"][0]["direction"] == "above" and facts["points"] == 4
    assert json.loads(json.dumps(facts)) == facts
