"""/api/v1/calendar-events: create, edit, delete and list the tenant's known events, as the owner,
as another tenant, anonymously and read-only; bad events are 400 with a code and write nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from mlops.models import CalendarEvent
from tenants.models import Tenant
from tests.analytics.factories import MetricSeriesFactory
from tests.mlops.factories import T0, CalendarEventFactory

pytestmark = pytest.mark.django_db

LIST = "/api/v1/calendar-events"
EVENT = {
    "kind": "maintenance",
    "description": "Database upgrade",
    "start": "2026-12-01T22:00:00Z",
    "end": "2026-12-02T02:00:00Z",
    "cluster": "eu-west",
    "node": "db-1",
    "suppress": True,
}


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def details(response: Any) -> list[tuple[str | None, str]]:
    return [(d["field"], d["code"]) for d in response.json()["error"]["details"]]


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def iso(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def event(tenant: Tenant) -> CalendarEvent:
    return CalendarEventFactory(tenant=tenant)


@pytest.fixture
def theirs(other_tenant: Tenant) -> CalendarEvent:
    return CalendarEventFactory(tenant=other_tenant, description="theirs")


def test_owner_creates_edits_and_deletes_an_event(owner: APIClient) -> None:
    created = owner.post(LIST, EVENT, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert {k: body[k] for k in EVENT} == EVENT
    assert body["created_by"] == "key:test"
    path = f"{LIST}/{body['id']}"
    patched = owner.patch(path, {"end": "2026-12-02T04:00:00Z", "suppress": False}, format="json").json()
    assert (patched["end"], patched["suppress"], patched["node"]) == ("2026-12-02T04:00:00Z", False, "db-1")
    replaced = owner.put(path, {**EVENT, "kind": "holiday", "cluster": "", "node": ""}, format="json").json()
    assert (replaced["kind"], replaced["cluster"], replaced["node"], replaced["description"]) == (
        "holiday",
        "",
        "",
        "Database upgrade",
    )
    assert owner.get(path).json() == replaced
    assert owner.delete(path).status_code == 204
    assert not CalendarEvent.objects.exists()


def test_defaults_cover_everything_and_suppress(owner: APIClient, tenant: Tenant) -> None:
    body = owner.post(LIST, {"kind": "holiday", "start": EVENT["start"], "end": EVENT["end"]}, format="json").json()
    assert (body["cluster"], body["node"], body["suppress"], body["description"]) == ("", "", True, "")
    assert CalendarEvent.objects.get().tenant == tenant


def test_an_edit_that_changes_nothing_writes_nothing(owner: APIClient, event: CalendarEvent) -> None:
    before = event.updated_at
    response = owner.patch(f"{LIST}/{event.pk}", {"description": event.description}, format="json")
    assert response.status_code == 200
    event.refresh_from_db()
    assert event.updated_at == before


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"end": "2026-12-01T22:00:00Z"}, [("end", "before_start")]),
        ({"end": "2026-12-01T21:00:00Z"}, [("end", "before_start")]),
        ({"cluster": ""}, [("node", "requires_cluster")]),
        ({"cluster": "", "end": "2026-12-01T20:00:00Z"}, [("end", "before_start"), ("node", "requires_cluster")]),
        ({"kind": "party"}, [("kind", "invalid_choice")]),
        ({"start": "tomorrow"}, [("start", "invalid")]),
        ({"start": None}, [("start", "null")]),
        ({"node": "n" * 201}, [("node", "max_length")]),
    ],
)
def test_a_bad_event_is_400_and_nothing_is_written(
    owner: APIClient, change: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = owner.post(LIST, {**EVENT, **change}, format="json")
    assert error(response) == (400, "invalid")
    assert details(response) == expected
    assert not CalendarEvent.objects.exists()


def test_a_missing_field_is_400(owner: APIClient) -> None:
    response = owner.post(LIST, {"kind": "holiday", "start": EVENT["start"]}, format="json")
    assert details(response) == [("end", "required")]


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [
        ("patch", {"end": iso(T0 - timedelta(hours=1))}, [("end", "before_start")]),
        ("patch", {"node": "db-1", "cluster": ""}, [("node", "requires_cluster")]),
        ("patch", {"cluster": ""}, None),  # fine: every cluster
        ("put", {**EVENT, "start": EVENT["end"]}, [("end", "before_start")]),
    ],
)
def test_an_edit_is_checked_as_a_whole(
    owner: APIClient, event: CalendarEvent, method: str, body: dict[str, Any], expected: Any
) -> None:
    response = getattr(owner, method)(f"{LIST}/{event.pk}", body, format="json")
    if expected is None:
        assert response.status_code == 200
        return
    assert error(response) == (400, "invalid")
    assert details(response) == expected
    saved = CalendarEvent.objects.get(pk=event.pk)
    assert (saved.start, saved.end, saved.cluster, saved.node) == (event.start, event.end, "eu-west", "")


def test_the_list_is_latest_start_first_and_filtered(owner: APIClient, tenant: Tenant) -> None:
    early = CalendarEventFactory(tenant=tenant, start=T0, end=T0 + timedelta(hours=2))
    late = CalendarEventFactory(
        tenant=tenant, kind="holiday", start=T0 + timedelta(days=1), end=T0 + timedelta(days=2), cluster=""
    )
    assert ids(owner.get(LIST)) == [late.pk, early.pk]
    assert ids(owner.get(LIST, {"kind": "holiday"})) == [late.pk]
    assert ids(owner.get(LIST, {"cluster": "eu-west"})) == [early.pk]
    # Overlapping [from, to): an event ending at `from` is over; one starting at `to` has not begun.
    assert ids(owner.get(LIST, {"from": iso(T0 + timedelta(hours=1))})) == [late.pk, early.pk]
    assert ids(owner.get(LIST, {"from": iso(T0 + timedelta(hours=2))})) == [late.pk]
    assert ids(owner.get(LIST, {"to": iso(T0 + timedelta(days=1))})) == [early.pk]
    assert (
        ids(owner.get(LIST, {"from": str((T0 + timedelta(hours=3)).timestamp()), "to": iso(T0 + timedelta(hours=4))}))
        == []
    )
    assert error(owner.get(LIST, {"from": "yesterday"})) == (400, "invalid")
    assert error(owner.get(LIST, {"kind": "party"})) == (400, "invalid")


@pytest.mark.parametrize(
    ("method", "body"), [("get", None), ("put", EVENT), ("patch", {"suppress": False}), ("delete", None)]
)
def test_another_tenants_event_is_404_and_unchanged(
    owner: APIClient, theirs: CalendarEvent, method: str, body: Any
) -> None:
    response = getattr(owner, method)(f"{LIST}/{theirs.pk}", body, format="json")
    assert error(response) == (404, "not_found")
    saved = CalendarEvent.objects.get(pk=theirs.pk)
    assert (saved.description, saved.suppress, saved.updated_at) == ("theirs", True, theirs.updated_at)
    assert ids(owner.get(LIST)) == []


def test_a_read_only_key_reads_events_but_cannot_write(
    make_client: Callable[..., APIClient], tenant: Tenant, event: CalendarEvent
) -> None:
    reader = make_client(tenant, scopes=("read",))
    path = f"{LIST}/{event.pk}"
    assert ids(reader.get(LIST)) == [event.pk]
    assert reader.get(path).status_code == 200
    for method, url, body in [("post", LIST, EVENT), ("put", path, EVENT), ("patch", path, {"suppress": False})]:
        assert error(getattr(reader, method)(url, body, format="json")) == (403, "missing_scope"), method
    assert error(reader.delete(path)) == (403, "missing_scope")
    assert CalendarEvent.objects.count() == 1
    event.refresh_from_db()
    assert event.suppress is True


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", LIST),
        ("post", LIST),
        ("get", f"{LIST}/1"),
        ("put", f"{LIST}/1"),
        ("patch", f"{LIST}/1"),
        ("delete", f"{LIST}/1"),
    ],
)
def test_anonymous_is_401(anonymous: APIClient, method: str, path: str) -> None:
    assert error(getattr(anonymous, method)(path, {}, format="json"))[0] == 401


def test_a_new_event_makes_the_same_training_request_train_anew(
    owner: APIClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mlops.training.version_train_publish", lambda version: None)
    series = MetricSeriesFactory(tenant=tenant, cluster="eu-west", node="db-1")
    end = (timezone.now() - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    train = {
        "scope_kind": "series",
        "series": series.pk,
        "train_from": iso(end - timedelta(days=7)),
        "train_to": iso(end),
    }
    assert owner.post("/api/v1/model-versions/train", train, format="json").status_code == 202
    assert owner.post("/api/v1/model-versions/train", train, format="json").status_code == 200
    event = {**EVENT, "start": iso(end - timedelta(days=2)), "end": iso(end - timedelta(days=1))}
    assert owner.post(LIST, event, format="json").status_code == 201
    assert owner.post("/api/v1/model-versions/train", train, format="json").status_code == 202
