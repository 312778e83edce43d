"""Tenant calendars: the known events (maintenance, holidays, incidents) that training leaves out
and that, while they `suppress`, hold back detection (mlops.models.CalendarEvent)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from django.db.models import Q

from mlops.models import CalendarEvent


def calendar_events(
    *, tenant_id: int, cluster: str, node: str, start: datetime, end: datetime, suppressing: bool = False
) -> list[tuple[float, float]]:
    """[start, end) in Unix seconds of the tenant's events that cover (cluster, node) and overlap
    [start, end]; only those that suppress detection when `suppressing`. A node-level scope
    (node "") is covered by events of its cluster or of the whole tenant."""
    events = CalendarEvent.objects.filter(tenant_id=tenant_id, start__lte=end, end__gt=start)
    events = events.filter(Q(cluster="") | Q(cluster=cluster, node="") | Q(cluster=cluster, node=node))
    if suppressing:
        events = events.filter(suppress=True)
    return [(s.timestamp(), e.timestamp()) for s, e in events.values_list("start", "end")]


def calendar_mask(timestamps: np.ndarray, events: list[tuple[float, float]]) -> np.ndarray:
    """Which of `timestamps` (Unix seconds) fall inside one of `events`."""
    ts = np.asarray(timestamps, dtype=np.float64)
    inside = np.zeros(len(ts), dtype=bool)
    for start, end in events:
        inside |= (ts >= start) & (ts < end)
    return inside
