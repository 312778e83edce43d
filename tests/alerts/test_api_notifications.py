"""/api/v1/silences, /mute-windows, /routes, /endpoints (secrets, send-test, rotate-secret) and
/deliveries (attempts, replay), as the owner, as another tenant, anonymously and read-only."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from alerts.models import (
    Delivery,
    DeliveryAttempt,
    MuteWindow,
    Notification,
    Route,
    Silence,
    WebhookEndpoint,
)
from tenants.models import Tenant
from tests.alerts.factories import DeliveryFactory, NotificationFactory, WebhookEndpointFactory

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"  # test settings allow private addresses (receivers on loopback)
CLUSTER = [{"label": "cluster", "op": "=", "value": "eu-west"}]


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def details(response: Any) -> list[tuple[str | None, str]]:
    return [(d["field"], d["code"]) for d in response.json()["error"]["details"]]


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def iso(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def assert_reads_but_cannot_write(
    make_client: Callable[..., APIClient], tenant: Tenant, reads: list[str], writes: list[tuple[str, str, Any]]
) -> None:
    reader = make_client(tenant, scopes=("read",))
    for path in reads:
        assert reader.get(path).status_code == 200, path
    for method, path, body in writes:
        assert error(getattr(reader, method)(path, body, format="json")) == (403, "missing_scope"), (method, path)


# --- silences --------------------------------------------------------------------------------------


@pytest.fixture
def silence(tenant: Tenant) -> Silence:
    now = timezone.now()
    return Silence.objects.create(tenant=tenant, matchers=CLUSTER, starts_at=now, ends_at=now + timedelta(hours=2))


@pytest.fixture
def their_silence(other_tenant: Tenant) -> Silence:
    now = timezone.now()
    return Silence.objects.create(
        tenant=other_tenant, matchers=CLUSTER, starts_at=now, ends_at=now + timedelta(hours=2)
    )


def test_owner_creates_a_silence_active_from_now(owner: APIClient) -> None:
    ends = timezone.now() + timedelta(hours=1)
    response = owner.post(
        "/api/v1/silences", {"matchers": CLUSTER, "ends_at": iso(ends), "comment": "DB migration"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["created_by"], body["comment"]) == ("active", "key:test", "DB migration")
    assert body["matchers"] == CLUSTER
    assert Silence.objects.get(pk=body["id"]).created_by == "key:test"


def test_a_future_silence_is_pending(owner: APIClient) -> None:
    starts = timezone.now() + timedelta(days=1)
    body = owner.post(
        "/api/v1/silences",
        {"matchers": CLUSTER, "starts_at": iso(starts), "ends_at": iso(starts + timedelta(hours=1))},
        format="json",
    ).json()
    assert body["status"] == "pending"


def test_deleting_a_silence_expires_it_and_it_stays_listed(owner: APIClient, silence: Silence) -> None:
    assert owner.delete(f"/api/v1/silences/{silence.pk}").status_code == 204
    silence.refresh_from_db()
    assert silence.ends_at <= timezone.now()
    body = owner.get(f"/api/v1/silences/{silence.pk}").json()
    assert (body["status"], body["ends_at"]) == ("expired", iso(silence.ends_at))
    assert ids(owner.get("/api/v1/silences", {"active": "false"})) == [silence.pk]
    assert ids(owner.get("/api/v1/silences", {"active": "true"})) == []


def test_deleting_a_future_silence_means_it_never_starts(owner: APIClient, tenant: Tenant) -> None:
    starts = timezone.now() + timedelta(days=1)
    future = Silence.objects.create(
        tenant=tenant, matchers=CLUSTER, starts_at=starts, ends_at=starts + timedelta(hours=1)
    )
    assert owner.delete(f"/api/v1/silences/{future.pk}").status_code == 204
    assert owner.get(f"/api/v1/silences/{future.pk}").json()["status"] == "expired"
    assert ids(owner.get("/api/v1/silences", {"active": "true"})) == []


def test_silences_filter_by_active(owner: APIClient, tenant: Tenant, silence: Silence) -> None:
    now = timezone.now()
    future = Silence.objects.create(
        tenant=tenant, matchers=CLUSTER, starts_at=now + timedelta(hours=1), ends_at=now + timedelta(hours=2)
    )
    past = Silence.objects.create(
        tenant=tenant, matchers=CLUSTER, starts_at=now - timedelta(hours=2), ends_at=now - timedelta(hours=1)
    )
    assert ids(owner.get("/api/v1/silences", {"active": "true"})) == [silence.pk]
    assert set(ids(owner.get("/api/v1/silences", {"active": "false"}))) == {future.pk, past.pk}
    assert error(owner.get("/api/v1/silences", {"active": "maybe"})) == (400, "invalid")


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"matchers": []}, [("matchers", "required")]),
        ({"matchers": [{"label": "node", "op": "=~", "value": "web-["}]}, [("matchers[0].value", "invalid_regex")]),
        ({"matchers": [{"label": "no spaces", "op": "=", "value": "x"}]}, [("matchers[0].label", "invalid")]),
        ({"matchers": CLUSTER, "ends_at": "2020-01-01T00:00:00Z"}, [("ends_at", "invalid")]),
        ({"matchers": CLUSTER, "ends_at": "tomorrow"}, [("ends_at", "invalid")]),
    ],
)
def test_a_bad_silence_is_400_and_nothing_is_written(
    owner: APIClient, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = owner.post(
        "/api/v1/silences", {"ends_at": iso(timezone.now() + timedelta(hours=1)), **body}, format="json"
    )
    assert error(response) == (400, "invalid")
    assert details(response) == expected
    assert not Silence.objects.exists()


def test_silences_are_not_edited(owner: APIClient, silence: Silence) -> None:
    assert owner.patch(f"/api/v1/silences/{silence.pk}", {"comment": "x"}, format="json").status_code == 405


@pytest.mark.parametrize("method", ["get", "delete"])
def test_another_tenants_silence_is_404_and_unchanged(owner: APIClient, their_silence: Silence, method: str) -> None:
    ends = their_silence.ends_at
    assert error(getattr(owner, method)(f"/api/v1/silences/{their_silence.pk}")) == (404, "not_found")
    their_silence.refresh_from_db()
    assert their_silence.ends_at == ends
    assert ids(owner.get("/api/v1/silences")) == []


def test_a_read_only_key_reads_silences_but_cannot_write(
    make_client: Callable[..., APIClient], tenant: Tenant, silence: Silence
) -> None:
    ends = iso(timezone.now() + timedelta(hours=1))
    assert_reads_but_cannot_write(
        make_client,
        tenant,
        ["/api/v1/silences", f"/api/v1/silences/{silence.pk}"],
        [
            ("post", "/api/v1/silences", {"matchers": CLUSTER, "ends_at": ends}),
            ("delete", f"/api/v1/silences/{silence.pk}", None),
        ],
    )
    assert Silence.objects.count() == 1


# --- mute windows ----------------------------------------------------------------------------------

WINDOW = {
    "name": "Weekend batch",
    "matchers": [{"label": "metric", "op": "=~", "value": "batch\\..*"}],
    "weekdays": [5, 6],
    "start_time": "01:00:00",
    "end_time": "05:00:00",
    "timezone": "Europe/Paris",
}


@pytest.fixture
def window(tenant: Tenant) -> MuteWindow:
    return MuteWindow.objects.create(tenant=tenant, name="nightly", start_time="02:00", end_time="03:00")


@pytest.fixture
def their_window(other_tenant: Tenant) -> MuteWindow:
    return MuteWindow.objects.create(tenant=other_tenant, name="theirs", start_time="02:00", end_time="03:00")


def test_mute_window_create_edit_delete(owner: APIClient) -> None:
    created = owner.post("/api/v1/mute-windows", WINDOW, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert {k: body[k] for k in WINDOW} == WINDOW
    assert body["enabled"] is True
    path = f"/api/v1/mute-windows/{body['id']}"
    patched = owner.patch(path, {"end_time": "23:00", "enabled": False}, format="json").json()
    assert (patched["end_time"], patched["enabled"], patched["weekdays"]) == ("23:00:00", False, [5, 6])
    replaced = owner.put(path, {**WINDOW, "name": "Every night", "weekdays": []}, format="json").json()
    assert (replaced["name"], replaced["weekdays"], replaced["enabled"]) == ("Every night", [], True)
    assert owner.delete(path).status_code == 204
    assert not MuteWindow.objects.exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"timezone": "Mars/Olympus"}, [("timezone", "invalid")]),
        ({"end_time": "01:00:00"}, [("end_time", "invalid")]),
        ({"weekdays": [7]}, [("weekdays.0", "max_value")]),
        ({"matchers": [{"label": "metric", "op": "=~", "value": "("}]}, [("matchers[0].value", "invalid_regex")]),
        ({"start_time": "25:00"}, [("start_time", "invalid")]),
    ],
)
def test_a_bad_mute_window_is_400_and_nothing_is_written(
    owner: APIClient, change: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = owner.post("/api/v1/mute-windows", {**WINDOW, **change}, format="json")
    assert error(response) == (400, "invalid")
    assert details(response) == expected
    assert not MuteWindow.objects.exists()


def test_a_bad_mute_window_edit_changes_nothing(owner: APIClient, window: MuteWindow) -> None:
    response = owner.patch(f"/api/v1/mute-windows/{window.pk}", {"timezone": "Nowhere"}, format="json")
    assert error(response) == (400, "invalid")
    window.refresh_from_db()
    assert window.timezone == "UTC"


def test_a_taken_mute_window_name_is_409(owner: APIClient, window: MuteWindow) -> None:
    assert error(owner.post("/api/v1/mute-windows", {**WINDOW, "name": "nightly"}, format="json")) == (
        409,
        "duplicate_name",
    )


@pytest.mark.parametrize(
    "method, body", [("get", None), ("put", WINDOW), ("patch", {"enabled": False}), ("delete", None)]
)
def test_another_tenants_mute_window_is_404_and_unchanged(
    owner: APIClient, their_window: MuteWindow, method: str, body: Any
) -> None:
    response = getattr(owner, method)(f"/api/v1/mute-windows/{their_window.pk}", body, format="json")
    assert error(response) == (404, "not_found")
    their_window.refresh_from_db()
    assert (their_window.name, their_window.enabled) == ("theirs", True)
    assert ids(owner.get("/api/v1/mute-windows")) == []


def test_a_read_only_key_reads_mute_windows_but_cannot_write(
    make_client: Callable[..., APIClient], tenant: Tenant, window: MuteWindow
) -> None:
    path = f"/api/v1/mute-windows/{window.pk}"
    assert_reads_but_cannot_write(
        make_client,
        tenant,
        ["/api/v1/mute-windows", path],
        [
            ("post", "/api/v1/mute-windows", WINDOW),
            ("put", path, WINDOW),
            ("patch", path, {"enabled": False}),
            ("delete", path, None),
        ],
    )
    window.refresh_from_db()
    assert window.enabled is True


# --- routes ----------------------------------------------------------------------------------------


@pytest.fixture
def endpoint(tenant: Tenant) -> WebhookEndpoint:
    return WebhookEndpointFactory(tenant=tenant, name="pager")


@pytest.fixture
def their_endpoint(other_tenant: Tenant) -> WebhookEndpoint:
    return WebhookEndpointFactory(tenant=other_tenant, name="theirs")


def route_body(**changes: Any) -> dict[str, Any]:
    return {"name": "Critical", "matchers": CLUSTER, "severities": ["critical"], "group_by": ["alertname"], **changes}


@pytest.fixture
def their_route(other_tenant: Tenant, their_endpoint: WebhookEndpoint) -> Route:
    route = Route.objects.create(tenant=other_tenant, name="theirs")
    route.endpoints.set([their_endpoint])
    return route


def test_route_create_edit_delete(owner: APIClient, tenant: Tenant, endpoint: WebhookEndpoint) -> None:
    second = WebhookEndpointFactory(tenant=tenant)
    created = owner.post("/api/v1/routes", route_body(endpoints=[endpoint.pk]), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["endpoints"], body["severities"], body["group_by"]) == ([endpoint.pk], ["critical"], ["alertname"])
    assert (body["group_wait_seconds"], body["repeat_interval_seconds"], body["continue_matching"]) == (
        30,
        14400,
        False,
    )
    path = f"/api/v1/routes/{body['id']}"
    assert owner.patch(path, {"position": 5}, format="json").json()["endpoints"] == [endpoint.pk]  # kept
    patched = owner.patch(path, {"endpoints": [second.pk, endpoint.pk]}, format="json").json()
    assert sorted(patched["endpoints"]) == sorted([endpoint.pk, second.pk])
    assert owner.put(path, route_body(), format="json").json()["endpoints"] == []
    assert owner.delete(path).status_code == 204
    assert not Route.objects.exists()


def test_routes_are_listed_in_the_order_they_are_tried(owner: APIClient, tenant: Tenant) -> None:
    last = Route.objects.create(tenant=tenant, name="last", position=10)
    first = Route.objects.create(tenant=tenant, name="first", position=-1)
    middle = Route.objects.create(tenant=tenant, name="middle", position=0)
    assert ids(owner.get("/api/v1/routes")) == [first.pk, middle.pk, last.pk]


def test_another_tenants_endpoint_is_never_accepted(
    owner: APIClient, endpoint: WebhookEndpoint, their_endpoint: WebhookEndpoint
) -> None:
    response = owner.post("/api/v1/routes", route_body(endpoints=[endpoint.pk, their_endpoint.pk]), format="json")
    assert error(response) == (400, "invalid")
    assert details(response) == [("endpoints", "does_not_exist")]
    assert not Route.objects.exists()


def test_a_route_edit_to_another_tenants_endpoint_is_400(
    owner: APIClient, tenant: Tenant, endpoint: WebhookEndpoint, their_endpoint: WebhookEndpoint
) -> None:
    route = Route.objects.create(tenant=tenant, name="r")
    route.endpoints.set([endpoint])
    response = owner.patch(f"/api/v1/routes/{route.pk}", {"endpoints": [their_endpoint.pk]}, format="json")
    assert error(response) == (400, "invalid")
    assert list(route.endpoints.all()) == [endpoint]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"matchers": [{"label": "x", "op": "!~", "value": "*"}]}, [("matchers[0].value", "invalid_regex")]),
        ({"severities": ["page"]}, [("severities.0", "invalid_choice")]),
        ({"group_wait_seconds": -5}, [("group_wait_seconds", "min_value")]),
        ({"endpoints": [999999]}, [("endpoints", "does_not_exist")]),
    ],
)
def test_a_bad_route_is_400_and_nothing_is_written(
    owner: APIClient, change: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = owner.post("/api/v1/routes", route_body(**change), format="json")
    assert error(response) == (400, "invalid")
    assert details(response) == expected
    assert not Route.objects.exists()


@pytest.mark.parametrize(
    "method, body", [("get", None), ("put", route_body()), ("patch", {"position": 9}), ("delete", None)]
)
def test_another_tenants_route_is_404_and_unchanged(
    owner: APIClient, their_route: Route, their_endpoint: WebhookEndpoint, method: str, body: Any
) -> None:
    assert error(getattr(owner, method)(f"/api/v1/routes/{their_route.pk}", body, format="json")) == (404, "not_found")
    their_route.refresh_from_db()
    assert (their_route.name, their_route.position, list(their_route.endpoints.all())) == (
        "theirs",
        0,
        [their_endpoint],
    )
    assert ids(owner.get("/api/v1/routes")) == []


def test_a_read_only_key_reads_routes_but_cannot_write(make_client: Callable[..., APIClient], tenant: Tenant) -> None:
    route = Route.objects.create(tenant=tenant, name="r")
    path = f"/api/v1/routes/{route.pk}"
    assert_reads_but_cannot_write(
        make_client,
        tenant,
        ["/api/v1/routes", path],
        [
            ("post", "/api/v1/routes", route_body()),
            ("put", path, route_body()),
            ("patch", path, {"position": 1}),
            ("delete", path, None),
        ],
    )
    assert Route.objects.get().name == "r"


# --- endpoints -------------------------------------------------------------------------------------


def test_the_secret_is_shown_once_at_creation(owner: APIClient) -> None:
    response = owner.post(
        "/api/v1/endpoints",
        {"name": "pager", "url": URL, "severities": ["critical"], "headers": {"Authorization": "Bearer t"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    stored = WebhookEndpoint.objects.get(pk=body["id"])
    assert secret.startswith("whsec_") and stored.secret == secret
    assert (body["url"], body["severities"], body["headers"], body["enabled"]) == (
        URL,
        ["critical"],
        {"Authorization": "Bearer t"},
        True,
    )
    for path in ["/api/v1/endpoints", f"/api/v1/endpoints/{body['id']}"]:
        page = owner.get(path)
        assert secret not in page.content.decode() and '"secret"' not in page.content.decode(), path
    edited = owner.patch(f"/api/v1/endpoints/{body['id']}", {"name": "renamed"}, format="json")
    assert secret not in edited.content.decode()


@override_settings(VIGIL_WEBHOOK_ALLOW_PRIVATE=False)
@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1/hook", "private_address"),
        ("http://10.1.2.3/hook", "private_address"),
        ("ftp://203.0.113.9/hook", "invalid_url"),
    ],
)
def test_an_unsafe_url_is_refused_and_nothing_is_written(owner: APIClient, url: str, reason: str) -> None:
    response = owner.post("/api/v1/endpoints", {"name": "internal", "url": url}, format="json")
    assert error(response) == (400, "unsafe_url")
    assert details(response) == [("url", reason)]
    assert not WebhookEndpoint.objects.exists()


@override_settings(VIGIL_WEBHOOK_ALLOW_PRIVATE=False)
def test_an_edit_to_an_unsafe_url_is_refused(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    response = owner.patch(f"/api/v1/endpoints/{endpoint.pk}", {"url": "http://192.168.1.1/"}, format="json")
    assert error(response) == (400, "unsafe_url")
    endpoint.refresh_from_db()
    assert endpoint.url == URL


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"headers": {"Content-Type": "text/plain"}}, [("headers.Content-Type", "reserved")]),
        ({"headers": {"X-Token": "a\r\nInjected: 1"}}, [("headers.X-Token", "invalid")]),
        ({"event_types": ["alert.maybe"]}, [("event_types.0", "invalid_choice")]),
        ({"matchers": [{"label": "node", "op": "=~", "value": "(("}]}, [("matchers[0].value", "invalid_regex")]),
        ({"name": ""}, [("name", "blank")]),
    ],
)
def test_a_bad_endpoint_is_400_and_nothing_is_written(
    owner: APIClient, change: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = owner.post("/api/v1/endpoints", {"name": "pager", "url": URL, **change}, format="json")
    assert error(response) == (400, "invalid")
    assert details(response) == expected
    assert not WebhookEndpoint.objects.exists()


def test_a_taken_endpoint_name_is_409(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    assert error(owner.post("/api/v1/endpoints", {"name": "pager", "url": URL}, format="json")) == (
        409,
        "duplicate_name",
    )


def test_disabling_an_endpoint_shows_when_and_why(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    body = owner.patch(f"/api/v1/endpoints/{endpoint.pk}", {"enabled": False}, format="json").json()
    assert (body["enabled"], body["disabled_reason"]) == (False, "disabled by a user")
    assert body["disabled_at"] is not None and body["failing_since"] is None
    enabled = owner.put(f"/api/v1/endpoints/{endpoint.pk}", {"name": "pager", "url": URL}, format="json").json()
    assert (enabled["enabled"], enabled["disabled_at"], enabled["disabled_reason"]) == (True, None, "")


def test_rotating_the_secret_shows_the_new_one_once(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    old = endpoint.secret
    response = owner.post(f"/api/v1/endpoints/{endpoint.pk}/rotate-secret")
    assert response.status_code == 200, response.content
    body = response.json()
    endpoint.refresh_from_db()
    assert body["secret"] == endpoint.secret != old
    assert endpoint.previous_secret == old
    assert body["previous_secret_expires_at"] == iso(endpoint.previous_secret_expires_at)
    page = owner.get(f"/api/v1/endpoints/{endpoint.pk}").content.decode()
    assert endpoint.secret not in page and old not in page


def test_send_test_queues_a_test_delivery(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    response = owner.post(f"/api/v1/endpoints/{endpoint.pk}/send-test")
    assert response.status_code == 202, response.content
    body = response.json()
    sent = Delivery.objects.get(pk=body["id"])
    assert (sent.endpoint, sent.notification.event, sent.status) == (endpoint, "test", "pending")
    assert (body["event"], body["status"], body["webhook_id"], body["attempt_log"]) == (
        "test",
        "pending",
        sent.webhook_id,
        [],
    )
    assert body["body"]["alerts"][0]["labels"]["alertname"] == "VigilTestAlert"


def test_send_test_to_a_disabled_endpoint_is_409(owner: APIClient, tenant: Tenant) -> None:
    disabled = WebhookEndpointFactory(tenant=tenant, enabled=False)
    assert error(owner.post(f"/api/v1/endpoints/{disabled.pk}/send-test")) == (409, "endpoint_disabled")
    assert not Delivery.objects.exists()


def test_owner_deletes_an_endpoint(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    assert owner.delete(f"/api/v1/endpoints/{endpoint.pk}").status_code == 204
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("get", "", None),
        ("put", "", {"name": "stolen", "url": URL}),
        ("patch", "", {"enabled": False}),
        ("delete", "", None),
        ("post", "/send-test", None),
        ("post", "/rotate-secret", None),
    ],
)
def test_another_tenants_endpoint_is_404_and_unchanged(
    owner: APIClient, their_endpoint: WebhookEndpoint, method: str, suffix: str, body: Any
) -> None:
    secret = their_endpoint.secret
    response = getattr(owner, method)(f"/api/v1/endpoints/{their_endpoint.pk}{suffix}", body, format="json")
    assert error(response) == (404, "not_found")
    their_endpoint.refresh_from_db()
    assert (their_endpoint.name, their_endpoint.enabled, their_endpoint.secret) == ("theirs", True, secret)
    assert not Delivery.objects.exists()
    assert ids(owner.get("/api/v1/endpoints")) == []


def test_a_read_only_key_reads_endpoints_but_cannot_write(
    make_client: Callable[..., APIClient], tenant: Tenant, endpoint: WebhookEndpoint
) -> None:
    path = f"/api/v1/endpoints/{endpoint.pk}"
    secret = endpoint.secret
    assert_reads_but_cannot_write(
        make_client,
        tenant,
        ["/api/v1/endpoints", path],
        [
            ("post", "/api/v1/endpoints", {"name": "x", "url": URL}),
            ("put", path, {"name": "x", "url": URL}),
            ("patch", path, {"enabled": False}),
            ("delete", path, None),
            ("post", f"{path}/send-test", None),
            ("post", f"{path}/rotate-secret", None),
        ],
    )
    endpoint.refresh_from_db()
    assert (endpoint.enabled, endpoint.secret, Delivery.objects.count()) == (True, secret, 0)


# --- deliveries ------------------------------------------------------------------------------------


def failed_delivery(endpoint: WebhookEndpoint) -> Delivery:
    """A delivery that failed after two attempts: a timeout, then a 404."""
    sent = DeliveryFactory(
        notification=NotificationFactory(tenant=endpoint.tenant),
        endpoint=endpoint,
        status="failed",
        attempts=2,
        next_attempt_at=None,
        last_status_code=404,
        last_error="HTTP 404",
    )
    now = timezone.now()
    DeliveryAttempt.objects.create(
        delivery=sent, number=1, started_at=now, duration_ms=10_000.0, error="timeout: no answer", outcome="retry"
    )
    DeliveryAttempt.objects.create(
        delivery=sent,
        number=2,
        started_at=now,
        duration_ms=12.5,
        status_code=404,
        error="HTTP 404",
        response_excerpt="Not Found",
        outcome="failed",
    )
    return sent


def test_a_delivery_shows_its_attempts_and_the_body_sent(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    sent = failed_delivery(endpoint)
    body = owner.get(f"/api/v1/deliveries/{sent.pk}").json()
    assert (body["webhook_id"], body["endpoint"], body["event"], body["status"]) == (
        sent.webhook_id,
        endpoint.pk,
        "alert.firing",
        "failed",
    )
    assert [(a["number"], a["status_code"], a["outcome"], a["response_excerpt"]) for a in body["attempt_log"]] == [
        (1, None, "retry", ""),
        (2, 404, "failed", "Not Found"),
    ]
    assert body["attempt_log"][0]["error"] == "timeout: no answer"
    assert body["body"] == json.loads(sent.notification.body)
    assert body["body"]["alerts"][0]["labels"]["alertname"] == "HighLatency"


def test_deliveries_are_listed_newest_first_and_filtered(
    owner: APIClient, tenant: Tenant, endpoint: WebhookEndpoint
) -> None:
    failed = failed_delivery(endpoint)
    other = WebhookEndpointFactory(tenant=tenant)
    test_event = DeliveryFactory(notification=NotificationFactory(tenant=tenant, event="test"), endpoint=other)
    listed = owner.get("/api/v1/deliveries").json()["results"]
    assert [d["id"] for d in listed] == [test_event.pk, failed.pk]
    assert "attempt_log" not in listed[0]
    assert ids(owner.get("/api/v1/deliveries", {"status": "failed"})) == [failed.pk]
    assert ids(owner.get("/api/v1/deliveries", {"endpoint": other.pk})) == [test_event.pk]
    assert ids(owner.get("/api/v1/deliveries", {"event": "test"})) == [test_event.pk]
    assert error(owner.get("/api/v1/deliveries", {"status": "lost"})) == (400, "invalid")


def test_replaying_a_failed_delivery_makes_it_pending_with_the_same_webhook_id(
    owner: APIClient, endpoint: WebhookEndpoint
) -> None:
    sent = failed_delivery(endpoint)
    response = owner.post(f"/api/v1/deliveries/{sent.pk}/replay")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["webhook_id"], len(body["attempt_log"])) == ("pending", sent.webhook_id, 2)
    stored = Delivery.objects.get(pk=sent.pk)
    assert (stored.status, stored.webhook_id, stored.next_attempt_at is not None) == (
        "pending",
        sent.webhook_id,
        True,
    )
    assert Delivery.objects.count() == 1 and Notification.objects.count() == 1


def test_a_pending_delivery_cannot_be_replayed(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    pending = DeliveryFactory(notification=NotificationFactory(tenant=endpoint.tenant), endpoint=endpoint)
    assert error(owner.post(f"/api/v1/deliveries/{pending.pk}/replay")) == (409, "not_replayable")


def test_deliveries_are_read_only(owner: APIClient, endpoint: WebhookEndpoint) -> None:
    sent = failed_delivery(endpoint)
    assert owner.post("/api/v1/deliveries", {}, format="json").status_code == 405
    assert owner.delete(f"/api/v1/deliveries/{sent.pk}").status_code == 405


@pytest.mark.parametrize("method, suffix", [("get", ""), ("post", "/replay")])
def test_another_tenants_delivery_is_404_and_unchanged(
    owner: APIClient, their_endpoint: WebhookEndpoint, method: str, suffix: str
) -> None:
    sent = failed_delivery(their_endpoint)
    assert error(getattr(owner, method)(f"/api/v1/deliveries/{sent.pk}{suffix}")) == (404, "not_found")
    sent.refresh_from_db()
    assert sent.status == "failed"
    assert ids(owner.get("/api/v1/deliveries")) == []
    assert ids(owner.get("/api/v1/deliveries", {"endpoint": their_endpoint.pk})) == []


def test_a_read_only_key_reads_deliveries_but_cannot_replay(
    make_client: Callable[..., APIClient], tenant: Tenant, endpoint: WebhookEndpoint
) -> None:
    sent = failed_delivery(endpoint)
    assert_reads_but_cannot_write(
        make_client,
        tenant,
        ["/api/v1/deliveries", f"/api/v1/deliveries/{sent.pk}"],
        [("post", f"/api/v1/deliveries/{sent.pk}/replay", None)],
    )
    sent.refresh_from_db()
    assert sent.status == "failed"


# --- anonymous -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        *[("get", f"/api/v1/{name}") for name in ["silences", "mute-windows", "routes", "endpoints", "deliveries"]],
        *[("post", f"/api/v1/{name}") for name in ["silences", "mute-windows", "routes", "endpoints"]],
        *[("get", f"/api/v1/{name}/1") for name in ["silences", "mute-windows", "routes", "endpoints", "deliveries"]],
        *[("put", f"/api/v1/{name}/1") for name in ["mute-windows", "routes", "endpoints"]],
        *[("patch", f"/api/v1/{name}/1") for name in ["mute-windows", "routes", "endpoints"]],
        *[("delete", f"/api/v1/{name}/1") for name in ["silences", "mute-windows", "routes", "endpoints"]],
        ("post", "/api/v1/endpoints/1/send-test"),
        ("post", "/api/v1/endpoints/1/rotate-secret"),
        ("post", "/api/v1/deliveries/1/replay"),
    ],
)
def test_anonymous_is_401(anonymous: APIClient, method: str, path: str) -> None:
    assert error(getattr(anonymous, method)(path)) == (401, "not_authenticated")
