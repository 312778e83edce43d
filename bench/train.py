"""`make bench`: model training time and peak memory, against reading the training data from PostgreSQL.

Everything runs on 127.0.0.1:

1. Set-up (not timed): drops and re-creates the database `vigil_bench_train`, migrates it,
   creates one tenant and, loaded with binary COPY:
   - `--series` (10,000) series, 8 metrics a node (bench/ingest.py's), one point every
     `--step` (300) s for `--days` (3) from 2024-01-01 00:00 UTC: a daily sine of its own
     level, amplitude and phase, plus noise (8.64 million points). Three days, not two: the
     seasonal detector finds a daily period only once it has two whole days of hourly means,
     and a 48-hour window ends one hour short of that, so its models would not be seasonal.
   - `--nodes` (100) nodes of 4 correlated metrics (requests, CPU, p99 latency and errors
     all follow one daily load), as 1-minute rollup rows over the last day of the window
     (1,440 a metric, 576,000 in all): what node models train on.
   Then VACUUM ANALYZE (what autovacuum would have done before a nightly run) and CHECKPOINT.
2. Baseline (timed): the fastest read of the same training data, one round each:
   `COPY (SELECT series_id, ts, value FROM analytics_point WHERE ts in the window) TO STDOUT
   (FORMAT binary)` through psycopg2 `copy_expert` into a sink that only counts bytes, then
   the same for the node metrics' 1-minute rollup means. read_s = the two together.
3. Training (timed), each part in a fresh process that sets up Django, connects, and then
   only trains, so that its peak RSS (VmHWM) is training's and not the set-up's:
   - series: `mlops.training.scopes_train` over every series in shards of TRAIN_SHARD (what
     the nightly fan-out sends a Celery worker), trigger "schedule", window [start, end) of
     the whole data, one after the other in one process, with settings.VIGIL_DETECTOR
     (`seasonal` unless VIGIL_DETECTOR says otherwise);
   - nodes: the same for the node scopes ("cluster/node"), on the last day, with
     settings.VIGIL_NODE_DETECTOR (isolation_forest unless VIGIL_NODE_DETECTOR says otherwise).
   Each prints its wall time, scopes/s, its own CPU and its PostgreSQL backend's, and the
   split the versions record (metrics read_seconds, fit_seconds, train_seconds); and the RSS
   (VmRSS) of the same process just before it trained, Django and the project imported and
   connected: what training adds is the peak minus that. train_s = the two parts together. No scope has an active
   version yet (the first nightly run): the gate has nothing to compare and promotes each.
4. Checks: versions by kind and status (every one trained, none failed; the first errors
   otherwise), and 20 artifacts of each kind loaded and verified (`model_version_load`),
   with the share of the sampled series models that found the daily period. Exits non-zero
   if a check fails.

The machine is shared: each timed part prints how busy the machine was and how much of it
other processes took. The database is dropped at the end unless --keep-db. The last line is
machine-readable: `RESULT train_s=<n> read_s=<n> ratio=<train/read> peak_rss_mb=<n>`, the
peak being the larger of the two training processes' (MiB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
from common import HOST, cpu_seconds, database_reset, run_main
from ingest import METRICS, configure_environment, pg

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400
START = 1_704_067_200  # 2024-01-01 00:00 UTC
NODE_METRICS = ("http.rps", "cpu.usage", "http.latency.p99", "http.errors")
POINTS = "analytics_point"
LOAD_CHUNK = 500  # series per COPY of points
SAMPLE = 20  # artifacts verified per kind
PG_EPOCH = 946_684_800  # 2000-01-01 UTC, the origin of binary COPY timestamps
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000, help="series trained (default 10000)")
    parser.add_argument("--days", type=int, default=3, help="days of points, the series' window (default 3)")
    parser.add_argument("--step", type=int, default=300, help="seconds between a series' points (default 300)")
    parser.add_argument("--nodes", type=int, default=100, help="nodes trained, 4 metrics each (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="(default 0)")
    parser.add_argument("--time-limit", type=int, default=1800, help="abort after this many seconds (default 1800)")
    parser.add_argument("--database", default="vigil_bench_train", help="dropped and re-created (%(default)s)")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database for the Celery broker (default 15)")
    parser.add_argument("--keep-db", action="store_true", help="leave the database for inspection")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a training process: its spec file
    args = parser.parse_args()
    if min(args.series, args.days, args.step, args.nodes) < 1 or DAY % args.step:
        parser.error("counts must be at least 1, and --step must divide a day")
    return args


# --- data ------------------------------------------------------------------------------------


def copy_binary(*columns: np.ndarray) -> bytes:
    """Rows of equal-length columns as one binary COPY: each field length-prefixed, big-endian
    (numpy packs a structured dtype, as bench/rollup.py does)."""
    fields: list[tuple[str, Any]] = [("fields", ">i2")]
    for i, column in enumerate(columns):
        fields += [(f"len{i}", ">i4"), (f"c{i}", column.dtype.newbyteorder(">"))]
    rows = np.empty(len(columns[0]), dtype=fields)
    rows["fields"] = len(columns)
    for i, column in enumerate(columns):
        rows[f"len{i}"] = column.dtype.itemsize
        rows[f"c{i}"] = column
    return COPY_HEADER + rows.tobytes() + COPY_TRAILER


def pg_micros(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds as binary COPY timestamps: microseconds since 2000-01-01 UTC."""
    return ((seconds - PG_EPOCH) * 1_000_000).astype(np.int64)


def series_address(s: int) -> tuple[str, str, str]:
    node = s // len(METRICS)
    return f"cluster-{node % 4}", f"node-{node:04d}", METRICS[s % len(METRICS)]


def node_address(n: int) -> tuple[str, str]:
    return f"edge-{n % 4}", f"app-{n:03d}"


def points_buffer(ids: np.ndarray, ts: np.ndarray, rng: np.random.Generator) -> bytes:
    """Points of the series `ids` at `ts`: level + amplitude * sin(day + phase) + noise."""
    level = rng.uniform(10.0, 90.0, (len(ids), 1))
    amplitude = rng.uniform(5.0, 20.0, (len(ids), 1))
    phase = rng.uniform(0.0, 2 * math.pi, (len(ids), 1))
    noise = rng.uniform(0.5, 3.0, (len(ids), 1))
    daily = amplitude * np.sin(2 * math.pi * ts / DAY + phase)
    values = level + daily + noise * rng.standard_normal((len(ids), len(ts)))
    return copy_binary(np.repeat(ids, len(ts)), np.tile(pg_micros(ts), len(ids)), values.ravel())


def node_means(minutes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One node's minute means, a column per NODE_METRICS: requests follow a daily load with a
    slow wander of the node's own; CPU follows requests, latency rises with load, errors with
    requests and latency."""
    m = len(minutes)
    peak = rng.uniform(13.0, 17.0)
    load = 0.5 * (1.0 + np.cos(2 * math.pi * ((minutes % DAY) / 3600 - peak) / 24))
    wander = np.convolve(rng.standard_normal(m + 59), np.ones(60) / 60, mode="valid") * 0.3
    rps = rng.uniform(200, 2000) * (0.3 + 0.7 * load) * (1.0 + 0.05 * wander + 0.03 * rng.standard_normal(m))
    cpu = np.clip(5.0 + 60.0 * rps / rps.max() + 1.5 * rng.standard_normal(m), 0.0, 100.0)
    latency = rng.uniform(50, 200) * (1.0 + 0.8 * load**2) * np.exp(0.1 * rng.standard_normal(m))
    errors = np.maximum(rps * 0.002 * latency / latency.mean() + 0.2 * rng.standard_normal(m), 0.0)
    return np.column_stack([rps, cpu, latency, errors])


def rollups_buffer(ids: list[int], minutes: np.ndarray, means: np.ndarray, rng: np.random.Generator) -> bytes:
    """1-minute rollup rows of one node's series (`means`: a column per series), as if from six
    points a minute; training reads only `mean`."""
    n = len(minutes)
    mean = means.T.ravel()  # series by series, minute by minute: the primary key's order
    sd = np.abs(mean) * 0.02 * (1.0 + rng.random(mean.size))
    bucket = pg_micros(np.tile(minutes, len(ids)))
    return copy_binary(
        np.repeat(np.array(ids, dtype=np.int64), n),
        np.full(mean.size, 60, dtype=np.int16),  # resolution
        bucket,
        np.full(mean.size, 6, dtype=np.int32),  # count
        6.0 * mean,  # sum
        mean - 1.5 * sd,  # min
        mean + 1.5 * sd,  # max
        mean,
        sd,  # stddev
        mean,  # p50
        mean + 1.0 * sd,  # p90
        mean + 1.2 * sd,  # p95
        mean + 1.4 * sd,  # p99
        mean - 0.2 * sd,  # first
        mean + 0.2 * sd,  # last
        bucket + 60_000_000,  # computed_at
    )


ROLLUP_COLUMNS = (
    'series_id, resolution, bucket, "count", "sum", "min", "max", mean, stddev, p50, p90, p95, p99, '
    '"first", "last", computed_at'
)


# --- set-up ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    tenant_id: int
    series_ids: np.ndarray
    node_ids: list[list[int]]  # each node's series ids, in NODE_METRICS order


def django_prepare(args: argparse.Namespace, start: datetime, end: datetime) -> Prepared:
    """Migrate; create the tenant, the series of both kinds and the day partitions."""
    sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path
    import django

    django.setup()
    from django.core.management import call_command

    from analytics import partitions
    from analytics.models import MetricSeries, series_identity
    from tenants.models import Tenant

    call_command("migrate", verbosity=0, interactive=False)
    tenant = Tenant.objects.create(slug="bench", name="Training benchmark", max_series=args.series + 4 * args.nodes)
    labels = {"env": "prod"}

    def series(cluster: str, node: str, metric: str, last: datetime) -> MetricSeries:
        address = {"cluster": cluster, "node": node, "metric": metric, "labels": labels}
        return MetricSeries(tenant=tenant, **address, identity=series_identity(**address), last_point_at=last)

    last_point = end - timedelta(seconds=args.step)
    created = MetricSeries.objects.bulk_create(
        [series(*series_address(s), last_point) for s in range(args.series)], batch_size=2_000
    )
    node_series = MetricSeries.objects.bulk_create(
        [series(*node_address(n), metric, end) for n in range(args.nodes) for metric in NODE_METRICS],
        batch_size=2_000,
    )
    partitions.partitions_ensure(start.date() + timedelta(days=d) for d in range(args.days))
    per_node = len(NODE_METRICS)
    return Prepared(
        tenant_id=tenant.pk,
        series_ids=np.array([obj.pk for obj in created], dtype=np.int64),
        node_ids=[[obj.pk for obj in node_series[i : i + per_node]] for i in range(0, len(node_series), per_node)],
    )


def load(dsn: str, args: argparse.Namespace, prepared: Prepared, node_start: int) -> tuple[int, int]:
    """Binary COPY of the points and the node rollups; returns (points, rollup rows)."""
    rng = np.random.default_rng(args.seed)
    ts = (START + args.step * np.arange(args.days * DAY // args.step)).astype(np.float64)
    minutes = (node_start + 60 * np.arange(DAY // 60)).astype(np.float64)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cursor:
        for lo in range(0, args.series, LOAD_CHUNK):
            buffer = points_buffer(prepared.series_ids[lo : lo + LOAD_CHUNK], ts, rng)
            cursor.copy_expert(f"COPY {POINTS} (series_id, ts, value) FROM STDIN BINARY", _Reader(buffer))
            conn.commit()
        for ids in prepared.node_ids:
            buffer = rollups_buffer(ids, minutes, node_means(minutes, rng), rng)
            cursor.copy_expert(f"COPY analytics_rollup ({ROLLUP_COLUMNS}) FROM STDIN BINARY", _Reader(buffer))
        conn.commit()
    conn.close()
    return args.series * len(ts), len(prepared.node_ids) * len(NODE_METRICS) * len(minutes)


class _Reader:
    """A bytes buffer as the file copy_expert reads, without io.BytesIO's copy of it."""

    def __init__(self, data: bytes) -> None:
        self.view, self.at = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else self.at + size
        chunk = self.view[self.at : end].tobytes()
        self.at += len(chunk)
        return chunk

    readline = read


# --- the baseline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """How busy the whole machine was during a timed part, and how much of it was not the
    measured process and its PostgreSQL backend (another benchmark, autovacuum, a checkpoint)."""

    busy: float  # cores busy on average
    other: float  # share of the machine's CPU not ours

    def __str__(self) -> str:
        return f"machine {self.busy:.2f} of {os.cpu_count()} cores busy, {self.other:.0%} of it taken by others"


class MachineWatch:
    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        """(busy, elapsed) CPU seconds of the machine so far, all cores: user, nice, system and
        interrupts are busy; idle, I/O wait and steal are not."""
        ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, _steal = ticks
        clock = os.sysconf("SC_CLK_TCK")
        return (user + nice + system + irq + softirq) / clock, sum(ticks) / clock

    def report(self, ours: float) -> Machine:
        """Since creation, `ours` being the CPU seconds the measured processes used meanwhile."""
        busy, elapsed = (now - then for now, then in zip(self._now(), self.start, strict=True))
        elapsed = max(elapsed, 1e-9)
        return Machine(busy=busy / elapsed * (os.cpu_count() or 1), other=max(busy - ours, 0.0) / elapsed)


class _Discard:
    """The sink of COPY TO: counts the bytes, keeps nothing."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


def read_copy(dsn: str, query: str) -> tuple[float, int, Machine]:
    """COPY (query) TO STDOUT (FORMAT binary) into a discard sink: (seconds, bytes, machine use)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
            sink, watch = _Discard(), MachineWatch()
            cpu, began = cpu_seconds(backend) + time.process_time(), time.perf_counter()
            cursor.copy_expert(f"COPY ({query}) TO STDOUT (FORMAT binary)", sink)
            seconds = time.perf_counter() - began
            return seconds, sink.bytes, watch.report(cpu_seconds(backend) + time.process_time() - cpu)
    finally:
        conn.close()


# --- training processes ----------------------------------------------------------------------


def rss_kib(field: str) -> int:
    """VmRSS (resident set size now) or VmHWM (its peak) of this process, KiB.

    Not ru_maxrss: after fork and exec it is at least the parent's RSS at the fork (Linux
    keeps the forked copy's high-water mark), so it would report this bench's set-up."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:", 1)[1].split()[0])


def child(spec_path: str) -> int:
    """A training process: set up Django, connect, train the spec's keys in shards, write a report."""
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from mlops.training import TRAIN_SHARD, scopes_train

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    idle_kib = rss_kib("VmRSS")
    start, end = datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"])
    keys: list[str] = spec["keys"]
    watch = MachineWatch()
    backend_cpu, own_cpu, began = cpu_seconds(backend), time.process_time(), time.perf_counter()
    trained = 0
    for lo in range(0, len(keys), TRAIN_SHARD):
        trained += scopes_train(
            tenant_id=spec["tenant_id"],
            kind=spec["kind"],
            keys=keys[lo : lo + TRAIN_SHARD],
            trigger="schedule",
            start=start,
            end=end,
        )
    seconds = time.perf_counter() - began
    own_cpu, backend_cpu = time.process_time() - own_cpu, cpu_seconds(backend) - backend_cpu
    machine = watch.report(own_cpu + backend_cpu)
    report = {
        "seconds": seconds,
        "own_cpu": own_cpu,
        "backend_cpu": backend_cpu,
        "machine": [machine.busy, machine.other],
        "trained": trained,
        "shards": -(-len(keys) // TRAIN_SHARD),
        "idle_mib": idle_kib / 1024,
        "peak_mib": rss_kib("VmHWM") / 1024,
    }
    Path(spec["report"]).write_text(json.dumps(report))
    return 0


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one training process on `spec`; returns its report."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-train-") as tmp:
        spec_path, spec["report"] = Path(tmp) / "spec.json", str(Path(tmp) / "report.json")
        spec_path.write_text(json.dumps(spec))
        process = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], cwd=ROOT)
        try:
            status = process.wait()
        finally:
            if process.poll() is None:  # interrupted or timed out here: stop it too
                process.terminate()
                process.wait()
        if status != 0:
            raise RuntimeError(f"the {spec['kind']} training process exited with {status}")
        report: dict[str, Any] = json.loads(Path(spec["report"]).read_text())
        return report


# --- checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    statuses: Counter[str]
    errors: list[str]
    read: float  # sums of the versions' metrics
    fit: float
    train: float


def recorded(kind: str) -> Recorded:
    from mlops.models import ModelVersion

    versions = ModelVersion.objects.filter(scope_kind=kind)
    split = ("metrics__read_seconds", "metrics__fit_seconds", "metrics__train_seconds")
    rows = list(versions.values_list("status", *split))
    errors = list(versions.filter(status="failed").order_by("pk").values_list("error", flat=True)[:3])
    return Recorded(
        statuses=Counter(row[0] for row in rows),
        errors=errors,
        read=math.fsum(row[1] or 0.0 for row in rows),
        fit=math.fsum(row[2] or 0.0 for row in rows),
        train=math.fsum(row[3] or 0.0 for row in rows),
    )


def artifacts_verify(kind: str) -> tuple[int, int, int]:
    """(sampled, verified, with a daily period) of SAMPLE random trained versions of `kind`."""
    from mlops.models import ModelVersion
    from mlops.services import model_version_load

    sample = ModelVersion.objects.filter(scope_kind=kind, artifact__isnull=False).order_by("?")[:SAMPLE]
    verified = daily = 0
    for version in sample.select_related("artifact"):
        try:
            model = model_version_load(version=version)
        except Exception:
            continue
        verified += 1
        baseline = model["state"].get("baseline")
        daily += isinstance(baseline, dict) and baseline.get("period") == DAY
    return len(sample), verified, daily


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args.child)
    signal.alarm(args.time_limit)  # a hung database ends the run, cleanly
    t_run = time.perf_counter()
    os.environ.setdefault("VIGIL_DETECTOR", "seasonal")
    configure_environment(args)  # inherited by the training processes
    dsn = f"host={HOST} port=5432 user=postgres dbname={args.database}"
    start = datetime.fromtimestamp(START, tz=UTC)
    end = start + timedelta(days=args.days)
    node_start = end - timedelta(days=1)
    try:
        return run(args, dsn, start, end, node_start, t_run)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            database_reset(args.database, create=False)


def run(args: argparse.Namespace, dsn: str, start: datetime, end: datetime, node_start: datetime, t_run: float) -> int:
    t_setup = time.perf_counter()
    database_reset(args.database)
    prepared = django_prepare(args, start, end)
    from django.conf import settings

    points, rollups = load(dsn, args, prepared, int(node_start.timestamp()))
    t_vacuum = time.perf_counter()
    pg(dsn, "VACUUM ANALYZE", "CHECKPOINT")
    size = pg(dsn, f"SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('{POINTS}') WHERE isleaf")[0]
    per_series = args.days * DAY // args.step
    print(
        f"setup: {args.database} migrated; {args.series:,} series x {per_series:,} points ({points:,}), one every "
        f"{args.step} s from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, point table {size / 2**20:,.0f} MiB; "
        f"{args.nodes} nodes x {len(NODE_METRICS)} metrics x 1,440 1-minute rollups ({rollups:,}) from "
        f"{node_start:%Y-%m-%d %H:%M}; binary COPY, VACUUM ANALYZE {time.perf_counter() - t_vacuum:.1f} s "
        f"(set-up {time.perf_counter() - t_setup:.1f} s)",
        flush=True,
    )

    node_series = ",".join(str(i) for ids in prepared.node_ids for i in ids)
    point_query = f"SELECT series_id, ts, value FROM {POINTS} WHERE ts >= '{start}' AND ts < '{end}'"
    rollup_query = (
        f"SELECT series_id, bucket, mean FROM analytics_rollup WHERE resolution = 60 AND series_id IN ({node_series}) "
        f"AND bucket >= '{node_start}' AND bucket < '{end}'"
    )
    read_points, point_bytes, machine_points = read_copy(dsn, point_query)
    print(
        f"read: series: COPY (SELECT series_id, ts, value ... window) TO STDOUT binary into a discard sink: "
        f"{read_points:.2f} s, {points / read_points:,.0f} rows/s, {point_bytes / 2**20:,.0f} MiB; {machine_points}",
        flush=True,
    )
    read_nodes, rollup_bytes, machine_nodes = read_copy(dsn, rollup_query)
    print(
        f"read: nodes: COPY (SELECT series_id, bucket, mean FROM analytics_rollup ... 1m, last day) likewise: "
        f"{read_nodes:.2f} s, {rollups / read_nodes:,.0f} rows/s, {rollup_bytes / 2**20:,.1f} MiB; {machine_nodes}",
        flush=True,
    )
    read_s = read_points + read_nodes

    parts = {
        "series": (
            settings.VIGIL_DETECTOR,
            [str(i) for i in prepared.series_ids],
            start,
            read_points,
        ),
        "node": (
            settings.VIGIL_NODE_DETECTOR,
            [f"{cluster}/{node}" for cluster, node in map(node_address, range(args.nodes))],
            node_start,
            read_nodes,
        ),
    }
    reports: dict[str, dict[str, Any]] = {}
    machines = [machine_points, machine_nodes]
    for kind, (detector, keys, since, read_seconds) in parts.items():
        spec = {"tenant_id": prepared.tenant_id, "kind": kind, "keys": keys, "start": since.isoformat()}
        spec["end"] = end.isoformat()
        report = train(spec)
        reports[kind], machine = report, Machine(*report["machine"])
        machines.append(machine)
        rec = recorded(kind)
        outside = report["seconds"] - rec.train
        print(
            f"train: {len(keys):,} {kind} scopes, detector {detector}, window {since:%m-%d %H:%M}..{end:%m-%d %H:%M}, "
            f"{report['shards']} scopes_train shards, one process: {report['seconds']:.1f} s, "
            f"{len(keys) / report['seconds']:,.1f} scopes/s, {report['seconds'] / len(keys) * 1000:.1f} ms a scope "
            f"({report['seconds'] / read_seconds:.1f}x its read); CPU: the process {report['own_cpu']:.1f} s, "
            f"its PostgreSQL backend {report['backend_cpu']:.1f} s; {machine}",
        )
        print(
            f"train: {kind}: as the versions record it: read {rec.read:.1f} s, fit {rec.fit:.1f} s, rest of the fit "
            f"{rec.train - rec.read - rec.fit:.1f} s (train_seconds {rec.train:.1f} s); outside the fit (start, "
            f"artifact, gate, promotion) {outside:.1f} s; RSS idle {report['idle_mib']:.0f} MiB, "
            f"peak {report['peak_mib']:.0f} MiB (+{report['peak_mib'] - report['idle_mib']:.0f} MiB)",
            flush=True,
        )

    ok = True
    for kind, (_, keys, _, _) in parts.items():
        rec = recorded(kind)
        sampled, verified, daily = artifacts_verify(kind)
        good = rec.statuses["active"] + rec.statuses["candidate"] == len(keys) and not rec.statuses["failed"]
        good = good and verified == sampled == min(SAMPLE, len(keys)) and reports[kind]["trained"] == len(keys)
        ok = ok and good
        period = f", {daily}/{sampled} found the daily period" if kind == "series" else ""
        print(
            f"check: {kind}: versions "
            + ", ".join(f"{status} {count:,}" for status, count in sorted(rec.statuses.items()))
            + f" of {len(keys):,} scopes; artifacts verified {verified}/{sampled}{period}: {'OK' if good else 'FAILED'}"
        )
        for error in rec.errors:
            print(f"check: {kind}: failed: {error[:300]}")

    train_s = sum(report["seconds"] for report in reports.values())
    peak = max(report["peak_mib"] for report in reports.values())
    print(
        f"summary: training {args.series:,} series and {args.nodes} nodes took {train_s:.1f} s, "
        f"{train_s / read_s:.1f}x the {read_s:.2f} s PostgreSQL needs to hand over their training data; "
        f"peak RSS {peak:.0f} MiB ({reports['series']['idle_mib']:.0f} MiB before training); "
        f"total {time.perf_counter() - t_run:.0f} s"
    )
    busiest_other = max(machine.other for machine in machines)
    if busiest_other > 0.05:
        print(
            f"WARNING: other processes took up to {busiest_other:.0%} of the machine during a timed part: "
            "these figures are not from a quiet machine"
        )
    print(f"RESULT train_s={train_s:.1f} read_s={read_s:.2f} ratio={train_s / read_s:.1f} peak_rss_mb={peak:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
