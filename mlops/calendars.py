"""Tenant calendars: the known events (maintenance, holidays, incidents) that training leaves out
and that, while they `suppress`, hold back detection (mlops.models.CalendarEvent). The writes the
API and the admin share are at the end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from config.errors import Rejected
from mlops.models import CalendarEvent
from tenants.models import Tenant


@dataclass(frozen=True)
class Calendar:
    """A tenant's events over a time range, read once: (cluster, node, start, end), Unix seconds."""

    events: list[tuple[str, str, float, float]]

    def covering(self, cluster: str, node: str) -> list[tuple[float, float]]:
        """[start, end) of the events that cover (cluster, node): the whole tenant's, the cluster's,
        the node's. A node-level scope (node "") is covered by its cluster's and the tenant's."""
        return [(s, e) for c, n, s, e in self.events if c == "" or (c == cluster and n in ("", node))]


def tenant_calendar(*, tenant_id: int, start: datetime, end: datetime, suppressing: bool = False) -> Calendar:
    """The tenant's events overlapping [start, end]; only those that suppress detection when
    `suppressing`. One query; detection reads it once per message, not once per series."""
    events = CalendarEvent.objects.filter(tenant_id=tenant_id, start__lte=end, end__gt=start)
    if suppressing:
        events = events.filter(suppress=True)
    rows = events.values_list("cluster", "node", "start", "end")
    return Calendar(events=[(c, n, s.timestamp(), e.timestamp()) for c, n, s, e in rows])


def calendar_events(
    *, tenant_id: int, cluster: str, node: str, start: datetime, end: datetime, suppressing: bool = False
) -> list[tuple[float, float]]:
    """[start, end) in Unix seconds of the tenant's events that cover (cluster, node) and overlap
    [start, end] (see `Calendar.covering`); only those that suppress detection when `suppressing`."""
    calendar = tenant_calendar(tenant_id=tenant_id, start=start, end=end, suppressing=suppressing)
    return calendar.covering(cluster, node)


def calendar_mask(timestamps: np.ndarray, events: list[tuple[float, float]]) -> np.ndarray:
    """Which of `timestamps` (Unix seconds) fall inside one of `events`."""
    ts = np.asarray(timestamps, dtype=np.float64)
    inside = np.zeros(len(ts), dtype=bool)
    for start, end in events:
        inside |= (ts >= start) & (ts < end)
    return inside


# --- Writes (the API and the admin) -------------------------------------------------------------

CALENDAR_EVENT_FIELDS = ("kind", "description", "start", "end", "cluster", "node", "suppress")


def calendar_event_problems(
    *, kind: str, start: datetime | None, end: datetime | None, cluster: str, node: str
) -> list[dict[str, Any]]:
    """What is wrong with an event, as error details ({"field", "code", "message"}); empty when
    nothing is. The one check the API and the admin form both use."""
    problems: list[dict[str, Any]] = []
    if kind not in CalendarEvent.Kind.values:
        allowed = ", ".join(CalendarEvent.Kind.values)
        problems.append({"field": "kind", "code": "invalid_choice", "message": f"Expected one of: {allowed}."})
    if start is not None and end is not None and end <= start:
        problems.append({"field": "end", "code": "before_start", "message": "end must be after start."})
    if node and not cluster:
        # Node names are only unique within a cluster: "web-1 of every cluster" is not a scope.
        problems.append({"field": "node", "code": "requires_cluster", "message": "A node needs its cluster."})
    return problems


def calendar_event_save(
    *, tenant: Tenant, event: CalendarEvent | None = None, created_by: str = "", **values: Any
) -> CalendarEvent:
    """Create (`event` None, recording `created_by`) or edit a calendar event of `tenant` with
    `values` (fields of CALENDAR_EVENT_FIELDS; an edit changes only those given).

    Refuses (Rejected 400 `invalid`, with every problem in the details) an event that ends before
    it starts, names a node without its cluster, or has an unknown kind; nothing is written then.
    An edit that changes nothing writes nothing. Training keys hash the events in their window
    (mlops.training), so a new or changed event makes the next training of the scopes it covers
    a new version; the detection it suppresses follows on its next run.
    """
    unknown = set(values) - set(CALENDAR_EVENT_FIELDS)
    if unknown:
        raise TypeError(f"not calendar event fields: {sorted(unknown)}")
    if event is not None and all(getattr(event, name) == value for name, value in values.items()):
        return event
    event = event or CalendarEvent(tenant=tenant, created_by=created_by)
    merged = {name: values.get(name, getattr(event, name)) for name in CALENDAR_EVENT_FIELDS}
    problems = calendar_event_problems(
        kind=merged["kind"], start=merged["start"], end=merged["end"], cluster=merged["cluster"], node=merged["node"]
    )
    if problems:
        raise Rejected("invalid", "The calendar event is invalid; see details.", problems)
    for name, value in values.items():
        setattr(event, name, value)
    event.save()
    return event
