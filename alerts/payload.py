"""The webhook body: Alertmanager's webhook payload, version 4, plus Vigil's own fields.

Receivers written for Alertmanager (`notify/webhook/webhook.go` Message = `template.Data` +
version, groupKey, truncatedAlerts) parse it unchanged; Vigil's extras live under the `vigil`
keys, top level and per alert, which Alertmanager receivers ignore. Times are RFC 3339 in UTC as
Go writes them, and a firing alert's endsAt is Go's zero time, as Alertmanager sends it.

Pure: no Django, no database. The text returned is stored once (Notification.body) and is the
exact bytes every endpoint receives and every signature covers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VERSION = "4"
# What Go's encoding/json writes for a zero time.Time: Alertmanager's endsAt of a firing alert
# that has no end yet.
ZERO_TIME = "0001-01-01T00:00:00Z"
TEST_ALERTNAME = "VigilTestAlert"
ENDPOINT_DISABLED_ALERTNAME = "VigilWebhookEndpointDisabled"


@dataclass(frozen=True)
class PayloadAlert:
    status: str  # "firing" | "resolved"
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None  # None: ZERO_TIME, as Alertmanager sends for firing alerts
    generator_url: str
    fingerprint: str
    # Vigil's per-alert fields: rule_id, rule_version, incident_id, value, severity,
    # anomaly_score, explanation, links.
    vigil: dict[str, Any]


def rfc3339(moment: datetime | None) -> str:
    """RFC 3339 in UTC with "Z", fractional seconds only when there are any (Go's RFC3339Nano)."""
    if moment is None:
        return ZERO_TIME
    if moment.tzinfo is None:
        raise ValueError("naive datetime: payload times must be timezone-aware")
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The pairs (name AND value) that every map has: Alertmanager's commonLabels rule."""
    if not maps:
        return {}
    common = dict(maps[0])
    for other in maps[1:]:
        common = {name: value for name, value in common.items() if other.get(name) == value}
    return dict(sorted(common.items()))


def _json_safe(value: Any) -> Any:
    """NaN and infinities (an anomaly score, a value) become null: json.dumps would write `NaN`,
    which is not JSON and which strict receivers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def payload_build(
    *,
    receiver: str,
    status: str,
    group_key: str,
    group_labels: dict[str, str],
    alerts: Sequence[PayloadAlert],
    external_url: str,
    truncated_alerts: int = 0,
    vigil: dict[str, Any] | None = None,
) -> str:
    """The body as compact JSON text (ASCII: non-ASCII characters are escaped, so the text and
    the bytes sent are the same whatever the encoding). Keys in the order of Alertmanager's
    documentation; labels sorted, so equal inputs give equal bytes."""
    message = {
        "version": VERSION,
        "groupKey": group_key,
        "truncatedAlerts": truncated_alerts,
        "status": status,
        "receiver": receiver,
        "groupLabels": dict(sorted(group_labels.items())),
        "commonLabels": _common([alert.labels for alert in alerts]),
        "commonAnnotations": _common([alert.annotations for alert in alerts]),
        "externalURL": external_url,
        "alerts": [
            {
                "status": alert.status,
                "labels": dict(sorted(alert.labels.items())),
                "annotations": dict(sorted(alert.annotations.items())),
                "startsAt": rfc3339(alert.starts_at),
                "endsAt": rfc3339(alert.ends_at),
                "generatorURL": alert.generator_url,
                "fingerprint": alert.fingerprint,
                "vigil": alert.vigil,
            }
            for alert in alerts
        ],
        "vigil": vigil or {},
    }
    return json.dumps(_json_safe(message), separators=(",", ":"), allow_nan=False)


def labels_fingerprint(labels: Mapping[str, str]) -> str:
    """A 16-hex-digit identity of a label set (the width of Alertmanager's fingerprints)."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _notice_build(
    *,
    receiver: str,
    external_url: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    at: datetime,
    vigil: dict[str, Any],
) -> str:
    """A one-alert firing message about Vigil itself, so that receivers written for
    Alertmanager show it like any other alert."""
    alert = PayloadAlert(
        status="firing",
        labels=labels,
        annotations=annotations,
        starts_at=at,
        ends_at=None,
        generator_url=external_url,
        fingerprint=labels_fingerprint(labels),
        vigil={"severity": labels["severity"], "explanation": annotations.get("description", "")},
    )
    group_labels = {"alertname": labels["alertname"]}
    return payload_build(
        receiver=receiver,
        status="firing",
        group_key=f'{{}}:{{alertname="{labels["alertname"]}"}}',
        group_labels=group_labels,
        alerts=[alert],
        external_url=external_url,
        vigil=vigil,
    )


def test_payload_build(*, receiver: str, external_url: str, now: datetime | None = None) -> str:
    """The body of "send a test": one firing alert alertname="VigilTestAlert", severity="info",
    and a top-level vigil.event "test"."""
    return _notice_build(
        receiver=receiver,
        external_url=external_url,
        labels={"alertname": TEST_ALERTNAME, "severity": "info"},
        annotations={
            "summary": "Test notification from Vigil",
            "description": "This is a test. If you can read it, the endpoint receives Vigil's webhooks.",
        },
        at=now or datetime.now(UTC),
        vigil={"event": "test"},
    )


test_payload_build.__test__ = False  # type: ignore[attr-defined]  # a builder, not a test: keep pytest off it


def endpoint_disabled_payload_build(
    *,
    receiver: str,
    external_url: str,
    tenant: str,
    endpoint_id: int,
    endpoint_name: str,
    reason: str,
    disabled_at: datetime,
) -> str:
    """The body telling a tenant's other endpoints that one endpoint was disabled: one firing
    alert alertname="VigilWebhookEndpointDisabled", severity="warning", and top-level vigil
    {event: "endpoint.disabled", tenant, endpoint: {id, name, reason}}."""
    return _notice_build(
        receiver=receiver,
        external_url=external_url,
        labels={"alertname": ENDPOINT_DISABLED_ALERTNAME, "severity": "warning", "endpoint": endpoint_name},
        annotations={
            "summary": f"Webhook endpoint {endpoint_name!r} was disabled",
            "description": f"Vigil stopped sending to it: {reason}. Re-enable it once it answers again.",
        },
        at=disabled_at,
        vigil={
            "event": "endpoint.disabled",
            "tenant": tenant,
            "endpoint": {"id": endpoint_id, "name": endpoint_name, "reason": reason},
        },
    )
