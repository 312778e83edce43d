"""The webhook body is Alertmanager's v4 payload (notify/webhook/webhook.go Message: template.Data
plus version, groupKey, truncatedAlerts) with Vigil's fields under `vigil`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from alerts import payload
from alerts.payload import PayloadAlert, payload_build

STARTS = datetime(2025, 3, 1, 12, 0, 5, 250000, tzinfo=UTC)


def _alert(labels: dict[str, str], annotations: dict[str, str] | None = None, **overrides: object) -> PayloadAlert:
    fields: dict[str, object] = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations or {},
        "starts_at": STARTS,
        "ends_at": None,
        "generator_url": "http://vigil.test/api/v1/rules/7",
        "fingerprint": payload.labels_fingerprint(labels),
        "vigil": {"rule_id": 7, "severity": "critical", "value": 731.5},
    }
    return PayloadAlert(**(fields | overrides))  # type: ignore[arg-type]


def _build(alerts: list[PayloadAlert], **overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "receiver": "ops",
        "status": "firing",
        "group_key": '{}/ops:{alertname="HighLatency"}',
        "group_labels": {"alertname": "HighLatency"},
        "alerts": alerts,
        "external_url": "http://vigil.test",
    }
    return json.loads(payload_build(**(arguments | overrides)))  # type: ignore[arg-type]


def test_the_body_has_every_field_alertmanager_receivers_read() -> None:
    body = _build([_alert({"alertname": "HighLatency", "node": "web-1"}, {"summary": "slow"})])

    assert list(body) == [
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
        "vigil",
    ]
    assert body["version"] == "4"
    assert body["groupKey"] == '{}/ops:{alertname="HighLatency"}'
    assert body["truncatedAlerts"] == 0
    assert body["externalURL"] == "http://vigil.test"
    [alert] = body["alerts"]  # type: ignore[misc]
    assert list(alert) == [
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
        "vigil",
    ]
    assert alert["labels"] == {"alertname": "HighLatency", "node": "web-1"}
    assert alert["generatorURL"] == "http://vigil.test/api/v1/rules/7"
    assert alert["vigil"] == {"rule_id": 7, "severity": "critical", "value": 731.5}


def test_times_are_rfc3339_utc_and_a_firing_alert_ends_at_go_zero_time() -> None:
    other_zone = STARTS.astimezone(timezone(timedelta(hours=2)))
    resolved = _alert(
        {"alertname": "A"}, status="resolved", starts_at=other_zone, ends_at=STARTS.replace(microsecond=0)
    )
    body = _build([_alert({"alertname": "A"}), resolved])

    firing_json, resolved_json = body["alerts"]  # type: ignore[misc]
    assert firing_json["startsAt"] == "2025-03-01T12:00:05.25Z"
    assert firing_json["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved_json["startsAt"] == "2025-03-01T12:00:05.25Z"
    assert resolved_json["endsAt"] == "2025-03-01T12:00:05Z"


def test_common_labels_and_annotations_are_the_pairs_every_alert_shares() -> None:
    body = _build(
        [
            _alert(
                {"alertname": "HighLatency", "cluster": "eu", "node": "web-1"}, {"summary": "slow", "runbook": "r1"}
            ),
            _alert(
                {"alertname": "HighLatency", "cluster": "eu", "node": "web-2"}, {"summary": "slow", "runbook": "r2"}
            ),
            _alert({"alertname": "HighLatency", "cluster": "eu"}, {"summary": "slow"}),
        ]
    )

    assert body["commonLabels"] == {"alertname": "HighLatency", "cluster": "eu"}
    assert body["commonAnnotations"] == {"summary": "slow"}


def test_no_alerts_have_no_common_labels() -> None:
    body = _build([], status="resolved")

    assert body["commonLabels"] == {} and body["commonAnnotations"] == {} and body["alerts"] == []


def test_the_text_is_compact_ascii_json_and_the_same_for_the_same_input() -> None:
    alerts = [_alert({"alertname": "Lätenz", "b": "2", "a": "1"})]
    arguments = {
        "receiver": "ops",
        "status": "firing",
        "group_key": "k",
        "group_labels": {},
        "alerts": alerts,
        "external_url": "http://vigil.test",
    }

    text = payload_build(**arguments)  # type: ignore[arg-type]

    assert text == payload_build(**arguments)  # type: ignore[arg-type]
    assert text.isascii() and ", " not in text and ": " not in text
    assert json.loads(text)["alerts"][0]["labels"] == {"a": "1", "alertname": "Lätenz", "b": "2"}


def test_vigil_fields_and_truncated_alerts_are_carried() -> None:
    body = _build(
        [_alert({"alertname": "A"}, vigil={"value": float("nan"), "anomaly_score": float("inf")})],
        truncated_alerts=3,
        vigil={"event": "alert.firing", "tenant": "acme", "incident_id": 12},
    )

    assert body["truncatedAlerts"] == 3
    assert body["vigil"] == {"event": "alert.firing", "tenant": "acme", "incident_id": 12}
    # NaN is not JSON: strict receivers would refuse the whole body.
    assert body["alerts"][0]["vigil"] == {"value": None, "anomaly_score": None}  # type: ignore[index]


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        _build([_alert({"alertname": "A"}, starts_at=datetime(2025, 1, 1))])


def test_the_test_body_is_one_firing_info_alert_marked_as_a_test() -> None:
    body = json.loads(payload.test_payload_build(receiver="pager", external_url="http://vigil.test"))

    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "pager"
    assert body["vigil"] == {"event": "test"}
    [alert] = body["alerts"]
    assert alert["labels"] == {"alertname": "VigilTestAlert", "severity": "info"}
    assert alert["status"] == "firing" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["commonLabels"] == alert["labels"]
    assert body["groupLabels"] == {"alertname": "VigilTestAlert"}


def test_the_endpoint_disabled_body_names_the_endpoint_and_the_reason() -> None:
    body = json.loads(
        payload.endpoint_disabled_payload_build(
            receiver="vigil",
            external_url="http://vigil.test",
            tenant="acme",
            endpoint_id=4,
            endpoint_name="pager",
            reason="the receiver answered 410 Gone",
            disabled_at=STARTS,
        )
    )

    assert body["vigil"] == {
        "event": "endpoint.disabled",
        "tenant": "acme",
        "endpoint": {"id": 4, "name": "pager", "reason": "the receiver answered 410 Gone"},
    }
    [alert] = body["alerts"]
    assert alert["labels"] == {"alertname": "VigilWebhookEndpointDisabled", "endpoint": "pager", "severity": "warning"}
    assert "410 Gone" in alert["annotations"]["description"]
