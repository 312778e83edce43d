"""Daily range partitions of the raw point table (PostgreSQL only).

Partitions are named analytics_point_pYYYYMMDD and cover [day 00:00 UTC, next day 00:00 UTC).
They are created ahead of time by a periodic task and, as a safety net, by ingest for
any day a batch touches, and dropped by retention (analytics/retention.py). Creating or
dropping a partition locks the parent table, so it runs in its own short transaction, never
inside an ingest transaction.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection, transaction

PARENT = "analytics_point"
_LOCK_KEY = 0x5649_4731  # pg_advisory_xact_lock key for partition DDL ("VIG1")

_NAME = re.compile(rf"{PARENT}_p(\d{{8}})")

# Days known to have a partition, per process, with when that was learned (time.monotonic()):
# saves a catalog query per ingest request. Trusted for KNOWN_FOR seconds only, because
# retention may drop a day in another process: should a tenant write there again (its raw
# retention was raised, or it is new with a longer one), ingest re-creates the partition
# within that delay instead of failing on the missing one for the life of the process.
KNOWN_FOR = 600.0
_known_days: dict[date, float] = {}


def partition_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def days_between(start: float, end: float) -> list[date]:
    """Every UTC day touched by the unix-seconds interval [start, end]."""
    first = datetime.fromtimestamp(start, tz=UTC).date()
    last = datetime.fromtimestamp(end, tz=UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def partitions_ensure(days: Iterable[date]) -> list[str]:
    """Create the missing daily partitions for `days`; returns the names created.

    Idempotent and safe to run concurrently: an advisory lock serialises the DDL and
    `IF NOT EXISTS` makes a repeat a no-op.
    """
    if connection.vendor != "postgresql":
        return []
    learned = time.monotonic()
    missing = sorted(day for day in set(days) if _known_days.get(day, -math.inf) < learned - KNOWN_FOR)
    if not missing:
        return []
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '10s'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        existing = set(_existing(cursor).values())
        for day in missing:
            name = partition_name(day)
            if name not in existing:
                upper = day + timedelta(days=1)
                cursor.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {PARENT} "
                    f"FOR VALUES FROM ('{day.isoformat()} 00:00+00') TO ('{upper.isoformat()} 00:00+00')"
                )
                created.append(name)
        # Only once committed: inside a rolled-back outer transaction the DDL is gone too.
        transaction.on_commit(lambda: _known_days.update(dict.fromkeys(missing, learned)))
    return created


def partitions_existing() -> dict[date, str]:
    """Every daily partition of the point table, by day ({} on other databases)."""
    if connection.vendor != "postgresql":
        return {}
    with connection.cursor() as cursor:
        return _existing(cursor)


def partitions_drop(days: Iterable[date], *, still_droppable: Callable[[list[date]], Collection[date]]) -> list[str]:
    """Drop the daily partitions of `days` that `still_droppable` confirms under the lock;
    returns the names dropped. Call it outside any transaction.

    Takes the DDL advisory lock, then ACCESS EXCLUSIVE on the parent table alone (ONLY: not
    one lock per partition): this waits for in-flight writes to the point table to commit
    and holds new writes and reads until the transaction ends. `still_droppable` gets the
    days of `days` that exist and runs under that lock, so it sees every batch committed
    before and none can commit while it decides; it must be quick, since ingest and reads
    wait for it (dropping is cheap: no rows are deleted one by one). Raises OperationalError
    if the lock is not granted within 5 s (a long query on the table; the next run retries):
    while queued for it, every new query on the table waits too. Idempotent.
    """
    if connection.vendor != "postgresql":
        return []
    wanted = set(days)
    if not wanted:
        return []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        cursor.execute(f"LOCK TABLE ONLY {PARENT} IN ACCESS EXCLUSIVE MODE")
        existing = _existing(cursor)
        candidates = sorted(wanted & existing.keys())
        confirmed = set(still_droppable(candidates)) if candidates else set()
        dropped = [day for day in candidates if day in confirmed]
        for day in dropped:
            cursor.execute(f"DROP TABLE {existing[day]}")
        # This process forgets them once committed; the others within KNOWN_FOR seconds.
        transaction.on_commit(lambda: forget_known(dropped))
    return [existing[day] for day in dropped]


def forget_known(days: Iterable[date] | None = None) -> None:
    """Drop `days` (default: all) from the per-process cache (after partitions were dropped,
    and in tests)."""
    if days is None:
        _known_days.clear()
    for day in days or ():
        _known_days.pop(day, None)


def _existing(cursor: Any) -> dict[date, str]:
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [PARENT],
    )
    found = {}
    for (name,) in cursor.fetchall():
        match = _NAME.fullmatch(name)
        if match:
            found[datetime.strptime(match[1], "%Y%m%d").date()] = name
    return found
