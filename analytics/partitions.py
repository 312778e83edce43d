"""Daily range partitions of the raw point table (PostgreSQL only).

Partitions are named analytics_point_pYYYYMMDD and cover [day 00:00 UTC, next day 00:00 UTC).
They are created ahead of time by a periodic task and, as a safety net, by ingest for
any day a batch touches. Creating a partition locks the parent table, so it runs in its
own short transaction, never inside an ingest transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction

PARENT = "analytics_point"
_LOCK_KEY = 0x5649_4731  # pg_advisory_xact_lock key for partition DDL ("VIG1")

# Days known to have a partition, per process; saves a catalog query per ingest request.
_known_days: set[date] = set()


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
    missing = sorted(set(days) - _known_days)
    if not missing:
        return []
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '10s'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        existing = {row[0] for row in cursor.fetchall()}
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
        transaction.on_commit(lambda: _known_days.update(missing))
    return created


def forget_known() -> None:
    """Drop the per-process cache (after partitions were dropped, and in tests)."""
    _known_days.clear()
