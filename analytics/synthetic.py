"""Labelled metric series for evaluating detectors: a synthetic suite and labelled CSVs.

`synthetic_suite(seed=...)` builds about 40 realistic series (web traffic with daily and
weekly seasonality, CPU, trends, counters, heavy-tailed latency, small integer queue
lengths, constant gauges) at 10 s, 60 s and 300 s, some irregularly sampled with gaps, and
injects anomalies of every label of `analytics.detection.LABELS` into most of them, with
their ground-truth windows. About 15 series have no anomaly: they measure false alarms.

Sizes are in units of the series' local noise sd (a robust sd of the normal noise within
two hours of the anomaly), so an injected anomaly is meaningfully anomalous wherever it
lands (a night dip on proportional-noise traffic is as surprising as a day dip), but not
trivially huge. The truth window starts at the first anomalous sample; it spans the
anomaly's duration, except for a persistent level shift, whose window is its first
`LEVEL_SHIFT_WINDOW` samples (as in NAB, a window is about detecting the event's start,
not about flagging the new normal forever).

Deterministic: every series draws from its own `numpy.random.Generator` seeded with
(seed, series number), so the same seed gives the same arrays, and changing one series
does not change the others.

`load_labelled_csv` / `load_labelled_folder` read real data labelled point by point
(`timestamp,value,label` with label 0/1, as NAB-style exports), `read_series_csv` is the
shared strict parser (also used by `manage.py score_csv`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

DAY = 86_400.0
HOUR = 3_600.0
WEEK = 7 * DAY
# 2024-01-01 00:00 UTC, a Monday: weekly patterns line up with the calendar.
EPOCH = 1_704_067_200.0
LEVEL_SHIFT_WINDOW = 30  # samples in the truth window of a persistent change's start
WARMUP_DAYS = 3.0
WEEKLY_WARMUP_DAYS = 15.0  # two weeks to learn a weekly pattern, then a day of margin
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class TruthWindow:
    """A labelled anomaly: Unix seconds, both ends inclusive (timestamps of samples)."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class LabelledSeries:
    """A series with its ground truth. `interval` is the nominal sampling interval (s)."""

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    truth: tuple[TruthWindow, ...]
    interval: float

    @property
    def days(self) -> float:
        """The span the series covers, in days (one interval per sample)."""
        if not len(self.timestamps):
            return 0.0
        return float(self.timestamps[-1] - self.timestamps[0] + self.interval) / DAY


# --- Normal behaviour -------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large |x| (the test suite turns warnings into errors).
    return 0.5 * (1.0 + np.tanh(x / 2.0))


def _daily(ts: np.ndarray, peak_hour: float = 15.0) -> np.ndarray:
    """Smooth daily activity in [0, 1]: 0 twelve hours before `peak_hour`, 1 at it."""
    hours = (ts % DAY) / HOUR
    return 0.5 * (1.0 + np.cos(2 * np.pi * (hours - peak_hour) / 24.0))


def _weekend(ts: np.ndarray) -> np.ndarray:
    """1 on Saturday and Sunday, 0 on weekdays, with two-hour transitions around midnight."""
    position = (ts - EPOCH) % WEEK
    width = HOUR
    return (
        _sigmoid((position - 5 * DAY) / width)
        - _sigmoid((position - 7 * DAY) / width)
        + (1.0 - _sigmoid(position / width))  # the end of the previous weekend, across the wrap
    )


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) noise: real metrics' noise is mildly autocorrelated."""
    white = rng.standard_normal(n)
    if phi == 0.0:
        return white
    noise: np.ndarray = lfilter([1.0], [1.0, -phi], white)
    return noise * math.sqrt(1.0 - phi * phi)


@dataclass
class _Draft:
    """The mutable working arrays of one series while it is built (internal).

    `values = noise model(level, z)`; `pattern(t)` is the normal level at any time, which a
    seasonal break borrows from another time of day.
    """

    ts: np.ndarray
    pattern: Callable[[np.ndarray], np.ndarray]
    noise: str  # "additive" (scale = sd), "proportional" (cv), "lognormal" (sigma), "quantised" (sd)
    scale: float
    z: np.ndarray
    lo: float = 0.0
    hi: float = math.inf
    seasonal: bool = False  # has a daily pattern strong enough for a seasonal break
    decimals: int | None = None
    counter: bool = False
    level: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.level = self.pattern(self.ts)

    @property
    def multiplicative(self) -> bool:
        """Whether changes scale the level (noise proportional to it) rather than add to it."""
        return self.noise in ("proportional", "lognormal")

    def observe(self, level: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values from a level and standard noise, clipped to the bounds and rounded."""
        if self.noise == "additive":
            values = level + self.scale * z
        elif self.noise == "proportional":
            values = level * (1.0 + self.scale * z)
        elif self.noise == "lognormal":
            values = level * np.exp(self.scale * z)
        else:
            values = np.rint(level + self.scale * z)
        values = np.clip(values, self.lo, self.hi) + 0.0  # + 0.0: no -0.0 from rint
        return values if self.decimals is None else np.round(values, self.decimals)


def _robust_sd(resid: np.ndarray) -> float:
    centre = np.median(resid)
    sd = float(np.median(np.abs(resid - centre))) * MAD_TO_SD
    if sd <= 0.0:  # quantised series have a MAD of 0 while they do vary
        sd = float(np.std(resid))
    return sd


def _local_sd(draft: _Draft, i: int, z0: np.ndarray) -> float:
    """The robust sd of the normal noise within two hours of sample i, at the current level."""
    lo, hi = np.searchsorted(draft.ts, [draft.ts[i] - 2 * HOUR, draft.ts[i] + 2 * HOUR])
    level = draft.level[lo:hi]
    sd = _robust_sd(draft.observe(level, z0[lo:hi]) - level)
    return sd if sd > 0.0 else 1e-3 * max(abs(float(draft.level[i])), 1.0)


# --- Series kinds -----------------------------------------------------------------------


def _web(ts: np.ndarray, rng: np.random.Generator, *, weekly: bool) -> _Draft:
    """Requests per interval: smooth daily cycle, night:day about 1:4, noise proportional."""
    peak = rng.uniform(200.0, 5000.0)
    peak_hour = rng.uniform(13.0, 17.0)
    weekend = rng.uniform(0.5, 0.7)

    def pattern(t: np.ndarray) -> np.ndarray:
        level = peak * (0.25 + 0.75 * _daily(t, peak_hour))
        return level * (1.0 - (1.0 - weekend) * _weekend(t)) if weekly else level

    z = _ar1(rng, len(ts), 0.3)
    return _Draft(ts, pattern, "proportional", rng.uniform(0.03, 0.06), z, seasonal=True)


def _cpu(ts: np.ndarray, rng: np.random.Generator, *, daily: bool) -> _Draft:
    """CPU percent, bounded to 0..100, optionally following the daily load."""
    # A flat CPU sits higher, so a level shift down still leaves room for a dip above 0.
    base = rng.uniform(15.0, 30.0) if daily else rng.uniform(30.0, 45.0)
    amplitude = rng.uniform(20.0, 30.0) if daily else 0.0
    peak_hour = rng.uniform(12.0, 16.0)

    def pattern(t: np.ndarray) -> np.ndarray:
        return base + amplitude * _daily(t, peak_hour)

    z = _ar1(rng, len(ts), 0.6)
    return _Draft(ts, pattern, "additive", rng.uniform(1.5, 2.5), z, hi=100.0, seasonal=daily, decimals=2)


def _trend(ts: np.ndarray, rng: np.random.Generator) -> _Draft:
    """Slow growth (1-3 % a day) with a weak daily ripple and additive noise."""
    start = rng.uniform(100.0, 1000.0)
    growth = rng.uniform(0.01, 0.03)
    t0 = float(ts[0])

    def pattern(t: np.ndarray) -> np.ndarray:
        return start * (1.0 + growth * (t - t0) / DAY) * (0.95 + 0.1 * _daily(t))

    z = _ar1(rng, len(ts), 0.4)
    return _Draft(ts, pattern, "additive", start * rng.uniform(0.02, 0.04), z)


def _latency(ts: np.ndarray, rng: np.random.Generator) -> _Draft:
    """Response time in ms: lognormal around a median that rises a little with load."""
    median = rng.uniform(80.0, 300.0)

    def pattern(t: np.ndarray) -> np.ndarray:
        return median * (1.0 + 0.3 * _daily(t))

    z = _ar1(rng, len(ts), 0.2)
    return _Draft(ts, pattern, "lognormal", rng.uniform(0.2, 0.3), z, decimals=1)


def _queue(ts: np.ndarray, rng: np.random.Generator) -> _Draft:
    """Queue length: small integers, mostly 0..5."""
    mean = rng.uniform(0.8, 1.5)

    def pattern(t: np.ndarray) -> np.ndarray:
        return mean + 0.5 * _daily(t)

    return _Draft(ts, pattern, "quantised", rng.uniform(0.8, 1.1), rng.standard_normal(len(ts)))


def _constantish(ts: np.ndarray, rng: np.random.Generator) -> _Draft:
    """A gauge that barely moves: a constant with tiny noise."""
    value = rng.uniform(10.0, 1000.0)

    def pattern(t: np.ndarray) -> np.ndarray:
        return np.full(len(t), value)

    z = rng.standard_normal(len(ts))
    return _Draft(ts, pattern, "additive", value * rng.uniform(0.0005, 0.002), z)


def _constant(ts: np.ndarray, rng: np.random.Generator) -> _Draft:
    """An exactly constant gauge (replica count): no detector may alarm on it."""
    value = float(rng.integers(1, 10))

    def pattern(t: np.ndarray) -> np.ndarray:
        return np.full(len(t), value)

    return _Draft(ts, pattern, "additive", 0.0, np.zeros(len(ts)))


def _counter(ts: np.ndarray, rng: np.random.Generator) -> _Draft:
    """A monotonically increasing counter (total requests); its increments follow the day."""
    rate = rng.uniform(5.0, 50.0)  # per second at the daily peak

    def pattern(t: np.ndarray) -> np.ndarray:
        return rate * (0.25 + 0.75 * _daily(t))

    return _Draft(ts, pattern, "proportional", 0.05, rng.standard_normal(len(ts)), counter=True)


KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], _Draft]] = {
    "web_daily": lambda ts, rng: _web(ts, rng, weekly=False),
    "web_weekly": lambda ts, rng: _web(ts, rng, weekly=True),
    "cpu_daily": lambda ts, rng: _cpu(ts, rng, daily=True),
    "cpu_flat": lambda ts, rng: _cpu(ts, rng, daily=False),
    "trend": _trend,
    "latency": _latency,
    "queue": _queue,
    "constantish": _constantish,
    "constant": _constant,
    "counter": _counter,
}


@dataclass(frozen=True)
class _Spec:
    kind: str
    interval: float
    anomalies: tuple[str, ...] = ()
    irregular: bool = False

    @property
    def days(self) -> float:
        return 28.0 if self.kind == "web_weekly" else 14.0

    @property
    def warmup_days(self) -> float:
        return WEEKLY_WARMUP_DAYS if self.kind == "web_weekly" else WARMUP_DAYS


# The suite: 15 clean series, then 25 with 2-4 anomalies; every label appears >= 7 times.
SUITE: tuple[_Spec, ...] = (
    _Spec("web_daily", 60),
    _Spec("web_daily", 10),
    _Spec("web_daily", 60, irregular=True),
    _Spec("web_weekly", 60),
    _Spec("web_weekly", 300),
    _Spec("cpu_daily", 60),
    _Spec("cpu_flat", 300),
    _Spec("trend", 60),
    _Spec("counter", 60),
    _Spec("counter", 60, irregular=True),
    _Spec("latency", 60),
    _Spec("latency", 60, irregular=True),
    _Spec("queue", 60),
    _Spec("constantish", 60),
    _Spec("constant", 60),
    _Spec("web_daily", 60, ("spike", "seasonal_break", "level_shift")),
    _Spec("web_daily", 60, ("dip", "variance_change", "seasonal_break", "trend_change")),
    _Spec("web_daily", 10, ("seasonal_break", "spike", "flatline")),
    _Spec("web_daily", 60, ("dip", "seasonal_break", "level_shift"), irregular=True),
    _Spec("web_daily", 300, ("variance_change", "flatline", "spike")),
    _Spec("web_weekly", 60, ("seasonal_break", "dip")),
    _Spec("web_weekly", 60, ("level_shift", "spike", "variance_change")),
    _Spec("web_weekly", 60, ("trend_change", "seasonal_break", "flatline"), irregular=True),
    _Spec("cpu_daily", 60, ("spike", "flatline", "variance_change")),
    _Spec("cpu_flat", 10, ("level_shift", "dip")),
    _Spec("cpu_daily", 60, ("trend_change", "spike", "seasonal_break")),
    _Spec("cpu_daily", 60, ("flatline", "variance_change", "dip", "trend_change"), irregular=True),
    _Spec("trend", 60, ("trend_change", "spike")),
    _Spec("trend", 300, ("dip", "flatline", "level_shift")),
    _Spec("counter", 60, ("flatline", "flatline")),
    _Spec("latency", 60, ("spike", "variance_change", "level_shift")),
    _Spec("latency", 60, ("spike", "trend_change")),
    _Spec("latency", 300, ("variance_change", "spike", "flatline")),
    _Spec("latency", 60, ("level_shift", "spike"), irregular=True),
    _Spec("queue", 60, ("spike", "level_shift")),
    _Spec("queue", 60, ("spike", "spike", "trend_change"), irregular=True),
    _Spec("constantish", 60, ("spike", "dip", "level_shift")),
    _Spec("trend", 60, ("variance_change", "dip"), irregular=True),
    _Spec("cpu_daily", 300, ("spike", "level_shift", "flatline")),
    _Spec("web_daily", 60, ("trend_change", "spike", "dip")),
)


def _timestamps(spec: _Spec, rng: np.random.Generator) -> np.ndarray:
    """A regular grid, or for irregular series a jittered one with missing data."""
    n = round(spec.days * DAY / spec.interval)
    ts = EPOCH + spec.interval * np.arange(n, dtype=np.float64)
    if not spec.irregular:
        return ts
    # Jitter below half an interval keeps the order; timestamps are whole milliseconds.
    ts = np.round(ts + rng.uniform(-0.3, 0.3, n) * spec.interval, 3)
    keep = rng.random(n) >= 0.01  # one point in a hundred lost
    for _ in range(int(rng.integers(3, 7))):  # a few outages of 10-90 minutes
        start = rng.uniform(ts[0] + DAY, ts[-1] - DAY)
        keep &= (ts < start) | (ts > start + rng.uniform(10, 90) * 60)
    return ts[keep]


# --- Anomalies --------------------------------------------------------------------------


class _NoRoom(Exception):
    """The drawn position cannot host the anomaly (bounds); draw another."""


@dataclass(frozen=True)
class _Placed:
    label: str
    first: int  # first anomalous sample
    last: int  # last sample of the truth window
    apply: Callable[[], None]


def _end_index(ts: np.ndarray, i: int, seconds: float) -> int:
    """The last sample within `seconds` of sample i (at least i)."""
    return max(i, int(np.searchsorted(ts, ts[i] + seconds, side="right")) - 1)


def _persistent_change(
    draft: _Draft, i: int, j: int, size_sd: float, z0: np.ndarray, rng: np.random.Generator
) -> Callable[[], None]:
    """A change reached linearly between samples i and j (a step when i == j), kept to the end.

    The sign is random where both fit within the series' bounds; otherwise the one that fits.
    """
    sd = _local_sd(draft, i, z0)
    level_after = draft.level[i:]
    base = float(draft.level[i])
    signs = [1.0, -1.0] if rng.random() < 0.5 else [-1.0, 1.0]
    for sign in signs:
        if draft.multiplicative:
            factor = 1.0 + sign * size_sd * sd / base
            if factor < 0.3:  # keep positive metrics well above 0
                continue
        else:
            delta = sign * size_sd * sd
            # Room for later spikes and dips: 8 sd to either bound.
            if level_after.min() + delta - 8 * sd < draft.lo or level_after.max() + delta + 8 * sd > draft.hi:
                continue
        break
    else:
        raise _NoRoom

    def apply() -> None:
        t = draft.ts[i:]
        span = max(float(draft.ts[j] - draft.ts[i]), 1e-9)
        ramp = np.clip((t - t[0]) / span, 0.0, 1.0) if j > i else np.ones(len(t))
        if draft.multiplicative:
            draft.level[i:] *= 1.0 + ramp * (factor - 1.0)
        else:
            draft.level[i:] += ramp * delta

    return apply


def _place(draft: _Draft, label: str, t_from: float, t_to: float, z0: np.ndarray, rng: np.random.Generator) -> _Placed:
    """Draw a position in [t_from, t_to) for one anomaly; return its samples and its effect."""
    ts, n = draft.ts, len(draft.ts)
    for _ in range(200):
        start = rng.uniform(t_from, t_to)
        if label == "seasonal_break":
            # Start in the busy part of a day and borrow the level of another time of day.
            day = math.floor((start - EPOCH) / DAY)
            start = EPOCH + day * DAY + rng.uniform(8.0, 14.0) * HOUR
            if not t_from <= start < t_to:
                continue
        i = int(np.searchsorted(ts, start))
        if i < 1 or i >= n - 1:
            continue
        try:
            return _anomaly(draft, label, i, z0, rng)
        except _NoRoom:
            continue
    raise RuntimeError(f"no room for a {label} in [{t_from}, {t_to})")


def _anomaly(draft: _Draft, label: str, i: int, z0: np.ndarray, rng: np.random.Generator) -> _Placed:
    """The anomaly `label` starting at sample i, sized in the local noise sd; `_NoRoom` if
    it cannot fit there (bounds, or too weak a seasonal contrast)."""
    ts = draft.ts
    if label in ("spike", "dip"):
        j = min(i + int(rng.integers(1, 4)) - 1, len(ts) - 1)
        sd = _local_sd(draft, i, z0)
        low = 9.0 if draft.noise == "lognormal" else 6.0  # a heavy tail reaches 6 sd naturally
        if label == "spike":
            room = (draft.hi - float(draft.level[i : j + 1].max())) / sd
        else:
            room = (float(draft.level[i : j + 1].min()) - draft.lo) / sd
        if room < low:
            raise _NoRoom
        size = rng.uniform(low, min(15.0, room)) * (1.0 if label == "spike" else -1.0)

        def apply() -> None:
            # The value is the local normal level plus the size, without noise.
            draft.level[i : j + 1] += size * sd
            draft.z[i : j + 1] = 0.0

        return _Placed(label, i, j, apply)
    if label == "level_shift":
        apply = _persistent_change(draft, i, i, rng.uniform(5.0, 10.0), z0, rng)
        return _Placed(label, i, min(i + LEVEL_SHIFT_WINDOW - 1, len(ts) - 1), apply)
    if label == "trend_change":
        j = _end_index(ts, i, rng.uniform(2.0, 6.0) * HOUR)
        if j - i < 3:
            raise _NoRoom
        return _Placed(label, i, j, _persistent_change(draft, i, j, rng.uniform(8.0, 15.0), z0, rng))
    if label == "variance_change":
        j = _end_index(ts, i, rng.uniform(2.0, 6.0) * HOUR)
        factor = rng.uniform(4.0, 6.0)

        def apply() -> None:
            draft.z[i : j + 1] *= factor

        return _Placed(label, i, j, apply)
    if label == "seasonal_break":
        j = _end_index(ts, i, rng.uniform(2.0, 4.0) * HOUR)
        shift = float(rng.choice([-12.0, -10.0, -8.0, 8.0, 10.0, 12.0])) * HOUR
        normal = draft.pattern(ts[i : j + 1])
        borrowed = draft.pattern(ts[i : j + 1] + shift)
        # Proportional series: the same ratio to the level, so an earlier shift carries over.
        change = draft.level[i : j + 1] * (borrowed / normal - 1.0) if draft.multiplicative else borrowed - normal
        if not draft.seasonal or float(np.median(np.abs(change))) < 5.0 * _local_sd(draft, i, z0):
            raise _NoRoom

        def apply() -> None:
            # The level of another time of day.
            draft.level[i : j + 1] += change

        return _Placed(label, i, j, apply)
    if label == "flatline":
        j = min(i + int(rng.integers(60, 181)) - 1, len(ts) - 1)
        return _Placed(label, i, j, lambda: None)  # applied on the final values
    raise ValueError(f"unknown anomaly label {label!r}")


def _series(number: int, spec: _Spec, seed: int) -> LabelledSeries:
    rng = np.random.default_rng([seed, number])
    ts = _timestamps(spec, rng)
    draft = KINDS[spec.kind](ts, rng)
    z0 = draft.z.copy()

    # One anomaly per equal slot of the time after warm-up, two hours clear of the slot
    # edges and with a margin before the end, so anomalies never overlap.
    t_first = float(ts[0]) + spec.warmup_days * DAY
    t_last = float(ts[-1]) - DAY / 2
    edges = np.linspace(t_first, t_last, len(spec.anomalies) + 1)
    # Place and apply in time order, so each anomaly is sized against the level as it is by
    # then (after an earlier level shift, say); flatlines act on the final values.
    placed = []
    for k, label in enumerate(spec.anomalies):
        anomaly = _place(draft, label, edges[k] + 2 * HOUR, edges[k + 1] - 18 * HOUR, z0, rng)
        anomaly.apply()
        placed.append(anomaly)
    flatlines = [p for p in placed if p.label == "flatline"]

    if draft.counter:
        dt = np.diff(ts, prepend=ts[0] - (ts[1] - ts[0]))
        increments = np.maximum(draft.observe(draft.level, draft.z), 0.0) * dt
        for p in flatlines:
            increments[p.first : p.last + 1] = 0.0  # the counter stops counting
        values = np.round(rng.uniform(1e5, 1e7) + np.cumsum(increments))
    else:
        values = draft.observe(draft.level, draft.z)
        for p in flatlines:
            values[p.first : p.last + 1] = values[p.first - 1]

    truth = tuple(TruthWindow(float(ts[p.first]), float(ts[p.last]), p.label) for p in placed)
    suffix = "_irregular" if spec.irregular else ""
    name = f"{number:02d}_{spec.kind}_{spec.interval:g}s{suffix}"
    return LabelledSeries(name=name, timestamps=ts, values=values, truth=truth, interval=float(spec.interval))


def synthetic_suite(*, seed: int = 0) -> list[LabelledSeries]:
    """About 40 labelled series (see the module docstring); the same seed, the same arrays."""
    return [_series(number, spec, seed) for number, spec in enumerate(SUITE)]


# --- CSV --------------------------------------------------------------------------------


class CsvFormatError(ValueError):
    """A CSV that is not `timestamp,value[,...]`; the message names the line."""


@dataclass(frozen=True)
class CsvSeries:
    """The rows of a series CSV in file order; `raw_timestamps` as written in the file."""

    raw_timestamps: tuple[str, ...]
    timestamps: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None


def parse_timestamp(text: str) -> float:
    """Unix seconds from Unix seconds or ISO 8601 (naive means UTC)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_series_csv(path: str | Path) -> CsvSeries:
    """Parse a CSV with a header naming `timestamp` and `value` (and optionally `label`).

    Other columns are ignored. An empty value is missing data (NaN); anything else that is
    not a number, a timestamp that is neither Unix seconds nor ISO 8601, or a label other
    than 0/1 raises `CsvFormatError` naming the line. Raises `FileNotFoundError` as open().
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        if "timestamp" not in header or "value" not in header:
            raise CsvFormatError(f"{path}: line 1: expected a header with columns timestamp,value; got {header}")
        ts_col, value_col = header.index("timestamp"), header.index("value")
        label_col = header.index("label") if "label" in header else None
        needed = max(ts_col, value_col, label_col or 0) + 1
        raw: list[str] = []
        timestamps: list[float] = []
        values: list[float] = []
        labels: list[int] = []
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < needed:
                raise CsvFormatError(f"{path}: line {line}: expected {needed} columns, got {len(row)}")
            try:
                timestamps.append(parse_timestamp(row[ts_col]))
            except ValueError:
                raise CsvFormatError(f"{path}: line {line}: unparseable timestamp {row[ts_col]!r}") from None
            cell = row[value_col].strip()
            try:
                values.append(float(cell) if cell else math.nan)
            except ValueError:
                raise CsvFormatError(f"{path}: line {line}: unparseable value {row[value_col]!r}") from None
            if label_col is not None:
                flag = row[label_col].strip()
                if flag not in ("0", "1"):
                    raise CsvFormatError(f"{path}: line {line}: label must be 0 or 1, got {flag!r}")
                labels.append(int(flag))
            raw.append(row[ts_col])
    return CsvSeries(
        raw_timestamps=tuple(raw),
        timestamps=np.array(timestamps, dtype=np.float64),
        values=np.array(values, dtype=np.float64),
        labels=np.array(labels, dtype=np.int8) if label_col is not None else None,
    )


def _runs(ts: np.ndarray, flags: np.ndarray) -> tuple[TruthWindow, ...]:
    """Contiguous runs of 1 as windows from their first to their last timestamp."""
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1) - 1
    return tuple(TruthWindow(float(ts[s]), float(ts[e]), "anomaly") for s, e in zip(starts, ends, strict=True))


def load_labelled_csv(path: str | Path) -> LabelledSeries:
    """A labelled series from `timestamp,value[,label]`; runs of label 1 become windows.

    Rows are sorted by time; the interval is the median gap. Without a label column the
    series has no truth windows (it counts as clean for the false-positive rate).
    """
    parsed = read_series_csv(path)
    order = np.argsort(parsed.timestamps, kind="stable")
    ts, values = parsed.timestamps[order], parsed.values[order]
    flags = parsed.labels[order] if parsed.labels is not None else np.zeros(len(ts), dtype=np.int8)
    gaps = np.diff(np.unique(ts))
    interval = float(np.median(gaps)) if len(gaps) else 60.0
    return LabelledSeries(name=Path(path).stem, timestamps=ts, values=values, truth=_runs(ts, flags), interval=interval)


def load_labelled_folder(path: str | Path) -> list[LabelledSeries]:
    """Every `*.csv` of a folder (not recursive), sorted by file name."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    return [load_labelled_csv(file) for file in sorted(folder.glob("*.csv"))]
