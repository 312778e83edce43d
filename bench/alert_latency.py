"""`make bench`: ingest-to-webhook latency of alerting, on the real stack, against two floors.

Everything runs on 127.0.0.1, with the production settings (`config.settings.production`):

1. Drops and re-creates the database `vigil_bench_alerts`, migrates it and syncs the periodic
   tasks; clears the Redis database of the broker (and of the cache). In the database: a
   tenant, an ingest key, a webhook endpoint pointing at a receiver in this process, a route
   taking every alert to it with group_wait 0, grouped per series (alertname, node), and a
   critical threshold rule with no `for` (`last` value of metric "latency" above 1000).
2. Starts the stack as it runs in production, one process group each: gunicorn on
   `config.wsgi` (config/gunicorn.py), a Celery worker consuming every queue of
   settings.VIGIL_QUEUES (`--pool threads --concurrency 4` by default, `--pool prefork` for
   the compose file's pool), and beat with its DatabaseScheduler. Waits for /healthz and for
   the worker to answer a ping.
3. The receiver: a ThreadingHTTPServer in this process records the wall time each webhook
   arrives, verifies its Standard Webhooks signature with the endpoint's secret, and reads from
   the Alertmanager v4 body which node's alert fired.
4. Warm-up: one calm point (value 10) for each of `--series` series in one request, then waits
   until the pipeline has processed it and the queues are empty, so the series exist and the
   timed part measures steady state.
5. Baselines, on the idle stack: the round trip of a control ping to the worker through Redis
   (median of 20; results are disabled, so no task round trip can be timed) is the floor of
   one queue hop; a signed POST from this process to the receiver on a new connection, as the
   delivery task sends it (median of 50), is the floor of the HTTP delivery.
6. Timed: one breaching point (value 5000, timestamped when sent) per request, each for
   another node, paced at `--rate` requests per second (default 5: a load the default worker
   sustains, so the latency is the pipeline's and not a queue's) over one keep-alive connection (or dealt
   over `--connections`; a connection waits for each answer, so slow answers lower the pace, and
   the report says so). Each must produce exactly one firing notification for its node.
   Latency of a node = the arrival of its notification at the receiver - the moment its POST was
   sent (both wall clock, read in this process). After the last node arrives the bench keeps
   listening for `--settle` seconds (longer than one notifications-sweep period), so that a
   duplicate sent by the sweeper or a redelivery is seen and counted.
7. Where the time goes, per node, from the rows the pipeline wrote: POST -> IngestBatch row
   (web) -> processed_at (ingest queue and task) -> Alert.fired_at (evaluation queue; fired_at
   is the evaluation's start) -> Notification row (evaluation under the rule lock, and the
   flush) -> first DeliveryAttempt.started_at (webhooks queue) -> arrival (HTTP). The run
   time of every task kind during the timed part, from the worker's log. And PostgreSQL's lock
   waits meanwhile: pg_stat_activity sampled every 50 ms, by contended table and statement.

The machine is shared: the load average and the machine-wide CPU use during the timed part
are printed beside the CPU the stack used. Exits non-zero if a notification is missing,
duplicated or fails verification. The last line is machine-readable:
`RESULT p50_ms=<n> p95_ms=<n> p99_ms=<n> deliveries_per_s=<n>`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import itertools
import json
import math
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import redis
from common import HOST, cpu_seconds, database_reset, free_port, run_main
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

ROOT = Path(__file__).resolve().parent.parent
INGEST_PATH = "/api/v1/points"
CLUSTER, METRIC = "bench", "latency"
CALM, BREACH, CRITICAL = 10.0, 5000.0, 1000.0
BASELINE_PREFIX = "msg_baseline_"  # webhook ids of the direct POSTs, told apart from Vigil's
PING_SAMPLES, POST_SAMPLES = 20, 50
# kombu's Redis transport keeps a queue's messages of priority 0 under its name and the other
# priority steps under name + separator + step; messages a worker holds (prefetched or running
# with acks_late, and countdown/ETA ones) sit in the `unacked` hash.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
TASK_LINE = re.compile(r"Task (\S+)\[[^\]]+\] succeeded in ([0-9.eE+-]+)s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=200, help="series (nodes), one breach each (default 200)")
    # 5/s is what one default worker (4 threads, one process) sustains on 2 cores with room to
    # spare (~0.1 s of worker CPU a breach, ingest to delivery). At 20/s it saturates at 8-10
    # deliveries/s and the latency is the queue's; use --rate 20 to measure that.
    parser.add_argument("--rate", type=float, default=5.0, help="breaching requests per second (default 5)")
    parser.add_argument(
        "--connections", type=int, default=1, help="keep-alive connections the breaches are dealt over (default 1)"
    )
    # Threads by default. Measured on this 2-core machine with the defaults: 4 threads notified
    # all 200 nodes (p50 2.4 s); prefork with 2 processes (docker-compose.yml's worker) had 56
    # of 200 nodes still missing after 120 s, both processes being taken in turn by
    # notifications_sweep runs that hit their 25 s soft time limit (the threads pool enforces
    # no time limits: there the sweeps overran and overlapped instead).
    parser.add_argument(
        "--pool", choices=["threads", "prefork"], default="threads", help="worker pool (default threads)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="worker threads or processes (default 4 threads, 2 processes)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every notification")
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="seconds to keep listening for duplicates after the last (default 20)",
    )
    parser.add_argument("--time-limit", type=int, default=600, help="abort after this many seconds (default 600)")
    parser.add_argument("--database", default="vigil_bench_alerts", help="dropped and re-created (default %(default)s)")
    parser.add_argument("--keep-db", action="store_true", help="keep the database at the end (it is dropped otherwise)")
    parser.add_argument(
        "--redis-db", type=int, default=14, help="Redis database of broker and cache, cleared (default 14)"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="keep web, worker and beat logs here")
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = 4 if args.pool == "threads" else 2
    if min(args.series, args.concurrency, args.connections) < 1 or args.rate <= 0:
        parser.error("--series, --concurrency, --connections and --rate must be positive")
    return args


# --- set-up ----------------------------------------------------------------------------------


def configure_environment(args: argparse.Namespace, web_port: int) -> dict[str, str]:
    """Environment for this process (Django set-up) and for web, worker and beat.

    The production settings, as docker-compose.yml sets them: a fresh secret key, no HTTPS
    redirect (no TLS on the loopback), Redis for broker and cache. Private webhook targets are
    allowed, since the receiver is on the loopback.
    """
    redis_url = f"redis://{HOST}:6379/{args.redis_db}"
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": f"{HOST},localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": f"postgres://postgres@{HOST}:5432/{args.database}",
        "CELERY_BROKER_URL": redis_url,
        "CACHE_URL": redis_url,
        "VIGIL_EXTERNAL_URL": f"http://{HOST}:{web_port}",
        "VIGIL_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    os.environ.update(env)
    return dict(os.environ)


def redis_clear(db: int) -> None:
    client = redis.Redis(host=HOST, port=6379, db=db)
    client.flushdb()
    client.close()


@dataclass(frozen=True)
class Setup:
    rule_id: int
    key: str  # the raw ingest key
    secret: str  # the endpoint's signing secret


def django_prepare(args: argparse.Namespace, receiver_url: str) -> Setup:
    """Migrate, sync the periodic tasks, and create the tenant, key, endpoint, route and rule."""
    import django

    django.setup()
    from django.core.management import call_command

    from alerts.delivery import endpoint_create
    from alerts.services import route_save, rule_create
    from tenants.models import Tenant
    from tenants.services import api_key_create

    call_command("migrate", verbosity=0, interactive=False)
    call_command("sync_periodic_tasks", stdout=io.StringIO())
    tenant = Tenant.objects.create(slug="bench", name="Benchmark", max_series=args.series)
    key = api_key_create(tenant=tenant, name="bench", scopes=["ingest"]).raw_key
    endpoint, secret = endpoint_create(tenant=tenant, name="receiver", url=receiver_url)
    # group_wait 0 and one group per series: each breach is notified at once, on its own.
    route_save(
        tenant=tenant,
        name="bench",
        group_by=["alertname", "node"],
        group_wait_seconds=0,
        group_interval_seconds=1,
        endpoints=[endpoint],
    )
    rule = rule_create(
        tenant=tenant,
        name="bench latency",
        kind="threshold",
        selector=[{"label": "metric", "op": "=", "value": METRIC}],
        condition={"aggregate": "last", "window_seconds": 60, "operator": ">", "critical": CRITICAL},
    )
    return Setup(rule_id=rule.pk, key=key, secret=secret)


# --- the receiver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() once the body was read
    webhook_id: str
    verified: bool
    status: str  # the body's "status": firing or resolved
    firing_nodes: tuple[str, ...]  # labels.node of the body's firing alerts


class Receiver:
    """Webhook receiver on the loopback: records and verifies every POST, answers 204."""

    def __init__(self) -> None:
        self.secret = ""
        self.arrivals: list[Arrival] = []
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer((HOST, 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/hook"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, at: float, body: bytes, headers: dict[str, str]) -> None:
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        try:
            payload = json.loads(body)
            status = str(payload.get("status", ""))
            nodes = tuple(
                str(alert["labels"].get("node", "")) for alert in payload["alerts"] if alert["status"] == "firing"
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            status, nodes = "unreadable", ()
        with self.changed:
            self.arrivals.append(Arrival(at, headers.get("webhook-id", ""), verified, status, nodes))
            self.changed.notify_all()

    def wait_for(self, done: Callable[[list[Arrival]], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: done(self.arrivals), timeout=timeout)

    def snapshot(self) -> list[Arrival]:
        with self.changed:
            return list(self.arrivals)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            at = time.time()
            receiver.record(at, body, {name.lower(): value for name, value in self.headers.items()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per webhook on stderr would drown the report

    return Handler


def firing_nodes(arrivals: Iterable[Arrival]) -> set[str]:
    return {node for a in arrivals if not a.webhook_id.startswith(BASELINE_PREFIX) for node in a.firing_nodes}


# --- the stack -------------------------------------------------------------------------------


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # A session of its own: stopping it signals its process group, never this one.
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def web_start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        # The production configuration (config/gunicorn.py: gthread, 2 workers x 2 threads).
        sys.executable, "-m", "gunicorn", "--config", "python:config.gunicorn",
        "--bind", f"{HOST}:{port}",
        "--access-logfile", "/dev/null",
        "--log-level", "warning",
    ]  # fmt: skip
    process = spawn(command, env, log)
    wait_until(lambda: _healthy(port), 30, "gunicorn to answer /healthz", process, log)
    return process


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def worker_start(args: argparse.Namespace, env: dict[str, str], node: str, log: Path) -> subprocess.Popen[bytes]:
    from django.conf import settings

    from config.celery_app import app

    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker",
        "-Q", ",".join(settings.VIGIL_QUEUES),
        "--pool", args.pool, "--concurrency", str(args.concurrency),
        "-n", node,
        "--loglevel", "INFO",  # the per-task "succeeded in" lines are the profile
    ]  # fmt: skip
    process = spawn(command, env, log)

    def answered() -> bool:
        return bool(app.control.ping(destination=[node], timeout=0.5, limit=1))

    wait_until(answered, 60, "the worker to answer a ping", process, log)
    return process


def beat_start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # The scheduler is settings.CELERY_BEAT_SCHEDULER (django-celery-beat's DatabaseScheduler).
    process = spawn([sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"], env, log)
    wait_until(lambda: "beat: Starting" in log.read_text(errors="replace"), 30, "beat to start", process, log)
    return process


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} waiting for {what}:\n{_tail(log)}")
        if condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def processes_stop(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each leader (gunicorn and Celery shut their children down gracefully), then
    SIGKILL to whatever is left of each process group."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- measurements ----------------------------------------------------------------------------


def _proc_ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def treecpu_seconds(root: int) -> float:
    """CPU seconds of a process and its descendants alive now."""
    parents = {int(p.name): _proc_ppid(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(cpu_seconds(pid) for pid in tree)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary_ms(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {percentile(values, 50) * 1000:.0f} ms, p95 {percentile(values, 95) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms"
    )


def ping_round_trips(node: str) -> list[float]:
    from config.celery_app import app

    samples = []
    for _ in range(PING_SAMPLES):
        started = time.perf_counter()
        if not app.control.ping(destination=[node], timeout=2.0, limit=1):
            raise RuntimeError("the worker did not answer a ping within 2 s")
        samples.append(time.perf_counter() - started)
    return samples


def direct_post_round_trips(receiver: Receiver) -> list[float]:
    """Signed POSTs to the receiver, each on a new connection, as alerts.outbound sends them."""
    signer = Webhook(receiver.secret)
    body = json.dumps({"version": "4", "status": "baseline", "alerts": []})
    samples = []
    for n in range(POST_SAMPLES):
        webhook_id, now = f"{BASELINE_PREFIX}{n}", datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(webhook_id, now, body),
            "Connection": "close",
        }
        started = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, receiver.server.server_address[1], timeout=10)
        conn.request("POST", "/hook", body=body.encode(), headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        samples.append(time.perf_counter() - started)
        if response.status != 204:
            raise RuntimeError(f"the receiver answered {response.status}")
    return samples


def queues_idle(db: int, queues: Iterable[str]) -> bool:
    client = redis.Redis(host=HOST, port=6379, db=db)
    try:
        waiting = sum(client.llen(q + suffix) for q in queues for suffix in PRIORITY_SUFFIXES)
        return waiting == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def task_timings(log: Path, offset: int) -> dict[str, list[float]]:
    """Run time of each task the worker logged as succeeded after byte `offset` of its log."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    timings: dict[str, list[float]] = defaultdict(list)
    for name, seconds in TASK_LINE.findall(text):
        timings[name.rsplit(".", 1)[-1]].append(float(seconds))
    return timings


def log_errors(log: Path, offset: int) -> list[str]:
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    return [line for line in lines if " ERROR/" in line or " CRITICAL/" in line or "Traceback" in line]


# Sessions of the bench database waiting on a lock, with the table whose row (or, failing
# that, which table) they wait for: a row-lock waiter holds the tuple lock of the row it queues
# for, granted or not, so its relation names the contended table.
LOCK_WAITS_SQL = """
SELECT coalesce(
         (SELECT string_agg(DISTINCT l.relation::regclass::text, ',') FROM pg_locks l
           WHERE l.pid = a.pid AND l.locktype = 'tuple'),
         (SELECT string_agg(DISTINCT l.relation::regclass::text, ',') FROM pg_locks l
           WHERE l.pid = a.pid AND NOT l.granted AND l.relation IS NOT NULL),
         a.wait_event),
       a.query
  FROM pg_stat_activity a
 WHERE a.datname = %s AND a.wait_event_type = 'Lock'
"""
STATEMENT = re.compile(
    r'\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|COPY|COMMIT)\b(?:.*?"(\w+)")?', re.IGNORECASE | re.DOTALL
)


class LockSampler:
    """Samples, every `interval` seconds in a thread, the bench database's sessions waiting on a
    lock: (contended table, waiting statement) -> samples. A COMMIT that waits is running the
    deferred foreign-key checks of its inserts (Django creates them DEFERRABLE INITIALLY DEFERRED)."""

    def __init__(self, database: str, interval: float = 0.05) -> None:
        self.database, self.interval = database, interval
        self.samples = 0
        self.waits: Counter[tuple[str, str]] = Counter()
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(f"host={HOST} port=5432 user=postgres dbname={self.database}")
            conn.autocommit = True
            with conn.cursor() as cursor:
                while not self._stop.wait(self.interval):
                    cursor.execute(LOCK_WAITS_SQL, [self.database])
                    self.samples += 1
                    for table, query in cursor.fetchall():
                        self.waits[(table, _statement(query))] += 1
            conn.close()
        except psycopg2.Error as exc:  # the report says so; the run goes on
            self.error = str(exc).strip()


def _statement(query: str) -> str:
    found = STATEMENT.match(query or "")
    if found is None:
        return (query or "?")[:30]
    verb, table = found.groups()
    return f"{verb.upper()} {table}" if table else verb.upper()


# --- the timed part --------------------------------------------------------------------------


@dataclass
class Post:
    sent: float  # time.time() just before the request
    answered: float  # time.time() once the 200 was read
    batch_id: str


def _post(conn: http.client.HTTPConnection, points: list[dict[str, Any]], key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn.request("POST", INGEST_PATH, body=json.dumps({"points": points}).encode(), headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"ingest answered HTTP {response.status}: {data[:500]!r}")
    result: dict[str, Any] = json.loads(data)
    return result


def _point(node: str, ts: float, value: float) -> dict[str, Any]:
    return {"cluster": CLUSTER, "node": node, "metric": METRIC, "timestamp": ts, "value": value}


def breaches_send(port: int, key: str, nodes: list[str], rate: float, connections: int) -> dict[str, Post]:
    """One breaching point per request, one node each, request i due at start + i / rate, dealt
    round-robin over `connections` keep-alive connections, each in a thread of its own (one by
    default: a client that cannot keep the pace lowers it, and the report says so). Wall clock
    throughout: the stages are compared with the database's timestamps, which are wall clock
    too (same machine, same clock)."""
    posts: dict[str, Post] = {}
    failures: list[BaseException] = []
    start = time.time()

    def client(first: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            for i in range(first, len(nodes), connections):
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                sent = time.time()
                result = _post(conn, [_point(nodes[i], sent, BREACH)], key)
                posts[nodes[i]] = Post(sent, time.time(), str(result["batch_id"]))
        except Exception as exc:
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,), name=f"client-{n}") for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return posts


@dataclass
class Verdict:
    latencies: dict[str, float]  # node -> first arrival - sent
    first_arrival: dict[str, Arrival]
    missing: list[str]
    duplicate_ids: int  # arrivals repeating a webhook-id already received
    duplicate_nodes: int  # firing notifications beyond the first, per node
    unexpected: int  # resolved, unreadable, or for a node not breached
    unverified: int
    notifications: int  # distinct webhook ids received for the breached nodes


def judge(posts: dict[str, Post], arrivals: list[Arrival]) -> Verdict:
    hooks = [a for a in arrivals if not a.webhook_id.startswith(BASELINE_PREFIX)]
    ids = Counter(a.webhook_id for a in hooks)
    by_node: dict[str, list[Arrival]] = defaultdict(list)
    unexpected = 0
    for arrival in hooks:
        if arrival.status != "firing" or not arrival.firing_nodes:
            unexpected += 1
        for node in arrival.firing_nodes:
            if node in posts:
                by_node[node].append(arrival)
            else:
                unexpected += 1
    first = {node: min(found, key=lambda a: a.at) for node, found in by_node.items()}
    return Verdict(
        latencies={node: arrival.at - posts[node].sent for node, arrival in first.items()},
        first_arrival=first,
        missing=sorted(set(posts) - set(by_node)),
        duplicate_ids=sum(count - 1 for count in ids.values()),
        duplicate_nodes=sum(len({a.webhook_id for a in found}) - 1 for found in by_node.values()),
        unexpected=unexpected,
        unverified=sum(not a.verified for a in arrivals),
        notifications=len({a.webhook_id for found in by_node.values() for a in found}),
    )


def stages(setup: Setup, posts: dict[str, Post], verdict: Verdict) -> list[tuple[str, list[float]]]:
    """Per node, the seconds between the timestamps the pipeline wrote (see the module)."""
    from alerts.models import Alert, Delivery, DeliveryAttempt
    from analytics.models import IngestBatch

    batches = {str(b.pk): b for b in IngestBatch.objects.filter(pk__in=[p.batch_id for p in posts.values()])}
    alerts = {str(a.labels.get("node")): a for a in Alert.objects.filter(rule_id=setup.rule_id)}
    ids = [a.webhook_id for a in verdict.first_arrival.values()]
    deliveries = {d.webhook_id: d for d in Delivery.objects.filter(webhook_id__in=ids).select_related("notification")}
    first_attempt = {a.delivery_id: a for a in DeliveryAttempt.objects.filter(delivery__webhook_id__in=ids, number=1)}
    names = (
        "web: POST sent -> IngestBatch row",
        "ingest: -> batch processed",
        "to evaluation: -> evaluation start",
        "evaluation: -> Notification row",
        "to delivery: -> attempt start",
        "HTTP: -> arrival at receiver",
    )
    columns: list[list[float]] = [[] for _ in names]
    for node, arrival in verdict.first_arrival.items():
        batch, alert, delivery = batches.get(posts[node].batch_id), alerts.get(node), deliveries.get(arrival.webhook_id)
        attempt = first_attempt.get(delivery.pk) if delivery else None
        if not (batch and batch.processed_at and alert and alert.fired_at and delivery and attempt):
            continue
        marks = [
            posts[node].sent,
            batch.received_at.timestamp(),
            batch.processed_at.timestamp(),
            alert.fired_at.timestamp(),
            delivery.notification.created_at.timestamp(),
            attempt.started_at.timestamp(),
            arrival.at,
        ]
        for column, (before, after) in zip(columns, itertools.pairwise(marks), strict=True):
            column.append(after - before)
    return list(zip(names, columns, strict=True))


# --- main ------------------------------------------------------------------------------------


@dataclass
class Measured:
    posts: dict[str, Post]
    verdict: Verdict
    complete: bool  # every node notified within --timeout
    ping_ms: float
    direct_ms: float
    stage_rows: list[tuple[str, list[float]]]
    timings: dict[str, list[float]]
    errors: list[str]
    cpu: dict[str, float]  # CPU seconds per process tree during the timed part
    seconds: float  # the timed part: first POST to the last node's arrival (or to the timeout)
    machine_busy: float  # core-seconds the whole machine was busy meanwhile
    load: tuple[str, str]  # load average before and after
    locks: LockSampler
    dead: list[str]  # stack processes that exited during the run


def run(
    args: argparse.Namespace,
    env: dict[str, str],
    web_port: int,
    receiver: Receiver,
    logs: dict[str, Path],
    processes: dict[str, subprocess.Popen[bytes]],
) -> Measured:
    """Set up, start the stack (into `processes`, which the caller stops), warm up, measure."""
    t_setup = time.perf_counter()
    database_reset(args.database)
    redis_clear(args.redis_db)
    setup = django_prepare(args, receiver.url)
    receiver.secret = setup.secret
    nodes = [f"node-{n:03d}" for n in range(args.series)]
    print(
        f"setup: {args.database} migrated, periodic tasks synced; a threshold rule (last > {CRITICAL:.0f}, no for), "
        f"a route (group_wait 0, by alertname+node) to {receiver.url} ({time.perf_counter() - t_setup:.1f} s)",
        flush=True,
    )

    from django.conf import settings

    from analytics.models import IngestBatch

    t_start = time.perf_counter()
    node_name = f"bench-alerts-{os.getpid()}@{os.uname().nodename}"
    processes["web"] = web_start(env, web_port, logs["web"])
    processes["worker"] = worker_start(args, env, node_name, logs["worker"])
    processes["beat"] = beat_start(env, logs["beat"])
    print(
        f"stack: gunicorn (config/gunicorn.py), worker --pool {args.pool} --concurrency {args.concurrency} "
        f"on {','.join(settings.VIGIL_QUEUES)}, beat (DatabaseScheduler), up in "
        f"{time.perf_counter() - t_start:.1f} s; logs in {logs['worker'].parent}",
        flush=True,
    )

    # Warm-up: every series created with a calm value, then the pipeline left to go quiet.
    t_warm = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, web_port, timeout=60)
    created = _post(conn, [_point(node, time.time(), CALM) for node in nodes], setup.key)["series_created"]
    conn.close()
    if created != args.series:
        raise RuntimeError(f"expected {args.series} series created, got {created}")

    def settled() -> bool:
        pending = IngestBatch.objects.filter(processed_at__isnull=True).exists()
        return not pending and queues_idle(args.redis_db, settings.VIGIL_QUEUES)

    wait_until(settled, 120, "the warm-up batch to be processed", processes["worker"], logs["worker"])
    print(
        f"warm-up: {args.series} calm points (value {CALM:g}) in one request, processed, queues empty "
        f"({time.perf_counter() - t_warm:.1f} s)",
        flush=True,
    )

    ping_ms = statistics.median(ping_round_trips(node_name)) * 1000
    direct_ms = statistics.median(direct_post_round_trips(receiver)) * 1000
    print(
        f"baseline: broker hop = control ping round trip to the worker through Redis, median of {PING_SAMPLES}: "
        f"{ping_ms:.1f} ms; HTTP delivery = signed POST to the receiver on a new connection, median of "
        f"{POST_SAMPLES}: {direct_ms:.1f} ms",
        flush=True,
    )

    worker_offset = logs["worker"].stat().st_size
    load_before = loadavg()
    cpu_before = {name: treecpu_seconds(p.pid) for name, p in processes.items()}
    busy_before = machine_busy_seconds()
    locks = LockSampler(args.database)
    locks.start()
    posts = breaches_send(web_port, setup.key, nodes, args.rate, args.connections)
    complete = receiver.wait_for(lambda arrivals: set(nodes) <= firing_nodes(arrivals), args.timeout)
    locks.stop()
    seconds = time.time() - min(p.sent for p in posts.values())
    cpu = {name: treecpu_seconds(p.pid) - cpu_before[name] for name, p in processes.items()}
    busy = machine_busy_seconds() - busy_before
    load_after = loadavg()
    time.sleep(args.settle)  # late duplicates (a sweeper's flush, a redelivery) are counted too
    verdict = judge(posts, receiver.snapshot())
    return Measured(
        posts=posts,
        verdict=verdict,
        complete=complete,
        ping_ms=ping_ms,
        direct_ms=direct_ms,
        stage_rows=stages(setup, posts, verdict),
        timings=task_timings(logs["worker"], worker_offset),
        errors=log_errors(logs["worker"], worker_offset),
        cpu=cpu,
        seconds=seconds,
        machine_busy=busy,
        load=(load_before, load_after),
        locks=locks,
        dead=[name for name, p in processes.items() if p.poll() is not None],
    )


def report(args: argparse.Namespace, m: Measured) -> int:
    """Print the figures; returns the exit status."""
    v = m.verdict
    latencies = list(v.latencies.values())
    sends = sorted(p.sent for p in m.posts.values())
    send_span = max(sends[-1] - sends[0], 1e-9)
    first_to_last = max(max((a.at for a in v.first_arrival.values()), default=sends[0]) - sends[0], 1e-9)
    rate = v.notifications / first_to_last
    achieved = (len(sends) - 1) / send_span
    print(
        f"timed: {len(sends)} breaching POSTs (value {BREACH:g}, one point each) in {send_span:.1f} s = "
        f"{achieved:.1f}/s (asked {args.rate:g}/s over {args.connections} connection(s)); ingest answered in "
        f"{summary_ms([p.answered - p.sent for p in m.posts.values()])}"
    )
    if achieved < 0.9 * args.rate:
        print(
            f"  NOTE: the pace was not kept (each connection waits for its answer): breaches came at "
            f"{achieved:.1f}/s, not {args.rate:g}/s, and the figures below are for that rate; "
            "--connections N holds the pace"
        )
    if latencies:
        print(
            f"latency, POST sent -> webhook received, {len(latencies)} of {len(sends)} nodes: "
            f"p50 {percentile(latencies, 50) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
            f"(min {min(latencies) * 1000:.0f} ms)"
        )
    else:
        print(f"latency: not one of {len(sends)} nodes was notified")
    print(
        f"  beside the baselines: broker hop {m.ping_ms:.1f} ms, HTTP delivery {m.direct_ms:.1f} ms "
        "(a notification takes three queue hops, ingest -> alerts -> webhooks, and one delivery)"
    )
    print(
        f"throughput: {v.notifications} firing notifications in {first_to_last:.1f} s from the first POST to the "
        f"last arrival = {rate:.1f} deliveries/s"
    )
    missing = ", ".join(v.missing[:10]) + (" ..." if len(v.missing) > 10 else "")
    print(
        f"checks: missing {len(v.missing)}{f' ({missing})' if missing else ''}, duplicate webhook-ids "
        f"{v.duplicate_ids}, nodes notified more than once {v.duplicate_nodes}, unexpected notifications "
        f"{v.unexpected}, signature failures {v.unverified} (listening {args.settle:g} s past the last)"
    )
    print("stages, per node, from the rows the pipeline wrote:")
    for name, values in m.stage_rows:
        early = sum(value < 0 for value in values)
        note = f" ({early} negative: beat's periodic evaluation fired them first)" if early else ""
        print(f"  {name:<36} {summary_ms(values)}{note}")
    print("worker task run times during the timed part (worker log), by total:")
    for name, values in sorted(m.timings.items(), key=lambda item: -sum(item[1])):
        print(f"  {name:<26} n={len(values):<4} {summary_ms(values)}, total {sum(values):.1f} s")
    waited = sum(m.locks.waits.values()) * m.locks.interval
    print(
        f"PostgreSQL lock waits during the timed part (sampled every {m.locks.interval * 1000:.0f} ms, "
        f"{m.locks.samples} samples): {waited:.1f} session-s"
        + (f"; sampling failed: {m.locks.error}" if m.locks.error else "")
        + (", by contended table and waiting statement:" if waited else "")
    )
    for (table, statement), count in m.locks.waits.most_common(8):
        print(f"  {count * m.locks.interval:6.1f} s  {table:<28} {statement}")
    if m.errors:
        print(f"worker log: {len(m.errors)} error lines during the timed part; the first: {m.errors[0][:300]}")
    cores = os.cpu_count() or 1
    print(
        f"cpu during the {m.seconds:.1f} s timed part: "
        + ", ".join(f"{name} {used:.1f} s" for name, used in m.cpu.items())
        + f"; the whole machine {m.machine_busy:.1f} of {cores * m.seconds:.1f} core-s ({cores} cores); "
        f"load average {m.load[0]} before, {m.load[1]} after"
    )
    problems = []
    if not m.complete:
        problems.append(f"not every node was notified within {args.timeout:g} s")
    if v.missing or v.duplicate_ids or v.duplicate_nodes or v.unexpected or v.unverified:
        problems.append("missing, duplicated, unexpected or unverified notifications (see checks)")
    if m.dead:
        problems.append(f"{', '.join(m.dead)} exited during the run")
    for problem in problems:
        print(f"FAILED: {problem}")

    def ms(q: float) -> str:
        return f"{percentile(latencies, q) * 1000:.0f}" if latencies else "nan"

    print(f"RESULT p50_ms={ms(50)} p95_ms={ms(95)} p99_ms={ms(99)} deliveries_per_s={rate:.1f}")
    return 1 if problems else 0


def main() -> int:
    args = parse_args()
    signal.alarm(args.time_limit)  # a hung stack ends the run, cleanly
    sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path
    web_port = free_port()
    env = configure_environment(args, web_port)
    tmp = tempfile.TemporaryDirectory(prefix="vigil-bench-alerts-")
    log_dir = args.log_dir or Path(tmp.name)
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = {name: log_dir / f"{name}.log" for name in ("web", "worker", "beat")}
    for log in logs.values():
        log.write_bytes(b"")
    receiver = Receiver()
    receiver.start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        measured = run(args, env, web_port, receiver, logs, processes)
    except BaseException:
        for name, log in logs.items():
            if log.stat().st_size:
                print(f"{name} log (tail):\n{_tail(log)}", file=sys.stderr)
        raise
    finally:
        processes_stop(processes.values())
        receiver.stop()
        from django.db import connections

        connections.close_all()
        redis_clear(args.redis_db)
        if not args.keep_db:
            database_reset(args.database, create=False)
        tmp.cleanup()
    return report(args, measured)


if __name__ == "__main__":
    run_main(main)
