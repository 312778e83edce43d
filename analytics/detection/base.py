"""The detector interface, the result of scoring, and the registry.

A detector is configured once (`detector_create(name, sensitivity=..., **params)`) and is
stateless itself: everything it learns lives in a JSON-serialisable `state` dict that the
caller stores (PostgreSQL in Vigil, a variable in `score_csv`) and hands back on the next
call. `update(state, timestamps, values)` scores the new points causally -- the score of
the point at time t uses only points up to t -- and returns the scores with the new state.
Batch scoring and streaming are the same call with more or fewer points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from analytics.detection.calibration import SENSITIVITIES, threshold_for

State = dict[str, Any]

# Every label an anomalous point can carry ("" on a normal point).
LABELS = ("spike", "dip", "level_shift", "trend_change", "variance_change", "seasonal_break", "flatline")


class UnknownDetector(ValueError):
    """Raised by `detector_create` for a name that is not registered; lists the known ones."""


@dataclass(frozen=True)
class Scores:
    """Per-point results of one `update` call, aligned with `timestamps`.

    `timestamps` are the points actually scored: sorted, duplicates collapsed to the last
    value, and points not newer than the state's last point dropped (late data is rescored
    by the caller, see `Detector.update`). `score` is calibrated (see calibration.py), in
    [0, 1]. `expected` and [`lower`, `upper`] are the learned normal value and the band
    outside which a point scores at or above the sensitivity's threshold; `deviation` is the
    signed distance from `expected` in robust standard deviations. `warming` marks points
    scored before the detector had enough history: their score is 0. `anomalous` is what
    Vigil acts on: score >= the threshold of the sensitivity and not warming. `label` and
    `detector` name the kind of anomaly and the detector that fired ("" when not anomalous).
    `info` holds per-call facts for explanations (e.g. the seasonality used).
    """

    timestamps: np.ndarray
    values: np.ndarray
    score: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    deviation: np.ndarray
    warming: np.ndarray
    anomalous: np.ndarray
    label: np.ndarray
    detector: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamps)

    @classmethod
    def concatenate(cls, parts: list[Scores]) -> Scores:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        arrays = {
            name: np.concatenate([getattr(part, name) for part in parts])
            for name in cls.__dataclass_fields__
            if name != "info"
        }
        return cls(**arrays, info=parts[-1].info)

    def select(self, keep: np.ndarray | slice) -> Scores:
        """The points `keep` (a boolean mask or a slice) selects, with the same info."""
        arrays = {name: getattr(self, name)[keep] for name in self.__dataclass_fields__ if name != "info"}
        return Scores(**arrays, info=self.info)

    @classmethod
    def empty(cls) -> Scores:
        floats = np.empty(0)
        return cls(
            timestamps=floats,
            values=floats,
            score=floats,
            expected=floats,
            lower=floats,
            upper=floats,
            deviation=floats,
            warming=np.empty(0, dtype=bool),
            anomalous=np.empty(0, dtype=bool),
            label=np.empty(0, dtype=object),
            detector=np.empty(0, dtype=object),
        )


@dataclass(frozen=True)
class Status:
    """What a state says about its detector: still warming up (scores 0, no anomaly), how many
    points it has learned from, the seasonality it uses (seconds) and whether it scores rates."""

    warming: bool
    seen: int
    period: float | None
    rate: bool


class Detector(ABC):
    """One algorithm. Subclasses set `name`, implement `initial_state` and `update`."""

    name: ClassVar[str]

    def __init__(self, *, sensitivity: str = "medium") -> None:
        if sensitivity not in SENSITIVITIES:
            raise ValueError(f"unknown sensitivity {sensitivity!r}; known: {', '.join(SENSITIVITIES)}")
        self.sensitivity = sensitivity
        self.threshold = threshold_for(sensitivity)

    @abstractmethod
    def initial_state(self) -> State:
        """The state of a detector that has seen nothing."""

    # Points scored against one frozen snapshot of what the detector learned: a long call (a
    # backfill, a day of history) is cut into chunks so that calibration and baselines keep
    # learning through it; a short call (streaming) is one chunk. See `chunk_size`.
    chunk: ClassVar[int] = 1440

    def chunk_size(self, state: State) -> int:
        """How many points the next chunk may hold: at most `chunk`, and at most half of what
        the detector has seen, so a young detector learns in small steps."""
        return int(min(self.chunk, max(60, state.get("seen", 0) // 2)))

    def update(self, state: State, timestamps: np.ndarray, values: np.ndarray) -> tuple[Scores, State]:
        """Score `values` at `timestamps` (Unix seconds) causally; return them with the new state.

        Never mutates `state`. Accepts any order, duplicates and non-finite values (dropped),
        and drops points not newer than the last point of `state`. Causal at the chunk's
        granularity: a point's score uses what was learned before its chunk and the points
        before it (the sampling interval is re-estimated once per chunk).
        """
        ts, vs = prepare(state["last_ts"], timestamps, values)
        parts = []
        start = 0
        while start < len(ts):
            end = start + self.chunk_size(state)
            scores, state = self._score(state, ts[start:end], vs[start:end])
            parts.append(scores)
            start = end
        return Scores.concatenate(parts), state

    @abstractmethod
    def _score(self, state: State, ts: np.ndarray, vs: np.ndarray) -> tuple[Scores, State]:
        """Score a non-empty chunk of finite, sorted, new points against `state`."""

    min_points: int = 30

    def status(self, state: State) -> Status:
        baseline = state.get("baseline") or {}
        return Status(
            warming=state.get("seen", 0) < self.min_points,
            seen=int(state.get("seen", 0)),
            period=baseline.get("period"),
            rate=bool(state.get("counter")),
        )

    def fit(self, timestamps: np.ndarray, values: np.ndarray) -> State:
        """Learn from history: the state after streaming it through `update`."""
        return self.update(self.initial_state(), timestamps, values)[1]


T = TypeVar("T")


class Registry(dict[str, type[T]]):
    """Classes by name, filled by the `register` decorator; `create` fails loudly and lists
    the known names (healthchecks' TRANSPORTS). One for detectors, one for node detectors."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: type[T]) -> type[T]:
        self[cls.name] = cls  # type: ignore[attr-defined]
        return cls

    def create(self, name: str, **params: Any) -> T:
        """The class registered as `name`, configured with `params`."""
        try:
            cls = self[name]
        except KeyError:
            raise UnknownDetector(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}") from None
        return cls(**params)


DETECTORS: Registry[Detector] = Registry("detector")
register = DETECTORS.register
detector_create = DETECTORS.create


def prepare(last_ts: float | None, timestamps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points (or rows) an update scores: sorted by time, one per timestamp (the last
    given), strictly newer than `last_ts`, with a finite timestamp and a finite value. For
    rows (a node's metrics, 2-D `values`) one finite value is enough; the others become NaN.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    vs = np.asarray(values, dtype=np.float64)
    if len(ts) != len(vs):
        raise ValueError(f"{len(ts)} timestamps for {len(vs)} values")
    finite = np.isfinite(vs)
    if vs.ndim == 2:
        vs = np.where(finite, vs, np.nan)
    keep = np.isfinite(ts) & (finite.any(axis=1) if vs.ndim == 2 else finite)
    if last_ts is not None:
        keep &= ts > last_ts
    ts, vs = ts[keep], vs[keep]
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        order = np.argsort(ts, kind="stable")
        ts, vs = ts[order], vs[order]
        # Keep the last of equal timestamps (the value sent last wins, as at ingest).
        last = np.append(ts[1:] != ts[:-1], True)
        ts, vs = ts[last], vs[last]
    return ts, vs
