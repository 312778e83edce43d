"""One meaning for every score: how surprising a point is for a normal day of its series.

Each detector reduces a point to a non-negative statistic T (|robust z| of the residual, a
CUSUM, a log variance ratio, ...). `TailModel` learns the distribution of T on the series'
own normal data and gives the tail probability p = P(T >= t) of a new point: empirically
in the body, and beyond the 95th percentile with an exponential tail fitted to the excesses
(peaks over threshold, as in SPOT, Siffer et al., KDD 2017), so it extrapolates to values
never seen. The score is

    score = (1 - p) ** n_day

where n_day is how many points the series sends a day: the probability that a whole
normal day of this series has no point as extreme. A score of 0.9 therefore means "about
one normal day in ten has a point this unusual" for every detector, series and sampling
rate, and 1 - threshold is roughly the expected number of false alarms per series-day.

Until the model has seen data, a conservative prior (an exponential with the given mean,
worth `prior_weight` observations, heavier-tailed than a normal |z|) stands in, so a new
series does not alarm on its first ripples. Points the detector found anomalous are learned
with a fifth of the weight of normal ones: fully, an incident would teach the model that
incidents are normal; not at all, the model would never see its own tail and a series whose
statistic is heavier-tailed than the model thinks would alarm for ever. Old
observations fade with a memory of `memory` points, so the model follows slow changes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

# Threshold on the score at which Vigil opens an anomaly, per sensitivity. 1 - threshold is
# about the expected number of false alarms per series-day (see the module docstring).
SENSITIVITIES: dict[str, float] = {"low": 0.97, "medium": 0.9, "high": 0.75}

TAIL_QUANTILE = 0.05
SECONDS_PER_DAY = 86_400.0


def threshold_for(sensitivity: str) -> float:
    return SENSITIVITIES[sensitivity]


def score_from_probability(p: np.ndarray, per_day: float) -> np.ndarray:
    """(1 - p) ** per_day, computed stably for tiny p."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.exp(per_day * np.log1p(-p))


def probability_for_score(score: float, per_day: float) -> float:
    """The tail probability whose score is `score`: the inverse of `score_from_probability`."""
    return float(-np.expm1(np.log(score) / max(per_day, 1.0)))


FLOAT32_MAX = float(np.finfo(np.float32).max)


def pack(array: np.ndarray) -> str:
    """A float array as compact, JSON-safe text (little-endian float32, base64).

    Values beyond float32's range (about 3.4e38) are saturated rather than turned into
    infinities: a detector's memory of an absurd value stays finite.
    """
    clipped = np.clip(np.asarray(array, dtype=np.float64), -FLOAT32_MAX, FLOAT32_MAX)
    return base64.b64encode(clipped.astype("<f4").tobytes()).decode("ascii")


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


@lru_cache(maxsize=64)
def _grid(top: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The histogram's edges and bin centres (the overflow bin's centre at least the top)."""
    edges = np.linspace(0.0, top, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    centres[-1] = max(centres[-1], top)
    edges.flags.writeable = centres.flags.writeable = False
    return edges, centres


@dataclass(frozen=True)
class TailModel:
    """A learned distribution of a non-negative statistic: a histogram on [0, top] (the last
    bin also holds everything above) with an exponential tail beyond the 95th percentile."""

    top: float
    counts: np.ndarray

    @classmethod
    def prior(cls, *, mean: float, top: float, bins: int = 64, prior_weight: float = 50.0) -> TailModel:
        edges = np.linspace(0.0, top, bins + 1)
        cdf = -np.expm1(-edges / mean)
        mass = np.diff(cdf)
        mass[-1] += 1.0 - cdf[-1]
        return cls(top=top, counts=mass * prior_weight)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TailModel:
        return cls(top=state["top"], counts=unpack(state["counts"]))

    def to_state(self) -> dict[str, Any]:
        return {"top": self.top, "counts": pack(self.counts)}

    @property
    def edges(self) -> np.ndarray:
        return _grid(self.top, len(self.counts))[0]

    @cached_property
    def _survival(self) -> np.ndarray:
        """P(T >= edge) at each edge of the histogram."""
        above = np.cumsum(self.counts[::-1])[::-1]
        return np.append(above, 0.0) / above[0]

    @cached_property
    def _tail(self) -> tuple[float, float]:
        """(u, beta): the 95th percentile and the mean excess above it."""
        edges, centres = _grid(self.top, len(self.counts))
        # survival decreases along the edges; interp needs increasing x.
        u = float(np.interp(-TAIL_QUANTILE, -self._survival, edges))
        over = centres > u
        weight = self.counts[over].sum()
        step = self.top / len(self.counts)
        beta = float((self.counts[over] * (centres[over] - u)).sum() / weight) if weight > 0 else step
        return u, max(beta, step / 2)

    def probability(self, stat: np.ndarray) -> np.ndarray:
        """P(T >= stat) under the learned distribution."""
        stat = np.maximum(np.asarray(stat, dtype=np.float64), 0.0)
        u, beta = self._tail
        body = np.interp(stat, self.edges, self._survival)
        tail = TAIL_QUANTILE * np.exp(-(stat - u) / beta)
        return np.where(stat > u, tail, np.maximum(body, TAIL_QUANTILE))

    def quantile(self, p: float) -> float:
        """The statistic whose tail probability is p (p < the tail quantile)."""
        u, beta = self._tail
        if p >= TAIL_QUANTILE:
            return u
        return u + beta * float(np.log(TAIL_QUANTILE / p))

    def learn(self, stat: np.ndarray, weights: np.ndarray | None = None, *, memory: float = 20_000.0) -> TailModel:
        """The model after observing `stat`, each with its weight (default 1), decaying what
        it knew by their total weight."""
        stat = np.asarray(stat, dtype=np.float64)
        weights = np.ones(len(stat)) if weights is None else np.asarray(weights, dtype=np.float64)
        finite = np.isfinite(stat)
        stat, weights = stat[finite], weights[finite]
        if not len(stat):
            return self
        bins = len(self.counts)
        # Clipped before the cast: a statistic of 1e30 belongs in the last bin, not in an overflow.
        index = (np.clip(stat, 0.0, self.top) / self.top * bins).astype(np.int64).clip(0, bins - 1)
        fresh = np.bincount(index, weights=weights, minlength=bins)
        decay = np.exp(-float(weights.sum()) / memory)
        return TailModel(top=self.top, counts=self.counts * decay + fresh)
