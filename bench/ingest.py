"""`make bench`: points per second through the HTTP ingest API into PostgreSQL, against raw COPY.

Everything runs on 127.0.0.1:

1. Drops and re-creates the database `vigil_bench`, migrates it, creates a tenant and an
   ingest key, and creates the day partitions the points fall into (in production the
   periodic `retention_enforce` task creates them ahead of time).
2. Builds every request body before timing, so client-side JSON encoding is not measured:
   batches of `--batch-size` points spread round-robin over `--series` series, each series
   getting a new timestamp every 10 s, so no point overwrites another.
3. Starts gunicorn on `config.wsgi`, sends one batch that creates every series and one
   warm-up batch per client, so the timed part is steady-state ingest into known series.
4. Times `--clients` processes, each posting its batches over one keep-alive connection,
   from the moment all are ready until the last response (a 200 means committed), then
   checks with count(*) and sum(value) that every point landed.
5. Loads the same rows, in the same batches, with the same concurrency and one transaction
   per batch, with psycopg2 `copy_expert` from pre-built buffers into a table of the same
   shape (partitioned by day, PRIMARY KEY (series_id, ts), the same partitions), in two
   formats: text in request order (a plain loader) and binary in key order (what the
   ingest service sends). The faster is the raw COPY rate the ingest rate is compared with.

The last line is machine-readable: `RESULT ingest_pps=<n> copy_pps=<n> ratio=<r>`.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from common import HOST, cpu_seconds, database_reset, free_port, run_main

ROOT = Path(__file__).resolve().parent.parent
COPY_TABLE = "bench_copy_point"
INGEST_PATH = "/api/v1/points"
STEP_SECONDS = 10  # a typical scrape interval
METRICS = ("cpu.usage", "mem.used", "disk.io.read", "disk.io.write", "net.rx", "net.tx", "http.latency.p99", "http.rps")

# Filled by the parent before it forks the client and loader processes, which inherit them
# (copy-on-write) instead of receiving megabytes through a pipe.
_BODIES: list[list[bytes]] = []
_WARMUP: list[bytes] = []
_BUFFERS: list[list[bytes]] = []


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults for a 2-core machine: two workers keep both cores busy in Python, two threads
    # each let one request run while another waits on PostgreSQL. Keep-alive pins each
    # connection to the worker that accepted it, at random: with eight clients both workers
    # nearly always hold enough connections to stay busy (with four, one often got three).
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes (default 8)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per client (default 8)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="points per batch (default 10000)")
    parser.add_argument("--series", type=int, default=1_000, help="distinct series (default 1000)")
    parser.add_argument("--worker-class", choices=["gthread", "sync"], default="gthread", help="(default gthread)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="threads per gthread worker (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="timed ingest runs, best kept (default 2)")
    parser.add_argument("--copy-rounds", type=int, default=2, help="COPY runs per format, best kept (default 2)")
    parser.add_argument("--time-limit", type=int, default=600, help="abort after this many seconds (default 600)")
    parser.add_argument("--database", default="vigil_bench", help="dropped and re-created (default vigil_bench)")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database for the Celery broker (default 15)")
    args = parser.parse_args()
    if (
        min(
            args.clients,
            args.batches,
            args.batch_size,
            args.series,
            args.workers,
            args.threads,
            args.rounds,
            args.copy_rounds,
        )
        < 1
    ):
        parser.error("every count must be at least 1")
    return args


# --- set-up ----------------------------------------------------------------------------------


def configure_environment(args: argparse.Namespace) -> dict[str, str]:
    """Environment for this process (Django set-up) and for gunicorn.

    Local settings rather than production ones, which redirect to HTTPS and want real
    secrets; DEBUG off so that Django does not record every query.
    """
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_DEBUG": "false",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"postgres://postgres@{HOST}:5432/{args.database}",
        "CELERY_BROKER_URL": f"redis://{HOST}:6379/{args.redis_db}",
    }
    os.environ.update(env)
    return dict(os.environ)


def django_prepare(args: argparse.Namespace, days: list[date]) -> str:
    """Migrate, create the tenant, its ingest key and the partitions; returns the raw key."""
    sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from analytics import partitions
    from tenants.models import Tenant
    from tenants.services import api_key_create

    call_command("migrate", verbosity=0, interactive=False)
    tenant = Tenant.objects.create(
        slug="bench", name="Benchmark", max_series=args.series, max_points_per_request=max(args.batch_size, args.series)
    )
    key = api_key_create(tenant=tenant, name="bench", scopes=["ingest"]).raw_key
    partitions.partitions_ensure(days)
    connections.close_all()  # nothing Django opened may be shared with forked processes
    return key


def redis_queue_clear(db: int) -> None:
    """Drop the pipeline messages the ingest requests published (no Celery worker runs here)."""
    import redis

    client = redis.Redis(host=HOST, port=6379, db=db)
    client.delete("ingest")
    client.close()


# --- data ------------------------------------------------------------------------------------


class Points:
    """Point number g: series g % S at tick g // S, so every (series, timestamp) is distinct."""

    def __init__(self, series: int, total: int, now: float) -> None:
        self.series = series
        ticks = -(-total // series)
        if ticks * STEP_SECONDS > 6 * 86400:
            raise SystemExit(f"{total:,} points over {series:,} series span more than the 7-day raw retention")
        self.start = int(now) - 600 - ticks * STEP_SECONDS  # the last point ten minutes ago
        self.end = self.start + ticks * STEP_SECONDS
        self.addresses = [self._address(s) for s in range(series)]

    @staticmethod
    def _address(s: int) -> dict[str, Any]:
        node = s // len(METRICS)
        return {
            "cluster": f"cluster-{node % 4}",
            "node": f"node-{node:04d}",
            "metric": METRICS[s % len(METRICS)],
            "labels": {"env": "prod", "region": ("eu-west", "us-east")[node % 2]},
        }

    def ts(self, g: int) -> int:
        return self.start + (g // self.series) * STEP_SECONDS

    @staticmethod
    def value(g: int) -> float:
        return (g * 7919 % 100_000) / 100  # deterministic, so sum(value) can be checked

    def body(self, first: int, count: int) -> bytes:
        points = [
            {**self.addresses[g % self.series], "timestamp": self.ts(g), "value": self.value(g)}
            for g in range(first, first + count)
        ]
        return json.dumps({"points": points}).encode()

    def copy_text(self, first: int, count: int) -> bytes:
        """COPY text rows in request order; series ids 1..S (the point table has no foreign key)."""
        return "".join(
            f"{g % self.series + 1}\t{datetime.fromtimestamp(self.ts(g), tz=UTC).isoformat()}\t{self.value(g)!r}\n"
            for g in range(first, first + count)
        ).encode()

    def copy_binary(self, first: int, count: int) -> bytes:
        """COPY binary rows in (series_id, ts) order, framed as analytics/services.py does."""
        row = struct.Struct("!hiqiqid")
        rows = sorted(
            (g % self.series + 1, (self.ts(g) - 946_684_800) * 1_000_000, g) for g in range(first, first + count)
        )
        return b"".join(
            [
                b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0),
                *(row.pack(3, 8, sid, 8, us, 8, self.value(g)) for sid, us, g in rows),
                struct.pack("!h", -1),
            ]
        )


# --- the server ------------------------------------------------------------------------------


def server_start(args: argparse.Namespace, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        # The production configuration (config/gunicorn.py), sized and bound for the bench.
        sys.executable, "-m", "gunicorn", "--config", "python:config.gunicorn",
        "--bind", f"{HOST}:{port}",
        "--access-logfile", "/dev/null",
        # gthread keeps connections alive (the sync worker closes each after its response)
        # and overlaps one request's Python with another's wait on PostgreSQL.
        "--worker-class", args.worker_class,
        "--workers", str(args.workers),
        "--threads", str(args.threads),
        "--keep-alive", "120",  # clients sit idle at the start barrier; keep their connections
        "--timeout", "120",
        "--log-level", "warning",
        "--error-logfile", str(log),
    ]  # fmt: skip
    # A session of its own: stopping gunicorn signals its process group, never this one.
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return process
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer /healthz within 30 s")


def server_stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _children(pid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _proc_status(int(p.name)).get("PPid") == str(pid)
    ]


def cpu_snapshot(master: int) -> dict[str, float]:
    """CPU seconds used so far by each gunicorn worker, the master, and all PostgreSQL processes."""
    usage = {f"worker {pid}": cpu_seconds(pid) for pid in _children(master)}
    usage["master"] = cpu_seconds(master)
    usage["postgres"] = 0.0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                usage["postgres"] += cpu_seconds(int(entry.name))
        except OSError:
            continue
    return usage


def peak_rss_mib(pid: int) -> float:
    return int(_proc_status(pid).get("VmHWM", "0 kB").split()[0]) / 1024


# --- clients and loaders (forked processes) ---------------------------------------------------


def _post(conn: http.client.HTTPConnection, body: bytes, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request("POST", INGEST_PATH, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:500]!r}")
    result: dict[str, Any] = json.loads(data)
    return result


def _ingest_client(n: int, port: int, key: str, barrier: Any, results: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked with the parent's handler
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        _post(conn, _WARMUP[n], key)
        barrier.wait(timeout=120)
        start = time.perf_counter()
        accepted, latencies = 0, []
        for body in _BODIES[n]:
            sent = time.perf_counter()
            accepted += _post(conn, body, key)["accepted"]
            latencies.append(time.perf_counter() - sent)
        results.put((n, start, time.perf_counter(), accepted, latencies))
        conn.close()
    except Exception as exc:
        barrier.abort()
        results.put((n, None, None, 0, repr(exc)))


def _copy_loader(n: int, dsn: str, options: str, barrier: Any, results: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        conn = psycopg2.connect(dsn)
        barrier.wait(timeout=120)
        start = time.perf_counter()
        with conn.cursor() as cursor:
            for buffer in _BUFFERS[n]:
                cursor.copy_expert(f"COPY {COPY_TABLE} (series_id, ts, value) FROM STDIN {options}", io.BytesIO(buffer))
                conn.commit()  # one transaction per batch, like one ingest request
        results.put((n, start, time.perf_counter(), 0, []))
        conn.close()
    except Exception as exc:
        barrier.abort()
        results.put((n, None, None, 0, repr(exc)))


def run_parallel(target: Callable[..., None], count: int, extra: tuple[Any, ...]) -> tuple[float, list[Any]]:
    """Fork `count` processes, release them together; returns (wall seconds, their reports).

    Wall time runs from the earliest start to the latest finish: perf_counter is the
    system-wide monotonic clock on Linux, so readings of different processes compare.
    """
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(n, *extra, barrier, results), daemon=True) for n in range(count)]
    for proc in procs:
        proc.start()
    try:
        reports = []
        for _ in procs:
            report = results.get(timeout=300)
            if report[1] is None:
                raise RuntimeError(f"process {report[0]} failed: {report[4]}")
            reports.append(report)
    finally:
        for proc in procs:
            proc.join(10)  # a finished process is still flushing its queue
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return max(r[2] for r in reports) - min(r[1] for r in reports), reports


# --- PostgreSQL helpers ----------------------------------------------------------------------


def pg(dsn: str, *statements: str) -> Any:
    """Run statements in autocommit; returns the first row of the last one, if it has rows."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchone() if cursor.description else None
    finally:
        conn.close()


def copy_table_create(dsn: str) -> int:
    """The point table's shape and partitions under another name; returns the partition count."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'analytics_point'::regclass"
        )
        bounds = cursor.fetchall()
        cursor.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        cursor.execute(
            f"CREATE TABLE {COPY_TABLE} (series_id bigint NOT NULL, ts timestamptz NOT NULL, "
            "value double precision NOT NULL, PRIMARY KEY (series_id, ts)) PARTITION BY RANGE (ts)"
        )
        for name, bound in bounds:
            partition = name.replace("analytics_point", COPY_TABLE)
            cursor.execute(f"CREATE TABLE {partition} PARTITION OF {COPY_TABLE} {bound}")
    conn.close()
    return len(bounds)


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    global _BODIES, _WARMUP, _BUFFERS
    args = parse_args()
    signal.alarm(args.time_limit)  # a hung server or database ends the run, cleanly
    env = configure_environment(args)
    dsn = f"host={HOST} port=5432 user=postgres dbname={args.database}"
    n_batches = args.clients * args.batches
    timed = n_batches * args.batch_size
    warmup = args.series * (1 + args.clients)  # a batch creating every series + one per client
    points = Points(args.series, warmup + timed, time.time())
    first_day = datetime.fromtimestamp(points.start, tz=UTC).date()
    days = [
        first_day + timedelta(n)
        for n in range((datetime.fromtimestamp(points.end, tz=UTC).date() - first_day).days + 1)
    ]

    t_setup = time.perf_counter()
    database_reset(args.database)
    key = django_prepare(args, days)
    redis_queue_clear(args.redis_db)

    # Point numbers: [0, series) create the series, then one warm-up batch per client, then
    # the timed batches, batch b of client n being number b * clients + n.
    def batch_first(n: int, b: int) -> int:
        return warmup + (b * args.clients + n) * args.batch_size

    create_body = points.body(0, args.series)
    _WARMUP = [points.body(args.series * (1 + n), args.series) for n in range(args.clients)]
    _BODIES = [
        [points.body(batch_first(n, b), args.batch_size) for b in range(args.batches)] for n in range(args.clients)
    ]
    body_mb = sum(map(len, _BODIES[0])) / len(_BODIES[0]) / 1e6
    print(
        f"setup: {args.database} migrated; {timed:,} points in {n_batches} batches of {args.batch_size:,} "
        f"({body_mb:.2f} MB of JSON each) over {args.series:,} series, a point every {STEP_SECONDS} s per series "
        f"from {datetime.fromtimestamp(points.start, tz=UTC):%Y-%m-%d %H:%M} UTC "
        f"({time.perf_counter() - t_setup:.1f} s)",
        flush=True,
    )

    server = None
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        log = Path(tmp) / "gunicorn.log"
        try:
            port = free_port()
            server = server_start(args, env, port, log)
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
            created = _post(conn, create_body, key)["series_created"]
            conn.close()
            if created != args.series:
                raise RuntimeError(f"expected {args.series} series created, got {created}")
            # Best of --rounds, as for the COPY baseline: a shared 2-core machine is noisy, and
            # comparing one run with the best of several would bias the ratio.
            seconds = math.inf
            for round_number in range(args.rounds):
                if round_number:  # the same points again, into an empty table
                    pg(dsn, "TRUNCATE analytics_point")
                    conn = http.client.HTTPConnection(HOST, port, timeout=120)
                    _post(conn, create_body, key)
                    conn.close()
                pg(dsn, "VACUUM ANALYZE", "CHECKPOINT")  # start from a quiet database
                cpu_before = cpu_snapshot(server.pid)
                round_seconds, round_reports = run_parallel(_ingest_client, args.clients, (port, key))
                if round_seconds < seconds:
                    seconds, reports = round_seconds, round_reports
                    cpu = {name: used - cpu_before.get(name, 0.0) for name, used in cpu_snapshot(server.pid).items()}
            workers_rss = sorted(peak_rss_mib(pid) for pid in _children(server.pid))
            master_rss = peak_rss_mib(server.pid)
        except BaseException:
            if log.exists() and log.stat().st_size:
                print(f"gunicorn log (tail):\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            server_stop(server)
            redis_queue_clear(args.redis_db)
    _BODIES, _WARMUP = [], []  # free ~100 MB before the COPY buffers are built

    ingest_pps = timed / seconds
    latencies = sorted(latency for report in reports for latency in report[4])
    accepted = sum(report[3] for report in reports)
    workers = f"{args.workers} x {args.threads} threads" if args.worker_class == "gthread" else f"{args.workers}"
    print(
        f"ingest: {args.clients} clients, gunicorn {args.worker_class} workers {workers}, "
        f"best of {args.rounds}: {seconds:.2f} s, "
        f"{ingest_pps:,.0f} points/s; per request p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"p95 {latencies[min(len(latencies) - 1, len(latencies) * 95 // 100)] * 1000:.0f} ms"
    )
    cores = os.cpu_count() or 1
    print(
        "ingest: CPU used: gunicorn workers "
        + " + ".join(f"{used:.1f}" for name, used in sorted(cpu.items()) if name.startswith("worker"))
        + f" s, PostgreSQL {cpu['postgres']:.1f} s "
        f"(of {seconds * cores:.1f} s on {cores} cores); "
        f"peak RSS (VmHWM) of gunicorn workers {', '.join(f'{mib:.0f}' for mib in workers_rss)} MiB, "
        f"master {master_rss:.0f} MiB"
    )
    expected_count = warmup + timed
    expected_sum = math.fsum(Points.value(g) for g in range(expected_count))
    stored_count, stored_sum = pg(dsn, "SELECT count(*), sum(value) FROM analytics_point")
    landed = accepted == timed and stored_count == expected_count and math.isclose(stored_sum, expected_sum)
    print(
        f"ingest: count(*) = {stored_count:,} (expected {expected_count:,}, {warmup:,} of them warm-up), "
        f"sum(value) {'matches' if math.isclose(stored_sum, expected_sum) else 'DIFFERS'}: "
        f"{'OK' if landed else 'MISMATCH'}"
    )
    if not landed:
        return 1

    partitions = copy_table_create(dsn)
    best: dict[str, float] = {}
    for _ in range(args.copy_rounds):
        for name, encode, options in (("binary", points.copy_binary, "BINARY"), ("text", points.copy_text, "")):
            _BUFFERS = [
                [encode(batch_first(n, b), args.batch_size) for b in range(args.batches)] for n in range(args.clients)
            ]
            copy_table_create(dsn)
            pg(dsn, "CHECKPOINT")
            copy_seconds, _ = run_parallel(_copy_loader, args.clients, (dsn, options))
            copied = pg(dsn, f"SELECT count(*) FROM {COPY_TABLE}")[0]
            if copied != timed:
                print(f"copy: {copied:,} rows landed, expected {timed:,}", file=sys.stderr)
                return 1
            best[name] = max(best.get(name, 0.0), timed / copy_seconds)
    copy_pps = max(best.values())
    print(
        f"copy: same {timed:,} rows, {n_batches} COPYs of {args.batch_size:,} from {args.clients} connections, "
        f"a commit each, into {partitions} partition(s), best of {args.copy_rounds}: "
        f"binary in key order {best['binary']:,.0f} rows/s, text in request order {best['text']:,.0f} rows/s"
    )
    print(f"RESULT ingest_pps={ingest_pps:.0f} copy_pps={copy_pps:.0f} ratio={ingest_pps / copy_pps:.2f}")
    return 0


if __name__ == "__main__":
    run_main(main)
