"""GET /api/v1/anomalies[/{id}], POST /api/v1/anomalies/{id}/feedback and GET /api/v1/series/{id}/scores,
each as the owner, as another tenant and anonymously."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from analytics.models import AnomalyResult, MetricSeries
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory, AnomalyScoreFactory, MetricSeriesFactory
from tests.analytics.test_anomalies import INTERVAL, detect, send
from tests.mlops.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def anomaly(series: MetricSeries | None = None, *, start: float = 0, length: float = 5, **kwargs: Any) -> AnomalyResult:
    """An anomaly whose window is [T0 + start, T0 + start + length] minutes."""
    return AnomalyResultFactory(series=series, window_start=at(start), window_end=at(start + length), **kwargs)


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


@pytest.fixture
def cpu(tenant: Tenant) -> MetricSeries:
    return MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="cpu")


@pytest.fixture
def theirs(other_tenant: Tenant) -> AnomalyResult:
    return anomaly(MetricSeriesFactory(tenant=other_tenant, cluster="eu", node="web-1", metric="cpu"))


# --- list and detail -----------------------------------------------------------------------------


def test_owner_lists_their_anomalies_newest_window_first(owner: APIClient, cpu: MetricSeries) -> None:
    old, new, middle = anomaly(cpu, start=0), anomaly(cpu, start=60), anomaly(cpu, start=30)
    assert ids(owner.get("/api/v1/anomalies")) == [new.pk, middle.pk, old.pk]


def test_the_list_is_cursor_paginated_without_gaps_or_repeats(owner: APIClient, cpu: MetricSeries) -> None:
    # Two anomalies share a window start (one per series and detector): ties are ordered by id.
    made = [anomaly(cpu, start=minute) for minute in (0, 10, 20, 30)]
    made.append(anomaly(cpu, start=20, detector="seasonal"))
    expected = [a.pk for a in sorted(made, key=lambda a: (a.window_start, a.pk), reverse=True)]
    seen: list[int] = []
    url: str | None = "/api/v1/anomalies?page_size=2"
    while url:
        page = owner.get(url).json()
        assert len(page["results"]) <= 2
        seen += [item["id"] for item in page["results"]]
        url = page["next"]
    assert seen == expected


def test_other_tenants_anomalies_are_never_listed(owner: APIClient, stranger: APIClient, theirs: AnomalyResult) -> None:
    assert ids(owner.get("/api/v1/anomalies")) == []
    assert ids(stranger.get("/api/v1/anomalies")) == [theirs.pk]


def test_detail_has_the_explanation_details_and_a_link_to_the_series(owner: APIClient, cpu: MetricSeries) -> None:
    made = anomaly(
        cpu,
        explanation="cpu on web-1 was 97 at 12:02, expected 40.",
        details={"median": 40.0, "mad": 3.5, "points": [96.0, 97.0]},
    )
    body = owner.get(f"/api/v1/anomalies/{made.pk}").json()
    assert body["explanation"] == "cpu on web-1 was 97 at 12:02, expected 40."
    assert body["details"] == {"median": 40.0, "mad": 3.5, "points": [96.0, 97.0]}
    assert body["series"] == cpu.pk
    assert body["series_url"] == f"http://testserver/api/v1/series/{cpu.pk}"
    assert owner.get(body["series_url"]).json()["id"] == cpu.pk
    assert (body["cluster"], body["node"], body["metric"], body["label"]) == ("eu", "web-1", "cpu", "spike")
    assert (body["window_start"], body["window_end"]) == (iso(at(0)), iso(at(5)))
    assert (body["peak_score"], body["observed"], body["expected"]) == (0.9, 912.0, 240.0)
    assert (body["status"], body["feedback"], body["feedback_at"]) == ("closed", None, None)


def test_a_node_level_anomaly_has_no_series(owner: APIClient, tenant: Tenant) -> None:
    made = anomaly(None, tenant=tenant, cluster="eu", node="db-1", detector="multivariate")
    body = owner.get(f"/api/v1/anomalies/{made.pk}").json()
    assert (body["series"], body["series_url"], body["metric"], body["node"]) == (None, None, "", "db-1")


def test_other_tenants_anomaly_is_404(owner: APIClient, stranger: APIClient, theirs: AnomalyResult) -> None:
    response = owner.get(f"/api/v1/anomalies/{theirs.pk}")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert stranger.get(f"/api/v1/anomalies/{theirs.pk}").status_code == 200


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/anomalies"),
        ("get", "/api/v1/anomalies/1"),
        ("post", "/api/v1/anomalies/1/feedback"),
        ("get", "/api/v1/series/1/scores"),
    ],
)
def test_anonymous_is_401(anonymous: APIClient, method: str, path: str) -> None:
    response = getattr(anonymous, method)(path)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "not_authenticated")


def test_reading_needs_the_read_scope(make_client: Callable[..., APIClient], tenant: Tenant, cpu: MetricSeries) -> None:
    made = anomaly(cpu)
    ingest_only = make_client(tenant, scopes=("ingest",))
    for path in ["/api/v1/anomalies", f"/api/v1/anomalies/{made.pk}", f"/api/v1/series/{cpu.pk}/scores"]:
        response = ingest_only.get(path)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "missing_scope"), path
        assert make_client(tenant, scopes=("read",)).get(path).status_code == 200, path


# --- filters -------------------------------------------------------------------------------------


@pytest.fixture
def assorted(tenant: Tenant) -> dict[str, AnomalyResult]:
    """Anomalies differing in one attribute each from `base` (window [0, 5] min, score 0.9, spike,
    closed, unjudged, eu/web-1/cpu)."""
    cpu = MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="cpu")
    return {
        "base": anomaly(cpu),
        "other_series": anomaly(MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="mem")),
        "other_cluster": anomaly(MetricSeriesFactory(tenant=tenant, cluster="us", node="web-1", metric="cpu")),
        "other_node": anomaly(MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-2", metric="cpu")),
        "node_level": anomaly(None, tenant=tenant, cluster="eu", node="web-1", detector="multivariate"),
        "dip": anomaly(cpu, start=100, label="dip"),
        "level_shift": anomaly(cpu, start=200, label="level_shift"),
        "low_score": anomaly(cpu, start=300, peak_score=0.55),
        "open": anomaly(cpu, start=400, status="open"),
        "false_positive": anomaly(cpu, start=500, feedback="false_positive"),
        "expected": anomaly(cpu, start=600, feedback="expected"),
    }


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"cluster": "us"}, {"other_cluster"}),
        ({"node": "web-2"}, {"other_node"}),
        ({"metric": "mem"}, {"other_series"}),
        ({"label": "dip"}, {"dip"}),
        ({"label": ["dip", "level_shift"]}, {"dip", "level_shift"}),
        ({"min_score": "0.6"}, "all but low_score"),
        ({"min_score": "0.55"}, "all"),
        ({"status": "open"}, {"open"}),
        ({"feedback": "false_positive"}, {"false_positive"}),
        ({"feedback": "expected"}, {"expected"}),
        ({"feedback": "none"}, "all but false_positive expected"),
        ({"cluster": "eu", "node": "web-1", "metric": "cpu", "label": "spike"}, "base low_score open feedbacks"),
    ],
)
def test_each_filter_narrows_the_list(
    owner: APIClient, assorted: dict[str, AnomalyResult], params: dict[str, Any], expected: Any
) -> None:
    everything = set(assorted)
    if expected == "all":
        expected = everything
    elif expected == "all but low_score":
        expected = everything - {"low_score"}
    elif expected == "all but false_positive expected":
        expected = everything - {"false_positive", "expected"}
    elif expected == "base low_score open feedbacks":
        expected = {"base", "low_score", "open", "false_positive", "expected"}
    names = {a.pk: name for name, a in assorted.items()}
    assert {names[pk] for pk in ids(owner.get("/api/v1/anomalies", params))} == expected


def test_series_filter(owner: APIClient, assorted: dict[str, AnomalyResult]) -> None:
    mem = assorted["other_series"].series
    assert ids(owner.get("/api/v1/anomalies", {"series": mem.pk})) == [assorted["other_series"].pk]


def test_series_filter_never_reaches_another_tenant(owner: APIClient, theirs: AnomalyResult) -> None:
    assert ids(owner.get("/api/v1/anomalies", {"series": theirs.series_id})) == []


@pytest.mark.parametrize(
    "params, expected",
    [
        # Windows [0, 5], [10, 15], [20, 25] minutes; from/to select those overlapping [from, to).
        ({"from": iso(at(5))}, [10, 20, 0]),
        ({"from": iso(at(5.5))}, [10, 20]),
        ({"to": iso(at(10))}, [0]),
        ({"to": iso(at(10.5))}, [0, 10]),
        ({"from": iso(at(12)), "to": iso(at(13))}, [10]),
        ({"from": str(int(at(16).timestamp())), "to": str(int(at(30).timestamp()))}, [20]),
    ],
)
def test_from_and_to_select_windows_overlapping_the_range(
    owner: APIClient, cpu: MetricSeries, params: dict[str, str], expected: list[int]
) -> None:
    made = {minute: anomaly(cpu, start=minute) for minute in (0, 10, 20)}
    assert sorted(ids(owner.get("/api/v1/anomalies", params))) == sorted(made[m].pk for m in expected)


@pytest.mark.parametrize(
    "query, field",
    [
        ("label=bogus", "label"),
        ("status=snoozed", "status"),
        ("feedback=maybe", "feedback"),
        ("min_score=high", "min_score"),
        ("from=yesterday", "from"),
        ("to=2026-01-01T00:00:00", "to"),
    ],
)
def test_bad_filters_are_400(owner: APIClient, query: str, field: str) -> None:
    response = owner.get(f"/api/v1/anomalies?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert [d["field"] for d in error["details"]] == [field]


# --- feedback ------------------------------------------------------------------------------------


def test_feedback_round_trip(owner: APIClient, cpu: MetricSeries) -> None:
    made = anomaly(cpu)
    before = timezone.now()
    response = owner.post(
        f"/api/v1/anomalies/{made.pk}/feedback",
        {"feedback": "false_positive", "comment": "Nightly batch job."},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["id"], body["feedback"], body["feedback_comment"]) == (made.pk, "false_positive", "Nightly batch job.")
    made.refresh_from_db()
    assert (made.feedback, made.feedback_comment) == ("false_positive", "Nightly batch job.")
    assert made.feedback_at is not None and made.feedback_at >= before
    assert body["feedback_at"] == iso(made.feedback_at)
    # The list and the detail show it; the filter finds it.
    assert owner.get(f"/api/v1/anomalies/{made.pk}").json()["feedback"] == "false_positive"
    assert ids(owner.get("/api/v1/anomalies", {"feedback": "false_positive"})) == [made.pk]


def test_the_same_feedback_again_changes_nothing(owner: APIClient, cpu: MetricSeries) -> None:
    made = anomaly(cpu)
    path = f"/api/v1/anomalies/{made.pk}/feedback"
    first = owner.post(path, {"feedback": "true_positive"}, format="json").json()
    again = owner.post(path, {"feedback": "true_positive"}, format="json").json()
    assert again["feedback_at"] == first["feedback_at"]
    changed = owner.post(path, {"feedback": "expected", "comment": "deploy"}, format="json").json()
    assert (changed["feedback"], changed["feedback_comment"]) == ("expected", "deploy")
    assert changed["feedback_at"] >= first["feedback_at"]


@pytest.mark.parametrize(
    "body, code",
    [
        ({"feedback": "bogus"}, "invalid_choice"),
        ({"feedback": ""}, "invalid_choice"),
        ({"feedback": None}, "null"),
        ({"comment": "no verdict"}, "required"),
        ({"feedback": "expected", "comment": "x" * 2001}, "max_length"),
    ],
)
def test_bad_feedback_is_400_and_changes_nothing(
    owner: APIClient, cpu: MetricSeries, body: dict[str, Any], code: str
) -> None:
    made = anomaly(cpu)
    response = owner.post(f"/api/v1/anomalies/{made.pk}/feedback", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert [(d["field"], d["code"]) for d in error["details"]] == [
        ("comment" if code == "max_length" else "feedback", code)
    ]
    made.refresh_from_db()
    assert (made.feedback, made.feedback_at) == ("", None)


def test_an_unknown_verdict_lists_the_allowed_values(owner: APIClient, cpu: MetricSeries) -> None:
    made = anomaly(cpu)
    response = owner.post(f"/api/v1/anomalies/{made.pk}/feedback", {"feedback": "meh"}, format="json")
    message = response.json()["error"]["details"][0]["message"]
    assert message == '"meh" is not allowed; expected one of: true_positive, false_positive, expected.'


def test_feedback_on_another_tenants_anomaly_is_404_and_changes_nothing(
    owner: APIClient, theirs: AnomalyResult
) -> None:
    for body in ({"feedback": "false_positive"}, {"feedback": "bogus"}):
        response = owner.post(f"/api/v1/anomalies/{theirs.pk}/feedback", body, format="json")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    theirs.refresh_from_db()
    assert theirs.feedback == ""


def test_feedback_needs_the_admin_scope(
    make_client: Callable[..., APIClient], tenant: Tenant, cpu: MetricSeries
) -> None:
    made = anomaly(cpu)
    path = f"/api/v1/anomalies/{made.pk}/feedback"
    for scopes in [("read",), ("ingest", "read")]:
        response = make_client(tenant, scopes=scopes).post(path, {"feedback": "expected"}, format="json")
        assert (response.status_code, response.json()["error"]["code"]) == (403, "missing_scope")
    made.refresh_from_db()
    assert made.feedback == ""
    assert make_client(tenant, scopes=("admin",)).post(path, {"feedback": "expected"}, format="json").status_code == 200


def test_anomalies_are_read_only(owner: APIClient, cpu: MetricSeries) -> None:
    made = anomaly(cpu)
    assert owner.delete(f"/api/v1/anomalies/{made.pk}").status_code == 405
    assert owner.post("/api/v1/anomalies", {}, format="json").status_code == 405


# --- scores --------------------------------------------------------------------------------------


def test_scores_of_a_series_in_range_oldest_first(owner: APIClient, cpu: MetricSeries) -> None:
    for minute, score in [(-1, 0.99), (0, 0.1), (1, 0.8), (2, 0.3), (3, 0.95)]:
        AnomalyScoreFactory(series=cpu, bucket=at(minute), score=score)
    AnomalyScoreFactory(series=MetricSeriesFactory(tenant=cpu.tenant), bucket=at(1), score=0.5)
    response = owner.get(f"/api/v1/series/{cpu.pk}/scores", {"from": iso(at(0)), "to": iso(at(3))})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "series_id": cpu.pk,
        "detector": None,  # never run on this series
        "from": iso(at(0)),
        "to": iso(at(3)),
        "scores": [
            {"bucket": iso(at(0)), "score": 0.1},
            {"bucket": iso(at(1)), "score": 0.8},
            {"bucket": iso(at(2)), "score": 0.3},
        ],
    }


def test_scores_say_whether_the_detector_is_still_warming_up(owner: APIClient, tenant: Tenant) -> None:
    start = time.time() - 3600
    series = send(tenant, start, [100.0 + (i % 7) for i in range(20)])
    detect(series)

    warming = owner.get(f"/api/v1/series/{series.pk}/scores").json()["detector"]
    assert warming["name"] == "ensemble" and warming["sensitivity"] == "medium"
    assert warming["warming"] is True and warming["points_learned"] == 20
    assert warming["seasonality_seconds"] is None and warming["scores_rate"] is False

    send(tenant, start + 20 * INTERVAL, [100.0 + (i % 7) for i in range(100)])
    detect(series)

    warm = owner.get(f"/api/v1/series/{series.pk}/scores").json()["detector"]
    assert warm["warming"] is False and warm["points_learned"] == 120
    assert warm["scored_until"] is not None


def test_scores_default_to_the_last_hour(owner: APIClient, cpu: MetricSeries) -> None:
    minute = timezone.now().replace(second=0, microsecond=0)
    AnomalyScoreFactory(series=cpu, bucket=minute - timedelta(minutes=30), score=0.4)
    AnomalyScoreFactory(series=cpu, bucket=minute - timedelta(minutes=90), score=0.9)
    body = owner.get(f"/api/v1/series/{cpu.pk}/scores").json()
    assert [s["score"] for s in body["scores"]] == [0.4]


@pytest.mark.parametrize(
    "query, code",
    [
        ("from=2026-03-01T00:00:00Z&to=2026-03-08T00:00:01Z", "range_too_long"),
        ("from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z", "invalid"),
        ("from=soon", "invalid_timestamp"),
    ],
)
def test_bad_score_ranges_are_400(owner: APIClient, cpu: MetricSeries, query: str, code: str) -> None:
    response = owner.get(f"/api/v1/series/{cpu.pk}/scores?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["details"][0]["code"]) == ("invalid", code)


def test_seven_days_of_scores_is_allowed(owner: APIClient, cpu: MetricSeries) -> None:
    response = owner.get(f"/api/v1/series/{cpu.pk}/scores?from=2026-03-01T00:00:00Z&to=2026-03-08T00:00:00Z")
    assert response.status_code == 200


def test_other_tenants_series_scores_are_404(owner: APIClient, stranger: APIClient, other_tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=other_tenant)
    AnomalyScoreFactory(series=series, bucket=at(0), score=0.7)
    params = {"from": iso(at(0)), "to": iso(at(1))}
    response = owner.get(f"/api/v1/series/{series.pk}/scores", params)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert stranger.get(f"/api/v1/series/{series.pk}/scores", params).json()["scores"] == [
        {"bucket": iso(at(0)), "score": 0.7}
    ]


# --- lineage -------------------------------------------------------------------------------------


def test_an_anomaly_names_the_version_that_scored_it_and_its_training_window(
    owner: APIClient, cpu: MetricSeries
) -> None:
    version = ModelVersionFactory(series=cpu, status="active", metrics={"contamination": 0.002, "reference": {}})
    scored, before = anomaly(cpu, start=60, model_version=version), anomaly(cpu, start=0)
    expected = {
        "id": version.pk,
        "version": 1,
        "scope_key": f"series:{cpu.pk}",
        "status": "active",
        "detector": "ensemble",
        "trigger": "schedule",
        "train_from": "2026-03-01T00:00:00Z",
        "train_to": "2026-03-22T00:00:00Z",
        "metrics": {"contamination": 0.002},  # without the reference distributions
    }
    assert owner.get(f"/api/v1/anomalies/{scored.pk}").json()["model_version"] == expected
    assert owner.get(f"/api/v1/anomalies/{before.pk}").json()["model_version"] is None
    assert [a["model_version"] for a in owner.get("/api/v1/anomalies").json()["results"]] == [expected, None]
    assert ids(owner.get("/api/v1/anomalies", {"model_version": version.pk})) == [scored.pk]


def test_the_anomaly_list_reads_the_versions_in_the_same_query(owner: APIClient, cpu: MetricSeries) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert owner.get("/api/v1/anomalies").status_code == 200
        return len(captured)

    queries()  # the key's first use is recorded once
    anomaly(cpu, start=0, model_version=ModelVersionFactory(series=cpu))
    one = queries()
    for start in (10, 20, 30):
        anomaly(cpu, start=start, model_version=ModelVersionFactory(series=cpu))
    assert queries() == one


def test_another_tenants_version_filter_finds_nothing(owner: APIClient, theirs: AnomalyResult) -> None:
    version = ModelVersionFactory(series=theirs.series)
    AnomalyResult.objects.filter(pk=theirs.pk).update(model_version=version)
    assert ids(owner.get("/api/v1/anomalies", {"model_version": version.pk})) == []


# --- schema --------------------------------------------------------------------------------------


def test_the_schema_documents_the_anomaly_api_with_examples(anonymous: APIClient) -> None:
    paths = anonymous.get("/api/v1/schema?format=json").json()["paths"]
    listing = paths["/api/v1/anomalies"]["get"]
    assert {
        "series",
        "cluster",
        "node",
        "metric",
        "label",
        "min_score",
        "status",
        "model_version",
        "feedback",
        "from",
        "to",
    } <= {p["name"] for p in listing["parameters"]}
    assert "examples" in listing["responses"]["200"]["content"]["application/json"]
    feedback = paths["/api/v1/anomalies/{id}/feedback"]["post"]
    assert "examples" in feedback["requestBody"]["content"]["application/json"]
    assert "examples" in feedback["responses"]["400"]["content"]["application/json"]
    assert feedback["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    scores = paths["/api/v1/series/{id}/scores"]["get"]
    assert "examples" in scores["responses"]["200"]["content"]["application/json"]
