"""`make bench`: points per second scored by the anomaly detector on one core, against a bare numpy rolling median.

No database, no Django: `analytics.detection` on plain arrays, in this one process, with
numpy's BLAS held to one thread (threadpoolctl), so every figure is per core.

1. Data (deterministic, `--seed`): `--series` (10,000) series of `--points` (1,440) points, one
   a minute, the measured day 2024-01-04 UTC. Three kinds, all with a daily cycle: request
   rates (night:day about 1:4, noise proportional to the level), CPU percent (additive noise,
   bounded to 0..100, two decimals) and latencies (lognormal noise). A share `--spikes` (5%)
   of the series gets one spike of ten standard deviations at a random minute.
2. Warm-up (not timed): the measured day must be scored by a warmed-up detector that has
   detected the daily seasonality, as in the steady state. Fitting 10,000 detectors on
   three days each would take longer than the measurement, so the warm-up is shared: a
   pool of `--pool` (50) series, each with its own parameters, is fitted on the three days
   before the measured day (2024-01-01..03); series i is pool member i % pool's pattern
   with its own noise, and is scored from that member's state. The run stops if a pooled
   state has not found the daily period.
3. Batch (timed): `detector.update(state, timestamps, values)` of the measured day of every
   series, one after the other (scores built and dropped, states kept, as a worker would
   persist them): detect_pps_per_core = points / seconds. The baseline, in the same run on
   the same arrays: `np.median(sliding_window_view(values, 60), axis=1)` per series, the
   bare rolling median a detector could not do less than. Best of `--rounds` for both,
   alternating, since a shared 2-core machine is noisy; each also prints the CPU share this
   process got and the rate per CPU second (steadier when another process competes), and a
   warning follows the table when a share was under 90%.
4. Streaming (timed): `--stream-calls` (2,000) one-point `update` calls, spread over 20
   series, each continuing from its state at the end of the measured day with the minutes
   that follow it: stream_us_per_point. Also the JSON round trip a worker pays per batch
   (`json.loads` of the stored state, `json.dumps` of the new one, as Django's JSONField).
5. Memory: state_bytes_per_series = mean length of the JSON of the 10,000 states at the end
   of the measured day (what PostgreSQL stores, before TOAST compression); and the Python
   memory of those states loaded (tracemalloc over `json.loads` of all of them).

The last line is machine-readable:
`RESULT detect_pps_per_core=<n> baseline_pps=<n> ratio=<r> stream_us_per_point=<n> state_bytes_per_series=<n>`,
ratio being detect / baseline (target: at least 0.33).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path

from analytics.detection import Detector, State, detector_create  # noqa: E402

DAY = 86_400
STEP = 60  # seconds between points
START = 1_704_326_400  # 2024-01-04 00:00 UTC, the measured day (a Thursday)
WARM_DAYS = 3
BASELINE_WINDOW = 60  # the detector's default window
STREAM_SERIES = 20
KINDS = ("requests", "cpu", "latency")
TARGET = 1 / 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000, help="series scored (default 10000)")
    parser.add_argument("--points", type=int, default=1_440, help="points per series, one a minute (default 1440)")
    parser.add_argument("--pool", type=int, default=50, help="distinct warmed-up states shared by the series (50)")
    parser.add_argument("--detector", default="ensemble", help="registered detector (default ensemble)")
    parser.add_argument("--sensitivity", default="medium", help="(default medium)")
    parser.add_argument("--spikes", type=float, default=0.05, help="share of series with one spike (default 0.05)")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each side, best kept (default 2)")
    parser.add_argument("--stream-calls", type=int, default=2_000, help="one-point updates timed (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="(default 0)")
    parser.add_argument("--time-limit", type=int, default=900, help="abort after this many seconds (default 900)")
    args = parser.parse_args()
    if min(args.series, args.pool, args.rounds, args.stream_calls) < 1 or args.points < BASELINE_WINDOW:
        parser.error(f"counts must be at least 1 and --points at least {BASELINE_WINDOW}")
    if not 0.0 <= args.spikes <= 1.0:
        parser.error("--spikes is a share, 0..1")
    return args


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One pool member's pattern: the normal level and noise sd at any time."""

    kind: str
    a: float  # requests: peak rate; cpu: base percent; latency: median ms at night
    b: float  # requests, latency: noise (cv, lognormal sigma); cpu: daily amplitude
    peak_hour: float
    sd: float  # cpu: additive noise sd

    @classmethod
    def draw(cls, k: int, seed: int) -> Kind:
        rng = np.random.default_rng([seed, 0, k])
        kind = KINDS[k % len(KINDS)]
        if kind == "requests":
            return cls(kind, rng.uniform(200, 5000), rng.uniform(0.03, 0.06), rng.uniform(13, 17), 0.0)
        if kind == "cpu":
            return cls(kind, rng.uniform(15, 30), rng.uniform(20, 30), rng.uniform(12, 16), rng.uniform(1.5, 2.5))
        return cls(kind, rng.uniform(50, 300), rng.uniform(0.1, 0.2), rng.uniform(13, 17), 0.0)

    def values(self, ts: np.ndarray, rng: np.random.Generator, spike: bool) -> np.ndarray:
        daily = 0.5 * (1.0 + np.cos(2 * np.pi * ((ts % DAY) / 3600 - self.peak_hour) / 24))
        z = rng.standard_normal(len(ts))
        if spike:
            z[rng.integers(len(ts))] += 10.0
        if self.kind == "requests":
            return self.a * (0.25 + 0.75 * daily) * (1.0 + self.b * z)
        if self.kind == "cpu":
            return np.round(np.clip(self.a + self.b * daily + self.sd * z, 0.0, 100.0), 2)
        return self.a * (1.0 + 0.5 * daily) * np.exp(self.b * z)


def measured_day(args: argparse.Namespace, kinds: list[Kind], ts: np.ndarray) -> tuple[np.ndarray, int]:
    """(values[series, point], series with a spike): series i follows kinds[i % pool]."""
    values = np.empty((args.series, len(ts)))
    spiked = 0
    for i in range(args.series):
        rng = np.random.default_rng([args.seed, 1, i])
        spike = bool(rng.random() < args.spikes)
        spiked += spike
        values[i] = kinds[i % len(kinds)].values(ts, rng, spike)
    return values, spiked


# --- the timed parts -------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: float = math.inf
    cpu_share: float = 1.0

    def keep_best(self, wall: float, cpu: float) -> None:
        if wall < self.seconds:
            self.seconds, self.cpu_share = wall, cpu / wall


def batch(
    detector: Detector, pool: list[State], ts: np.ndarray, values: np.ndarray
) -> tuple[list[State], int, float, float]:
    """Score every series' day from its pool state: (new states, anomalous points, wall s, CPU s)."""
    states: list[State] = []
    anomalous = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(len(values)):
        scores, state = detector.update(pool[i % len(pool)], ts, values[i])
        anomalous += int(scores.anomalous.sum())
        states.append(state)
    return states, anomalous, time.perf_counter() - wall, time.process_time() - cpu


def baseline(values: np.ndarray) -> tuple[float, float]:
    """The bare rolling median of every series: (wall s, CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for row in values:
        np.median(sliding_window_view(row, BASELINE_WINDOW), axis=1)
    return time.perf_counter() - wall, time.process_time() - cpu


def stream(detector: Detector, starts: list[State], ts: np.ndarray, values: np.ndarray) -> tuple[float, float, int]:
    """One-point updates: every series in turn, the next minute each time: (wall s, CPU s, calls)."""
    states = list(starts)
    wall, cpu = time.perf_counter(), time.process_time()
    for j in range(values.shape[1]):
        for i, state in enumerate(states):
            states[i] = detector.update(state, ts[j : j + 1], values[i, j : j + 1])[1]
    return time.perf_counter() - wall, time.process_time() - cpu, values.size


def json_round_trip(documents: list[str]) -> tuple[float, float]:
    """loads then dumps of each stored state (what a worker pays per batch): (wall s, CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for document in documents:
        json.dumps(json.loads(document))
    return time.perf_counter() - wall, time.process_time() - cpu


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    signal.alarm(args.time_limit)
    t_run = time.perf_counter()
    detector = detector_create(args.detector, sensitivity=args.sensitivity)

    t_setup = time.perf_counter()
    kinds = [Kind.draw(k, args.seed) for k in range(args.pool)]
    ts = START + STEP * np.arange(args.points, dtype=np.float64)
    values, spiked = measured_day(args, kinds, ts)
    warm_ts = START - WARM_DAYS * DAY + STEP * np.arange(WARM_DAYS * DAY // STEP, dtype=np.float64)
    t_warm = time.perf_counter()
    pool = [
        detector.fit(warm_ts, kind.values(warm_ts, np.random.default_rng([args.seed, 2, k]), False))
        for k, kind in enumerate(kinds)
    ]
    warm_seconds = time.perf_counter() - t_warm
    periods = [state["baseline"]["period"] for state in pool]
    print(
        f"setup: {args.series:,} series x {args.points:,} points ({values.size:,}), one a minute from "
        f"2024-01-04 00:00 UTC; {len(kinds)} distinct patterns ({', '.join(KINDS)}), {spiked} series with a spike; "
        f"{args.pool} states fitted on {WARM_DAYS} days ({len(warm_ts):,} points each) in {warm_seconds:.1f} s "
        f"({args.pool * len(warm_ts) / warm_seconds:,.0f} points/s), daily period found in "
        f"{periods.count(float(DAY))}/{args.pool}; set-up {time.perf_counter() - t_setup:.1f} s",
        flush=True,
    )
    if periods.count(float(DAY)) != args.pool:
        print("setup: a pooled state has not found the daily period; the benchmark would not be steady state")
        return 1

    # Alternating rounds, best kept for each side (as bench/ingest.py does with COPY).
    detect, bare = Timing(), Timing()
    for _ in range(args.rounds):
        states, anomalous, wall, cpu = batch(detector, pool, ts, values)
        detect.keep_best(wall, cpu)
        bare.keep_best(*baseline(values))
    detect_pps, baseline_pps = values.size / detect.seconds, values.size / bare.seconds
    ratio = detect_pps / baseline_pps
    scored_periods = sum(state["baseline"]["period"] == DAY for state in states)

    stream_ts = ts[-1] + STEP * np.arange(1, -(-args.stream_calls // STREAM_SERIES) + 1, dtype=np.float64)
    n_stream = min(STREAM_SERIES, args.series, args.stream_calls)
    stream_values = np.vstack(
        [
            kinds[i % len(kinds)].values(stream_ts, np.random.default_rng([args.seed, 3, i]), False)
            for i in range(n_stream)
        ]
    )
    streaming = Timing()
    for _ in range(args.rounds):
        wall, cpu, calls = stream(detector, states[:n_stream], stream_ts, stream_values)
        streaming.keep_best(wall, cpu)
    stream_us = streaming.seconds / calls * 1e6

    documents = [json.dumps(state) for state in states]
    state_bytes = sum(map(len, documents)) / len(documents)
    round_trip = Timing()
    for _ in range(args.rounds):
        round_trip.keep_best(*json_round_trip(documents))
    json_us = round_trip.seconds / len(documents) * 1e6
    del states
    tracemalloc.start()
    loaded = [json.loads(document) for document in documents]
    loaded_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del loaded

    per_series_ms = detect.seconds / args.series * 1000
    rows = [
        ("", "points/s per core", "per CPU second", "per series", "CPU share", ""),
        (
            f"detector {args.detector}/{args.sensitivity}",
            f"{detect_pps:,.0f}",
            f"{detect_pps / detect.cpu_share:,.0f}",
            f"{per_series_ms:.2f} ms",
            f"{detect.cpu_share:.0%}",
            f"{anomalous:,} anomalous points, {scored_periods:,}/{args.series:,} states daily after",
        ),
        (
            f"baseline np.median(window {BASELINE_WINDOW})",
            f"{baseline_pps:,.0f}",
            f"{baseline_pps / bare.cpu_share:,.0f}",
            f"{bare.seconds / args.series * 1000:.2f} ms",
            f"{bare.cpu_share:.0%}",
            f"ratio detect/baseline {ratio:.2f} (target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'NOT met'}; "
            f"per CPU second {ratio * bare.cpu_share / detect.cpu_share:.2f})",
        ),
        (
            "streaming, one point per update",
            f"{1e6 / stream_us:,.0f}",
            f"{1e6 / stream_us / streaming.cpu_share:,.0f}",
            f"{stream_us:,.0f} us/point",
            f"{streaming.cpu_share:.0%}",
            f"{calls:,} calls over {n_stream} series; {stream_us * detect_pps / 1e6:.0f}x a batched point",
        ),
        (
            "state JSON loads + dumps",
            "",
            "",
            f"{json_us:,.0f} us/state",
            f"{round_trip.cpu_share:.0%}",
            f"{json_us / 1000 / per_series_ms:.0%} of a day's batch, {json_us / stream_us:.0%} of a streamed point",
        ),
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    print(f"timed: best of {args.rounds}, single process, BLAS limited to one thread")
    for row in rows:
        cells = [
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row[:5], widths, strict=True))
        ]
        print(("  " + "  ".join([*cells, row[5]])).rstrip())
    print(
        f"memory: state JSON {state_bytes:,.0f} bytes per series on average ({state_bytes * args.series / 2**20:,.1f} "
        f"MiB for {args.series:,}); the {args.series:,} states loaded in Python (json.loads, tracemalloc) "
        f"{loaded_bytes / 2**20:,.1f} MiB, {loaded_bytes / args.series:,.0f} bytes each"
    )
    busy = [t.cpu_share for t in (detect, bare, streaming, round_trip)]
    print(f"total: {time.perf_counter() - t_run:.0f} s")
    if min(busy) < 0.9:
        print(
            f"WARNING: this process got as little as {min(busy):.0%} of a core during a timed part: "
            "these figures are not from a quiet machine"
        )
    print(
        f"RESULT detect_pps_per_core={detect_pps:.0f} baseline_pps={baseline_pps:.0f} ratio={ratio:.2f} "
        f"stream_us_per_point={stream_us:.0f} state_bytes_per_series={state_bytes:.0f}"
    )
    return 0


def _timed_out(signum: int, frame: Any) -> None:
    raise TimeoutError("the benchmark exceeded --time-limit")


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, _timed_out)
    try:
        with threadpool_limits(limits=1):  # per core: no BLAS thread on the other core
            sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
