"""`make bench`: raw points rolled up per second by the rollup pipeline, against one plain SQL GROUP BY.

Everything runs on 127.0.0.1:

1. Drops and re-creates the database `vigil_bench_rollup`, migrates it, creates a tenant, a read
   key, `--series` series (10,000) and the day partitions, then loads `--points-per-series`
   points per series (1,000: 10 million in all) with binary COPY straight into the point
   table, from two connections. One point every `--interval` seconds (600) per series, each
   series at its own offset within the interval, the newest ten minutes old: with the
   defaults the points span the last 6.95 days (the raw retention is 7). Values are a daily
   sine plus noise (numpy). At that spacing every 1m and 5m bucket holds one point, an hour
   bucket six: 2.17 rollup rows per raw point. Then VACUUM ANALYZE, as autovacuum would have
   done by the time a refresh reads older points.
2. The baseline (before the pipeline, so that autovacuum of the pipeline's fresh rollup rows
   does not run beside it): per resolution (1m, 5m, 1h) one plain SQL statement, `CREATE UNLOGGED TABLE
   ... AS SELECT ... FROM analytics_point GROUP BY series_id, date_bin(...)`, computing the
   statistics a rollup holds (count, sum, min, max, mean, sample stddev, exact p50/p90/p95/p99,
   first, last) over every point. An unlogged table, so the baseline pays for writing its
   rows but not for WAL nor an index. sql_pps = points / the three statements' total seconds.
3. The pipeline: `analytics.rollups.rollups_refresh` (what the rollup tasks run) over every
   series, in shards of `SHARD_SIZE` series (what the catch-up task enqueues), each over
   [its first point, its last point], pulled from a queue by `--workers` forked processes
   (like a prefork Celery worker's children), each with its own connection. Timed from the
   moment all are ready until the last shard committed; rollup_pps = points / seconds.
   Then the rollup rows per resolution are checked against the count expected from the
   timestamps and the baseline's, and the hour buckets value by value against the baseline's.
4. Query latency: VACUUM ANALYZE of the rollups (autovacuum's job, not timed), gunicorn on
   `config.wsgi` (config/gunicorn.py plus bench overrides), and `--queries` sequential calls,
   after `--warmup` calls, over one keep-alive connection, each for another random series:
   GET /api/v1/series/{id}/data?from=<now - 7 d>&to=<now>&step=5m&agg=p99. While that route
   does not exist (a 404 for a series /points serves), GET /api/v1/series/{id}/points over
   the same range (limit 10000) is measured instead, and the output says so.

Both sides run with the server's settings (work_mem, parallel workers, JIT...), printed; the
pipeline's connections report theirs and the run stops if they differ. Each timed part also
prints the CPU its PostgreSQL backends used and how busy the machine was, including CPU taken
by processes outside the benchmark (another test run on the same cores), with a warning
before the result when that was more than 5% of the machine.

The last line is machine-readable:
`RESULT rollup_pps=<n> sql_pps=<n> ratio=<sql/rollup> query_p50_ms=<n> query_p99_ms=<n>`,
ratio being how many times faster the plain GROUP BY is (target: at most 2).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

# bench/ is on the path when run as a script: the set-up and server helpers are shared.
from common import HOST, _interrupted, _timed_out, database_reset, free_port
from ingest import METRICS, configure_environment, pg, server_start, server_stop

ROOT = Path(__file__).resolve().parent.parent
RESOLUTIONS = (60, 300, 3600)  # analytics.models.Rollup.Resolution, seconds
RAW_RETENTION = 7 * 86400  # the tenant default, tenants.models.Tenant.retention_raw_days
NEWEST_AGE = 600  # the newest point is this many seconds old
LOADERS = 2  # COPY connections for the set-up
LOAD_CHUNK = 500  # series per COPY (500,000 rows, 19 MB with the defaults)
SQL_TABLE = "bench_sql_rollup_{resolution}"
PG_EPOCH = 946_684_800  # 2000-01-01 UTC, the origin of binary COPY timestamps
SETTINGS = (
    "work_mem",
    "max_parallel_workers_per_gather",
    "max_parallel_workers",
    "shared_buffers",
    "jit",
    "synchronous_commit",
    "max_wal_size",
)
# One binary COPY row of (series_id bigint, ts timestamptz, value float8): a field count,
# then length-prefixed fields, big-endian (38 bytes, numpy packs structured dtypes).
COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("sid_len", ">i4"),
        ("sid", ">i8"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"

# The plain SQL a user would write for one resolution's statistics; the outer SELECT only
# unpacks the percentile and value arrays into the columns a rollup row has.
SQL_BASELINE = """
CREATE UNLOGGED TABLE {table} WITH (autovacuum_enabled = false) AS
SELECT series_id, bucket, n, s, lo, hi, mean, sd, q[1] AS p50, q[2] AS p90, q[3] AS p95, q[4] AS p99,
       v[1] AS first, v[array_upper(v, 1)] AS last
FROM (
    SELECT series_id,
           date_bin('{resolution} seconds', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           count(*) AS n, sum(value) AS s, min(value) AS lo, max(value) AS hi, avg(value) AS mean,
           stddev_samp(value) AS sd,
           percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY value) AS q,
           array_agg(value ORDER BY ts) AS v
    FROM analytics_point
    GROUP BY 1, 2
) AS buckets
"""

# The hour buckets of both sides, value by value. Everything but the sums is computed the
# same way on both sides, so must be equal; the pipeline sums in time order, the baseline in
# whatever order the plan reads, so sum, mean and stddev may differ in the last bits.
SQL_COMPARE = """
SELECT count(*),
       count(*) FILTER (WHERE r."count" <> b.n OR r."min" <> b.lo OR r."max" <> b.hi OR r.p50 <> b.p50
                        OR r.p90 <> b.p90 OR r.p95 <> b.p95 OR r.p99 <> b.p99
                        OR r."first" <> b.first OR r."last" <> b.last
                        OR (r.stddev IS NULL) <> (b.sd IS NULL)),
       coalesce(max(greatest(abs(r."sum" - b.s) / nullif(abs(b.s), 0), abs(r.mean - b.mean) / nullif(abs(b.mean), 0),
                             abs(r.stddev - b.sd) / nullif(b.sd, 0))), 0)
FROM analytics_rollup r JOIN {table} b ON r.series_id = b.series_id AND r.bucket = b.bucket
WHERE r.resolution = 3600
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000, help="distinct series (default 10000)")
    parser.add_argument("--points-per-series", type=int, default=1_000, help="points per series (default 1000)")
    parser.add_argument("--interval", type=int, default=600, help="seconds between a series' points (default 600)")
    parser.add_argument("--workers", type=int, default=2, help="pipeline processes (default 2, one per core)")
    parser.add_argument("--queries", type=int, default=200, help="timed query API calls (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="query API calls before timing (default 10)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--web-threads", type=int, default=2, help="threads per gunicorn worker (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for values and offsets (default 1)")
    parser.add_argument("--time-limit", type=int, default=3600, help="abort after this many seconds (default 3600)")
    parser.add_argument("--database", default="vigil_bench_rollup", help="dropped and re-created (default %(default)s)")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database for the Celery broker (default 15)")
    args = parser.parse_args()
    counts = (args.series, args.points_per_series, args.interval, args.workers, args.queries, args.web_workers)
    if min(*counts, args.web_threads) < 1 or args.warmup < 0:
        parser.error("every count must be at least 1 (--warmup at least 0)")
    if 1 + args.warmup + args.queries > args.series:
        parser.error("1 + --warmup + --queries must not exceed --series (each call reads another series)")
    return args


# --- data ------------------------------------------------------------------------------------


class Layout:
    """Series number s (0-based) has points at base + offset[s] + k * interval, k < per_series,
    with value level[s] + amplitude[s] * sin(2 pi t / 1 day + phase[s]) + N(0, noise[s])."""

    def __init__(self, series: int, per_series: int, interval: int, seed: int, now: float) -> None:
        self.series, self.per_series, self.interval, self.seed = series, per_series, interval, seed
        span = per_series * interval
        if span + NEWEST_AGE > RAW_RETENTION:
            raise SystemExit(
                f"{per_series:,} points every {interval} s span more than the 7-day raw retention; "
                "lower --points-per-series or --interval"
            )
        self.base = (int(now) - NEWEST_AGE - span) // interval * interval
        rng = np.random.default_rng(seed)
        self.offsets = rng.integers(0, interval, series)
        self.level = rng.uniform(10.0, 90.0, series)
        self.amplitude = rng.uniform(1.0, 20.0, series)
        self.phase = rng.uniform(0.0, 2 * math.pi, series)
        self.noise = rng.uniform(0.1, 3.0, series)

    @property
    def total(self) -> int:
        return self.series * self.per_series

    def first_ts(self, s: int) -> int:
        return int(self.base + self.offsets[s])

    def last_ts(self, s: int) -> int:
        return self.first_ts(s) + (self.per_series - 1) * self.interval

    def days(self) -> list[date]:
        first = datetime.fromtimestamp(self.base, tz=UTC).date()
        last = datetime.fromtimestamp(self.base + self.per_series * self.interval, tz=UTC).date()
        return [first + timedelta(n) for n in range((last - first).days + 1)]

    def timestamps(self, lo: int, hi: int) -> np.ndarray:
        """Unix seconds of series lo..hi-1, one row per series, oldest first."""
        return self.base + self.offsets[lo:hi, None] + np.arange(self.per_series, dtype=np.int64) * self.interval

    def values(self, lo: int, hi: int, ts: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, lo])  # per chunk, so loaders need not share a stream
        daily = np.sin(2 * math.pi * (ts % 86400) / 86400 + self.phase[lo:hi, None])
        noise = rng.standard_normal(ts.shape) * self.noise[lo:hi, None]
        return self.level[lo:hi, None] + self.amplitude[lo:hi, None] * daily + noise

    def copy_buffer(self, lo: int, hi: int, ids: np.ndarray) -> bytes:
        """Series lo..hi-1 as one binary COPY, in (series_id, ts) order: the primary key's."""
        ts = self.timestamps(lo, hi)
        rows = np.empty(ts.size, dtype=COPY_ROW)
        rows["fields"] = 3
        rows["sid_len"] = rows["ts_len"] = rows["value_len"] = 8
        rows["sid"] = np.repeat(ids[lo:hi], self.per_series)
        rows["ts"] = ((ts - PG_EPOCH) * 1_000_000).ravel()
        rows["value"] = self.values(lo, hi, ts).ravel()
        return COPY_HEADER + rows.tobytes() + COPY_TRAILER

    def expected_buckets(self, resolution: int) -> int:
        """Distinct (series, epoch-aligned bucket) pairs: the rollup rows of one resolution."""
        total = 0
        for lo in range(0, self.series, 1_000):
            buckets = self.timestamps(lo, min(lo + 1_000, self.series)) // resolution
            total += buckets.shape[0] + int(np.count_nonzero(np.diff(buckets, axis=1)))
        return total


def _address(s: int) -> dict[str, Any]:
    node = s // len(METRICS)
    return {
        "cluster": f"cluster-{node % 4}",
        "node": f"node-{node:05d}",
        "metric": METRICS[s % len(METRICS)],
        "labels": {"env": "prod", "region": ("eu-west", "us-east")[node % 2]},
    }


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# --- set-up ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    key: str
    series_ids: np.ndarray  # the id of series number s, in order
    shard_size: int
    chunk_series: int


def django_prepare(args: argparse.Namespace, layout: Layout) -> Prepared:
    """Migrate; create the tenant, its read key, the series and the partitions."""
    sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from analytics import partitions, rollups
    from analytics.models import MetricSeries, series_identity
    from tenants.models import Tenant
    from tenants.services import api_key_create

    call_command("migrate", verbosity=0, interactive=False)
    tenant = Tenant.objects.create(slug="bench", name="Rollup benchmark", max_series=args.series)
    key = api_key_create(tenant=tenant, name="bench", scopes=["read"]).raw_key
    series = []
    for s in range(args.series):
        address = _address(s)
        series.append(
            MetricSeries(
                tenant=tenant,
                **address,
                unit="percent",
                identity=series_identity(address["cluster"], address["node"], address["metric"], address["labels"]),
                last_point_at=_utc(layout.last_ts(s)),  # as the ingest pipeline task leaves it
            )
        )
    created = MetricSeries.objects.bulk_create(series, batch_size=2_000)
    partitions.partitions_ensure(layout.days())
    connections.close_all()  # nothing Django opened may be shared with forked processes
    return Prepared(
        key=key,
        series_ids=np.array([obj.pk for obj in created], dtype=np.int64),
        shard_size=rollups.SHARD_SIZE,
        chunk_series=rollups.CHUNK_SERIES,
    )


# --- forked processes ------------------------------------------------------------------------

# Filled by the parent before it forks; the children inherit them (copy-on-write).
_LAYOUT: Layout | None = None
_IDS: np.ndarray = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Report:
    n: int
    start: float = 0.0
    end: float = 0.0
    done: int = 0  # COPYs or shards
    written: int = 0  # rollup rows inserted or changed
    settings: tuple[str, ...] = ()
    backend_cpu: float = 0.0  # CPU seconds of the process's PostgreSQL backend while timed
    own_cpu: float = 0.0  # and of the process itself
    error: str | None = None


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of any process on this machine (PostgreSQL backends included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of the whole machine so far, all cores: busy is user,
    nice, system and interrupts, i.e. everything but idle, I/O wait and steal."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    clock = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, _steal = ticks
    return (user + nice + system + irq + softirq) / clock, sum(ticks) / clock


def foreign_cpu(dsn: str) -> dict[int, float]:
    """CPU seconds so far of each process that is not this benchmark's: not this process or
    its descendants, not PostgreSQL serving this database or the server as a whole, not a
    kernel thread. Another test run or benchmark sharing the machine shows up here."""
    foreign_backends = {
        pid for (pid,) in pg_rows(dsn, "SELECT pid FROM pg_stat_activity WHERE datname <> current_database()")
    }
    processes: dict[int, tuple[str, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            fields = stat.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            processes[int(entry.name)] = (stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[1]), cpu)
    ours, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (_, ppid, _) in processes.items() if ppid == parent and pid not in ours]
        ours.update(children)
        frontier.extend(children)
    return {
        pid: cpu
        for pid, (comm, ppid, cpu) in processes.items()
        if pid not in ours and 2 not in (pid, ppid) and (comm != "postgres" or pid in foreign_backends)
    }


class CpuWatch:
    """Where the CPU went between its creation and `report()`, machine-wide."""

    # The largest share of the machine other processes took in any reported span.
    busiest_other = 0.0

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.machine = machine_cpu()
        self.foreign = foreign_cpu(dsn)

    def report(self) -> str:
        (busy, elapsed), foreign = machine_cpu(), foreign_cpu(self.dsn)
        busy, elapsed = busy - self.machine[0], elapsed - self.machine[1]
        other = sum(cpu - self.foreign.get(pid, 0.0) for pid, cpu in foreign.items())
        cores = os.cpu_count() or 1
        CpuWatch.busiest_other = max(CpuWatch.busiest_other, other / max(elapsed, 1e-9))
        return (
            f"machine {busy / max(elapsed, 1e-9) * cores:.2f} of {cores} cores busy, "
            f"of which other processes {other:.1f} CPU-s"
        )


def _loader(n: int, dsn: str, barrier: Any, results: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked with the parent's handler
    try:
        assert _LAYOUT is not None
        conn = psycopg2.connect(dsn)
        barrier.wait(timeout=120)
        start, done = time.perf_counter(), 0
        with conn.cursor() as cursor:
            for lo in range(n * LOAD_CHUNK, _LAYOUT.series, LOADERS * LOAD_CHUNK):
                buffer = _LAYOUT.copy_buffer(lo, min(lo + LOAD_CHUNK, _LAYOUT.series), _IDS)
                cursor.copy_expert("COPY analytics_point (series_id, ts, value) FROM STDIN BINARY", io.BytesIO(buffer))
                conn.commit()
                done += 1
        results.put(Report(n, start, time.perf_counter(), done))
        conn.close()
    except Exception as exc:
        barrier.abort()
        results.put(Report(n, error=repr(exc)))


def _pipeline_worker(n: int, shards: Any, barrier: Any, results: Any) -> None:
    """One rollup worker: takes shards from the queue until the sentinel, one refresh each."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    psycopg2.extensions.set_wait_callback(None)  # the pipeline talks to PostgreSQL as a worker does
    try:
        import django

        django.setup()
        from django.db import connection, connections

        from analytics.rollups import rollups_refresh

        with connection.cursor() as cursor:  # connect before the start line
            cursor.execute(f"SELECT pg_backend_pid(), {', '.join(f'current_setting({s!r})' for s in SETTINGS)}")
            backend, *settings = cursor.fetchone()
        barrier.wait(timeout=120)
        start, done, written = time.perf_counter(), 0, 0
        cpu = process_cpu_seconds(backend), time.process_time()
        while (shard := shards.get(timeout=60)) is not None:
            ids, first, last = shard
            written += rollups_refresh(series_ids=ids, start=first, end=last)
            done += 1
        end = time.perf_counter()
        backend_cpu, own_cpu = process_cpu_seconds(backend) - cpu[0], time.process_time() - cpu[1]
        results.put(Report(n, start, end, done, written, tuple(settings), backend_cpu, own_cpu))
        connections.close_all()
    except Exception as exc:
        barrier.abort()
        results.put(Report(n, error=repr(exc)))


def run_parallel(target: Callable[..., None], count: int, extra: tuple[Any, ...]) -> tuple[float, list[Report]]:
    """Fork `count` processes, release them together; returns (wall seconds, their reports).

    Waits as long as they work (the --time-limit alarm bounds it), failing as soon as one
    reports an error or dies without reporting. perf_counter is the system-wide monotonic
    clock on Linux, so the readings of different processes compare.
    """
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(n, *extra, barrier, results), daemon=True) for n in range(count)]
    for proc in procs:
        proc.start()
    try:
        reports: list[Report] = []
        while len(reports) < count:
            try:
                report = results.get(timeout=1)
            except queue.Empty:
                dead = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a process died without reporting (exit code {dead[0]})") from None
                continue
            if report.error is not None:
                raise RuntimeError(f"process {report.n} failed: {report.error}")
            reports.append(report)
    except BaseException:
        for proc in procs:  # failed or interrupted: stop the others now, not after the joins
            if proc.is_alive():
                proc.terminate()
        raise
    finally:
        for proc in procs:
            proc.join(10)  # a finished process is still flushing its queue
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return max(r.end for r in reports) - min(r.start for r in reports), reports


def pg_rows(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()
    finally:
        conn.close()


# --- the three measurements ------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    resolution: int
    seconds: float
    rows: int
    plan: str
    backend_cpu: float  # CPU seconds of the session's backend (parallel workers excluded)
    machine: str


def sql_baseline(dsn: str) -> list[Statement]:
    """One CREATE UNLOGGED TABLE AS ... GROUP BY per resolution, timed."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    timings = []
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
            for resolution in RESOLUTIONS:
                statement = SQL_BASELINE.format(table=SQL_TABLE.format(resolution=resolution), resolution=resolution)
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement)
                plan = _plan_shape(cursor.fetchone()[0][0]["Plan"])
                cpu, watch = process_cpu_seconds(backend), CpuWatch(dsn)
                start = time.perf_counter()
                cursor.execute(statement)
                seconds = time.perf_counter() - start
                timings.append(
                    Statement(
                        resolution,
                        seconds,
                        cursor.rowcount,
                        plan,
                        process_cpu_seconds(backend) - cpu,
                        watch.report(),
                    )
                )
    finally:
        conn.close()
    return timings


def _plan_shape(node: dict[str, Any]) -> str:
    """'A < B < C': each node over its first child; an Append names how many children it has."""
    parts = []
    while True:
        name = node["Node Type"]
        if node.get("Strategy") not in (None, "Plain"):
            name = f"{node['Strategy']} {name}"
        if "Workers Planned" in node:
            name += f" ({node['Workers Planned']} workers)"
        children = node.get("Plans", [])
        if len(children) > 1:
            name += f" of {len(children)}"
        parts.append(name)
        if not children:
            return " < ".join(parts)
        node = children[0]


def _get(conn: http.client.HTTPConnection, path: str, key: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    response = conn.getresponse()
    return response.status, response.read()


def query_latency(args: argparse.Namespace, key: str, series_ids: list[int], port: int) -> tuple[str, list[float], str]:
    """(endpoint measured, sorted latencies in seconds, what one answer holds)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    to = int(time.time())
    since = to - 7 * 86400
    paths = {
        "data": f"/data?from={since}&to={to}&step=5m&agg=p99",
        "points": f"/points?from={since}&to={to}&limit=10000",
    }
    probe = series_ids[0]
    status, body = _get(conn, f"/api/v1/series/{probe}{paths['data']}", key)
    if status == 200:
        endpoint = "data"
    elif status == 404 and _get(conn, f"/api/v1/series/{probe}{paths['points']}", key)[0] == 200:
        endpoint = "points"  # the series exists, so the /data route does not (yet)
    else:
        raise RuntimeError(f"GET /api/v1/series/{probe}{paths['data']}: HTTP {status}: {body[:500]!r}")
    path = paths[endpoint]
    latencies, answer = [], ""
    for i, sid in enumerate(series_ids[1:]):
        sent = time.perf_counter()
        status, body = _get(conn, f"/api/v1/series/{sid}{path}", key)
        elapsed = time.perf_counter() - sent
        if status != 200:
            raise RuntimeError(f"GET /api/v1/series/{sid}{path}: HTTP {status}: {body[:500]!r}")
        if i >= args.warmup:
            latencies.append(elapsed)
        if not answer:
            answer = _describe(json.loads(body), len(body))
    conn.close()
    return endpoint, sorted(latencies), answer


def _describe(payload: dict[str, Any], size: int) -> str:
    """What one answer holds: the length of its lists (points), its plan fields (step,
    resolution, approximate: /data only), and its size."""
    held = [f"{len(value):,} {name}" for name, value in payload.items() if isinstance(value, list)]
    held += [f"{name} {value}" for name, value in payload.items() if name in ("step", "resolution", "approximate")]
    return f"{', '.join(held)}; {size / 1000:.0f} kB of JSON"


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    try:
        return run(args)
    except BaseException:
        # Interrupted, timed out or failed: statements still running for this benchmark (a
        # GROUP BY, a killed worker's upsert) would otherwise run on to their end.
        with contextlib.suppress(Exception):
            pg_rows(
                f"host={HOST} port=5432 user=postgres dbname={args.database}",
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
        raise


def run(args: argparse.Namespace) -> int:
    global _LAYOUT, _IDS
    signal.alarm(args.time_limit)  # a hung server or database ends the run, cleanly
    t_run = time.perf_counter()
    env = configure_environment(args)
    dsn = f"host={HOST} port=5432 user=postgres dbname={args.database}"
    layout = Layout(args.series, args.points_per_series, args.interval, args.seed, time.time())
    total = layout.total

    t_setup = time.perf_counter()
    database_reset(args.database)
    prepared = django_prepare(args, layout)
    print(
        f"setup: {args.database} migrated; {args.series:,} series of one tenant, {args.points_per_series:,} points "
        f"each ({total:,} in all), one every {args.interval} s from {_utc(layout.base):%Y-%m-%d %H:%M} UTC "
        f"to {NEWEST_AGE // 60} min ago, {len(layout.days())} day partitions "
        f"({time.perf_counter() - t_setup:.1f} s)",
        flush=True,
    )

    _LAYOUT, _IDS = layout, prepared.series_ids
    load_seconds, reports = run_parallel(_loader, LOADERS, (dsn,))
    # From here on this process waits for PostgreSQL in Python (not in libpq), so a signal
    # is handled during a long statement: Ctrl-C or SIGTERM cancel it, the time limit raises.
    # (Not before: COPY is not available with a wait callback.)
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    t_vacuum = time.perf_counter()
    pg(dsn, "VACUUM ANALYZE analytics_point", "CHECKPOINT")
    stored = pg(dsn, "SELECT count(*) FROM analytics_point")[0]
    points_size = pg(
        dsn,
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('analytics_point') WHERE isleaf",
    )[0]
    print(
        f"load: {stored:,} points by {sum(r.done for r in reports)} binary COPYs of {LOAD_CHUNK} series from "
        f"{LOADERS} connections in {load_seconds:.1f} s ({total / load_seconds:,.0f} rows/s); VACUUM ANALYZE "
        f"{time.perf_counter() - t_vacuum:.1f} s; point table {points_size / 2**30:.2f} GiB with its primary key",
        flush=True,
    )
    if stored != total:
        print(f"load: expected {total:,} points", file=sys.stderr)
        return 1
    expected = {resolution: layout.expected_buckets(resolution) for resolution in RESOLUTIONS}
    settings = tuple(map(str, pg(dsn, f"SELECT {', '.join(f'current_setting({s!r})' for s in SETTINGS)}")))
    print(
        "settings (server defaults, both sides): "
        + ", ".join(f"{name}={value}" for name, value in zip(SETTINGS, settings, strict=True))
    )

    # The baseline first: the pipeline's 21 million fresh rollup rows would get autovacuum
    # to run beside it, competing for the two cores.
    baseline = sql_baseline(dsn)
    sql_seconds = sum(statement.seconds for statement in baseline)
    sql_pps = total / sql_seconds
    for statement in baseline:
        print(
            f"sql {statement.resolution:>4} s: {statement.seconds:6.1f} s, {statement.rows:,} rows; backend CPU "
            f"{statement.backend_cpu:.1f} s, {statement.machine}; plan {statement.plan}"
        )
    print(
        f"sql: one CREATE UNLOGGED TABLE AS ... GROUP BY per resolution, {sql_seconds:.1f} s in all: "
        f"{sql_pps:,.0f} raw points/s",
        flush=True,
    )
    pg(dsn, *(f"DROP TABLE {SQL_TABLE.format(resolution=r)}" for r in RESOLUTIONS[:-1]), "CHECKPOINT")

    ids = [int(sid) for sid in prepared.series_ids]
    shards: Any = mp.get_context("fork").Queue()
    n_shards = 0
    for lo in range(0, args.series, prepared.shard_size):
        hi = min(lo + prepared.shard_size, args.series)
        first = min(layout.first_ts(s) for s in range(lo, hi))
        last = max(layout.last_ts(s) for s in range(lo, hi))
        shards.put((ids[lo:hi], _utc(first), _utc(last)))
        n_shards += 1
    for _ in range(args.workers):
        shards.put(None)
    wal_before, watch = pg(dsn, "SELECT pg_current_wal_lsn()")[0], CpuWatch(dsn)
    pipeline_seconds, reports = run_parallel(_pipeline_worker, args.workers, (shards,))
    machine_used = watch.report()
    wal = pg(dsn, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal_before}')")[0]
    rollup_pps = total / pipeline_seconds
    written = sum(r.written for r in reports)
    print(
        f"pipeline: rollups_refresh over {n_shards} shards of {prepared.shard_size} series "
        f"({prepared.chunk_series} per transaction) from {args.workers} processes: {pipeline_seconds:.1f} s, "
        f"{rollup_pps:,.0f} raw points/s; {written:,} rollup rows written, {float(wal) / 2**30:.2f} GiB of WAL",
    )
    print(
        f"pipeline: CPU of the workers' backends {' + '.join(f'{r.backend_cpu:.1f}' for r in reports)} s, "
        f"of the workers {' + '.join(f'{r.own_cpu:.2f}' for r in reports)} s, "
        f"shards {' + '.join(str(r.done) for r in reports)}; {machine_used} (with autovacuum, checkpoints)",
        flush=True,
    )
    if any(report.settings != settings for report in reports):
        print(f"pipeline: the workers' settings differ: {[r.settings for r in reports]}", file=sys.stderr)
        return 1

    counts = dict.fromkeys(RESOLUTIONS, (0, 0))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute('SELECT resolution, count(*), sum("count") FROM analytics_rollup GROUP BY 1')
        counts.update({resolution: (rows, int(points)) for resolution, rows, points in cursor.fetchall()})
        cursor.execute(SQL_COMPARE.format(table=SQL_TABLE.format(resolution=3600)))
        compared, differing, max_relative = cursor.fetchone()
    conn.close()
    ok = written == sum(expected.values())
    for resolution, sql_rows in ((statement.resolution, statement.rows) for statement in baseline):
        rows, points = counts[resolution]
        good = rows == expected[resolution] == sql_rows and points == total
        ok = ok and good
        print(
            f"verify {resolution:>4} s: {rows:,} rollup rows (expected {expected[resolution]:,}, plain SQL "
            f"{sql_rows:,}) holding {points:,} points: {'OK' if good else 'MISMATCH'}"
        )
    same = compared == counts[3600][0] and differing == 0 and max_relative < 1e-9
    ok = ok and same
    print(
        f"verify 3600 s: {compared:,} hour buckets compared with plain SQL: count, min, max, p50-p99, first, last "
        f"{'identical' if differing == 0 else f'DIFFER in {differing:,}'}; sum, mean, stddev within a relative "
        f"{max_relative:.1e} (summation order): {'OK' if same else 'MISMATCH'}",
        flush=True,
    )
    pg(dsn, f"DROP TABLE {SQL_TABLE.format(resolution=3600)}")
    if not ok:
        return 1

    t_vacuum = time.perf_counter()
    pg(dsn, "VACUUM ANALYZE analytics_rollup", "CHECKPOINT")
    rollup_size = pg(dsn, "SELECT pg_total_relation_size('analytics_rollup')")[0]
    print(
        f"rollups: table {rollup_size / 2**30:.2f} GiB with its indexes; VACUUM ANALYZE before the queries "
        f"{time.perf_counter() - t_vacuum:.1f} s",
        flush=True,
    )

    rng = np.random.default_rng(args.seed)
    sample = [int(sid) for sid in rng.choice(prepared.series_ids, size=1 + args.warmup + args.queries, replace=False)]
    server = None
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        log = Path(tmp) / "gunicorn.log"
        try:
            port = free_port()
            web = argparse.Namespace(worker_class="gthread", workers=args.web_workers, threads=args.web_threads)
            server = server_start(web, env, port, log)
            watch = CpuWatch(dsn)
            endpoint, latencies, answer = query_latency(args, prepared.key, sample, port)
            machine_used = watch.report()
        except BaseException:
            if log.exists() and log.stat().st_size:
                print(f"gunicorn log (tail):\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            server_stop(server)
    p50, p99 = _percentile(latencies, 0.50) * 1000, _percentile(latencies, 0.99) * 1000
    if endpoint == "data":
        what = "GET /api/v1/series/{id}/data?from=<now - 7 d>&to=<now>&step=5m&agg=p99"
    else:
        print(
            "query: NOTE GET /api/v1/series/{id}/data is not served (404 for a series /points serves); "
            "measured the raw-points fallback GET /api/v1/series/{id}/points?from=<now - 7 d>&to=<now>&limit=10000 "
            "instead. Re-run once /data lands."
        )
        what = "GET /api/v1/series/{id}/points?from=<now - 7 d>&to=<now>&limit=10000 (FALLBACK, not /data)"
    print(
        f"query: {what}, gunicorn gthread {args.web_workers} x {args.web_threads} threads, {len(latencies)} random "
        f"series sequentially after {args.warmup} warm-up calls: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; an answer holds {answer}; {machine_used}"
    )
    print(f"total: {time.perf_counter() - t_run:.0f} s")
    if CpuWatch.busiest_other > 0.05:
        print(
            f"WARNING: other processes took up to {CpuWatch.busiest_other:.0%} of the machine during a timed part: "
            "these figures are not from a quiet machine"
        )
    print(
        f"RESULT rollup_pps={rollup_pps:.0f} sql_pps={sql_pps:.0f} ratio={sql_pps / rollup_pps:.2f} "
        f"query_p50_ms={p50:.1f} query_p99_ms={p99:.1f}"
    )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGALRM, _timed_out)
    try:
        sys.exit(main())
    except (KeyboardInterrupt, psycopg2.errors.QueryCanceled):  # wait_select cancels on KeyboardInterrupt
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
