"""Per-node detectors: several metrics of one node scored together, one row per timestamp.

The caller aligns a node's metrics in time (5-minute rollup means, say) into a matrix X of
n rows (timestamps) by m columns (metrics, NaN where a metric has no value) with their
`names`. A row is unusual when its combination of values is: cpu and latency both up while
requests are flat can be anomalous although neither metric is far out on its own.

The state (JSON-safe; no pickled model)
    * the metric names, sorted (the same metrics in any column order are the same state);
    * a reference sample of at most `max_reference` complete rows, the most recent ones
      (so it follows slow change), in raw units (float32), with per-metric medians and
      robust scales (MAD, floored so a constant metric divides by no zero); models see the
      rows robustly standardised by them and clipped at +-Z_CLIP. The rows are the normal
      ones, and one anomalous row in `learn_anomalous_every` (calibration.py's rule): so
      an incident is not learned as normal, but a lasting change (a deploy that moved a
      metric for good) is learned within hours instead of alarming for ever;
    * how many anomalous rows it has seen (`anomalous_seen`, to pick one in five);
    * rows waiting to join the reference (`pending`, see below);
    * the calibration of the outlier statistic on the reference (see "Calibration").
Models are refitted deterministically (fixed random_state) from the reference when needed
and kept in a small in-process LRU cache keyed by a hash of the standardised reference,
so repeated updates of the same state do not refit. The trade-off: a model is a pure
function of the state, so the state stays small, portable between workers and readable
across library versions, at the price of a refit (about 0.2 s for the isolation forests
of a 512-row reference, a few ms for LOF) whenever a worker meets a reference it has not
cached. Fitted models become versioned artifacts in a later issue; the state would then
name the artifact instead.

Scoring is causal per call: every row of an `update` is scored by the models of the state
at the start of the call. Normal rows join the reference in batches: they wait in
`pending` until `refit_every` have arrived (at once while warming up), because each merge
costs two fits; a node streaming one row every five minutes refits every 2.7 hours, not
on every call.

Models
    Both algorithms see the standardised rows PCA-whitened with the reference's
    covariance. An isolation forest splits along axes: on raw correlated metrics a busy
    but normal row (cpu, latency and requests all high together) is isolated quickly
    while cpu up with requests flat hides inside every metric's range; on whitened axes
    the first is ordinary and the second far out on the cpu-versus-load axis. For LOF,
    Euclidean distance in whitened space is a Mahalanobis distance, which weighs a
    correlation break as such. scikit-learn's isolation forest also saturates: a row
    beyond every reference row along some axis is split like the most extreme reference
    row, so its tail probability cannot fall below about 1/n and at 288 rows a day it could
    never reach a medium threshold. Its statistic therefore adds the distance beyond the
    farthest reference row along the whitened axes, one robust sd of the forest's own
    statistic per whitened sd (isotree's `penalize_range` does the same inside the trees,
    but is one more compiled dependency for one term).

Calibration
    The statistic is s = -score_samples(z) (larger = more unusual), shifted so that its
    median on the reference is 0, divided by its robust spread there and clipped at 0:
    T = max((s - offset) / spread, 0). The division makes T unitless, so one TailModel
    range serves both algorithms (forest scores lie in [0, 1], LOF ratios reach 1e10).
    The TailModel learns T on the reference by 2-fold cross-fitting: the reference is
    split into interleaved halves (odd and even rows, so both span its whole time range)
    and a model fitted on each half scores the other. Scored by a model fitted on them,
    reference rows would look unusually normal (LOF finds each at distance 0 from itself,
    a forest has split around it) and every new row extreme in comparison. Cross-fitting
    was chosen over a held-out half because every reference row then serves both to fit
    and to calibrate. New rows are scored by the mean of the two half models' statistics,
    so that no third model is fitted and the models that score are the ones calibrated;
    a mean of two is a little less noisy than the one model that scored each reference
    row, which errs on the side of fewer alarms. The score is score_from_probability(
    P(T >= t), rows per day), with rows per day from the sampling interval of the rows.
    When the reference first becomes large enough, rows that its own cross-fitted
    calibration finds anomalous are dropped and the calibration done once more, so an
    incident inside the history passed to `fit` is not learned as normal.

Explanations
    The contribution of metric j to an anomalous row is counterfactual: values replaced by
    their reference medians, how much does the statistic drop. Replacing metric j alone
    (leave-one-out) gives no or negative credit to metrics that jump together (with cpu
    back to normal, latency up alone breaks their correlation even more), so it is
    averaged with the statistic of metric j alone, every other metric at its median
    (leave-one-in): phi_j = ((s(j only) - s(medians)) + (s(row) - s(row without j))) / 2,
    the first and last terms of the Shapley value (exact for two metrics). Negative values
    are clipped and the rest normalised to shares that sum to 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from analytics.detection.base import Registry, State, prepare
from analytics.detection.calibration import (
    SECONDS_PER_DAY,
    SENSITIVITIES,
    TailModel,
    pack,
    score_from_probability,
    threshold_for,
    unpack,
)
from analytics.detection.robust import interval_update, robust_scale

STATE_VERSION = 1
# Standardised values are clipped here: beyond it every value is equally far, and a metric
# that was constant (its scale is the tiny floor) and moved cannot swamp LOF's distances.
Z_CLIP = 50.0
# Whitening divides each principal axis by at least sqrt of this (in squared robust sds):
# a constant metric or two identical ones leave an axis of zero variance.
VARIANCE_FLOOR = 1e-4
# The TailModel of T: range and resolution, and a prior heavier-tailed than the positive
# half of a robust z, worth PRIOR_WEIGHT rows against the reference's up to 512.
STAT_TOP = 30.0
STAT_BINS = 120
PRIOR_MEAN = 1.5
PRIOR_WEIGHT = 10.0
DEFAULT_INTERVAL = 300.0  # seconds between rows, until two rows have been seen
MODEL_CACHE_SIZE = 32  # references whose fitted models a process keeps (a forest pair is ~2 MB)


class OutlierModel(Protocol):
    def score_samples(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class NodeScores:
    """Per-row results of one `NodeDetector.update`, aligned with `timestamps`.

    `timestamps` are the rows actually scored: sorted, duplicates collapsed to the last
    row, rows not newer than the state's last one dropped. `names` are the node's metrics
    (sorted), the columns of `observed` (the row values as given, NaN where missing) and of
    `expected` (the reference medians the rows were compared with). `imputed` marks the
    missing values that were replaced by the metric's median for scoring. `score`,
    `warming` and `anomalous` mean what they mean in `Scores`. `contributions[i]` maps each
    metric to its share of row i's anomaly (shares sum to 1; an empty dict when row i is
    not anomalous). `info`: `reset` (a new metric appeared and the reference started over),
    `reference_rows` and `per_day` (rows a day, from the sampling interval).
    """

    timestamps: np.ndarray
    names: tuple[str, ...]
    observed: np.ndarray
    expected: np.ndarray
    imputed: np.ndarray
    score: np.ndarray
    warming: np.ndarray
    anomalous: np.ndarray
    contributions: list[dict[str, float]]
    detector: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamps)

    def top_metrics(self, i: int, k: int = 3) -> list[tuple[str, float]]:
        """The (up to) k metrics contributing most to row i with their shares, largest first."""
        ranked = sorted(self.contributions[i].items(), key=lambda item: (-item[1], item[0]))
        return [(name, share) for name, share in ranked[:k] if share > 0]


class NodeDetector(ABC):
    """One multivariate algorithm. Subclasses set `name` and implement `_estimator`."""

    name: ClassVar[str]

    def __init__(
        self,
        *,
        sensitivity: str = "medium",
        min_rows: int = 64,
        max_reference: int = 512,
        refit_every: int = 32,
        learn_anomalous_every: int = 5,
        random_state: int = 0,
    ) -> None:
        if sensitivity not in SENSITIVITIES:
            raise ValueError(f"unknown sensitivity {sensitivity!r}; known: {', '.join(SENSITIVITIES)}")
        if not 16 <= min_rows <= max_reference:
            raise ValueError(f"need 16 <= min_rows <= max_reference, got {min_rows} and {max_reference}")
        if refit_every < 1 or learn_anomalous_every < 0:
            raise ValueError(
                f"need refit_every >= 1 and learn_anomalous_every >= 0 (0: never), "
                f"got {refit_every} and {learn_anomalous_every}"
            )
        self.sensitivity = sensitivity
        self.threshold = threshold_for(sensitivity)
        self.min_rows = min_rows
        self.max_reference = max_reference
        self.refit_every = refit_every
        self.learn_anomalous_every = learn_anomalous_every
        self.random_state = random_state

    @abstractmethod
    def _estimator(self, n_rows: int) -> Any:
        """An unfitted model with `fit(z)` and `score_samples(z)`, for `n_rows` training rows."""

    def _params(self) -> tuple[Any, ...]:
        """What a fitted model depends on besides its data (part of the cache key)."""
        return (self.name, self.random_state)

    def initial_state(self) -> State:
        """The state of a detector that has seen nothing."""
        return {**_Reference.empty(()).to_state(self.name, last_ts=None, interval=None), "anomalous_seen": 0}

    def fit(self, timestamps: np.ndarray, X: np.ndarray, names: Sequence[str]) -> State:
        """Learn from history: the state after passing it to `update` in one call."""
        return self.update(self.initial_state(), timestamps, X, names)[1]

    def update(
        self, state: State, timestamps: np.ndarray, X: np.ndarray, names: Sequence[str]
    ) -> tuple[NodeScores, State]:
        """Score the rows of `X` (n x len(names)) at `timestamps` (Unix seconds); return them
        with the new state. Never mutates `state`.

        Rows are sorted by time, the last of equal timestamps wins, rows not newer than the
        state's last one and rows without any finite value are dropped. Columns are aligned
        by name. A metric of the state that is missing (absent from `names`, or NaN) is
        imputed by its reference median and flagged in `imputed`; a metric new to the
        state resets the reference, and the call warms up again. Rows with imputed values
        are not learned, anomalous rows only one in `learn_anomalous_every`.
        """
        names = [str(name) for name in names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"metric names must be distinct and at least one, got {names}")
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ValueError(f"X must have shape (n, {len(names)}), got {matrix.shape}")

        known = state.get("names") or []
        compatible = state.get("version") == STATE_VERSION and state.get("detector") == self.name
        reset = not compatible or not set(names) <= set(known)
        ref = _Reference.empty(tuple(sorted(names))) if reset else _Reference.from_state(state)
        last_ts, interval = state.get("last_ts"), state.get("interval")

        ts, rows = prepare(last_ts, timestamps, matrix)
        aligned = np.full((len(ts), len(ref.names)), np.nan)
        position = {name: j for j, name in enumerate(names)}
        for j, name in enumerate(ref.names):
            if name in position:
                aligned[:, j] = rows[:, position[name]]
        imputed = np.isnan(aligned)

        interval = interval_update(interval, last_ts, ts)
        n_day = SECONDS_PER_DAY / (interval or DEFAULT_INTERVAL)
        ready = ref.tail is not None and len(ref.rows) >= self.min_rows
        score = np.zeros(len(ts))
        anomalous = np.zeros(len(ts), dtype=bool)
        contributions: list[dict[str, float]] = [{} for _ in range(len(ts))]
        if ready and len(ts):
            models = self._models(ref)
            z = ref.standardise(aligned)
            score = score_from_probability(ref.probability(models.statistic(z)), n_day)
            anomalous = score >= self.threshold
            shares = self._contributions(models, z[anomalous])
            for i, row_shares in zip(np.flatnonzero(anomalous), shares, strict=True):
                contributions[i] = dict(zip(ref.names, row_shares.tolist(), strict=True))

        # One anomalous row in `learn_anomalous_every` is learned (see the module docstring).
        complete = ~imputed.any(axis=1)
        seen = int(state.get("anomalous_seen", 0)) if not reset else 0
        admitted = np.zeros(len(ts), dtype=bool)
        if self.learn_anomalous_every:
            order = seen + np.cumsum(anomalous & complete)
            admitted = anomalous & complete & (order % self.learn_anomalous_every == 0)
        seen += int((anomalous & complete).sum())
        new_ref = self._learn(ref, aligned[complete & (~anomalous | admitted)], n_day=n_day)
        scores = NodeScores(
            timestamps=ts,
            names=ref.names,
            observed=aligned,
            expected=ref.median.copy(),
            imputed=imputed,
            score=score,
            warming=np.full(len(ts), not ready),
            anomalous=anomalous,
            contributions=contributions,
            detector=self.name,
            info={"reset": reset and bool(known), "reference_rows": len(new_ref.rows), "per_day": n_day},
        )
        new_last_ts = float(ts[-1]) if len(ts) else last_ts
        new_state = new_ref.to_state(self.name, last_ts=new_last_ts, interval=interval)
        new_state["anomalous_seen"] = seen
        return scores, new_state

    # Learning -----------------------------------------------------------------------------

    def _learn(self, ref: _Reference, rows: np.ndarray, *, n_day: float) -> _Reference:
        """The reference after adding the normal, complete `rows`: merged (keeping the most
        recent `max_reference`) and recalibrated once `refit_every` are pending, or at once
        while warming up."""
        if not len(rows):
            return ref
        pending = np.concatenate([ref.pending, rows])
        was_ready = ref.tail is not None
        if was_ready and len(pending) < self.refit_every:
            return dataclasses.replace(ref, pending=pending)
        merged = _Reference.build(ref.names, np.concatenate([ref.rows, pending])[-self.max_reference :])
        if len(merged.rows) < self.min_rows:
            return merged
        calibrated, stat = self._calibrate(merged)
        if was_ready:
            return calibrated
        # First calibration: history passed to `fit` may hold an incident. Drop the rows the
        # calibration itself finds anomalous and calibrate once more without them.
        keep = score_from_probability(calibrated.probability(stat), n_day) < self.threshold
        if keep.all() or keep.sum() < self.min_rows:
            return calibrated
        return self._calibrate(_Reference.build(ref.names, merged.rows[keep]))[0]

    def _calibrate(self, ref: _Reference) -> tuple[_Reference, np.ndarray]:
        """`ref` with the offset, spread and TailModel of its cross-fitted statistic, and that
        statistic."""
        z = ref.standardise(ref.rows)
        stat = np.empty(len(z))
        for model, held_out in zip(self._models(ref).models, _folds(len(z)), strict=True):
            stat[held_out] = _statistic(model, z[held_out])
        offset = float(np.median(stat))
        spread = float(robust_scale(stat[None, :], np.array([offset]))[0])
        tail = TailModel.prior(mean=PRIOR_MEAN, top=STAT_TOP, bins=STAT_BINS, prior_weight=PRIOR_WEIGHT)
        tail = tail.learn(np.maximum((stat - offset) / spread, 0.0))
        return dataclasses.replace(ref, offset=offset, spread=spread, tail=tail), stat

    def _models(self, ref: _Reference) -> _FoldModels:
        """The models of the reference's two halves, from the process's cache when there."""
        z = ref.standardise(ref.rows)
        key = hashlib.sha256(repr(self._params()).encode() + z.tobytes()).hexdigest()
        with _CACHE_LOCK:
            cached = _MODEL_CACHE.get(key)
            if cached is not None:
                _MODEL_CACHE.move_to_end(key)
                return cached
        # Fitted outside the lock: two threads missing the same key both fit, the same model.
        fitted = _FoldModels(
            tuple(self._estimator(int((~held_out).sum())).fit(z[~held_out]) for held_out in _folds(len(z)))
        )
        with _CACHE_LOCK:
            _MODEL_CACHE[key] = fitted
            while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        return fitted

    # Explaining ---------------------------------------------------------------------------

    def _contributions(self, models: _FoldModels, z: np.ndarray) -> np.ndarray:
        """Per row of `z`, each metric's share of its statistic (see the module docstring)."""
        k, m = z.shape
        if not k:
            return np.empty((0, m))
        eye = np.eye(m, dtype=bool)
        without = np.where(eye, 0.0, z[:, None, :]).reshape(-1, m)  # row i with metric j at its median
        alone = np.where(eye, z[:, None, :], 0.0).reshape(-1, m)  # metric j alone, the rest at medians
        # One scoring call for everything: scikit-learn's per-call overhead dominates small ones.
        stat = models.statistic(np.concatenate([np.zeros((1, m)), z, without, alone]))
        base, full = stat[0], stat[1 : k + 1]
        s_without = stat[k + 1 : k + 1 + k * m].reshape(k, m)
        s_alone = stat[k + 1 + k * m :].reshape(k, m)
        phi = np.maximum(((s_alone - base) + (full[:, None] - s_without)) / 2, 0.0)
        # When no metric earns credit (an interaction both terms miss), share by |z| instead.
        weights = np.where(phi.sum(axis=1, keepdims=True) > 0, phi, np.abs(z))
        weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, 1.0)
        return weights / weights.sum(axis=1, keepdims=True)


NODE_DETECTORS: Registry[NodeDetector] = Registry("node detector")
register_node = NODE_DETECTORS.register
node_detector_create = NODE_DETECTORS.create


@register_node
class IsolationForestDetector(NodeDetector):
    """Rows that random splits isolate quickly (Liu, Ting and Zhou, 2008), on whitened axes."""

    name = "isolation_forest"

    def __init__(self, *, n_estimators: int = 100, **params: Any) -> None:
        super().__init__(**params)
        self.n_estimators = n_estimators

    def _params(self) -> tuple[Any, ...]:
        return (*super()._params(), self.n_estimators)

    def _estimator(self, n_rows: int) -> Any:
        forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=1)
        return _Whitened(forest, extend_range=True)


@register_node
class LocalOutlierFactorDetector(NodeDetector):
    """Rows in a sparser neighbourhood than their neighbours' (Breunig et al., 2000)."""

    name = "lof"

    def __init__(self, *, n_neighbors: int = 20, **params: Any) -> None:
        super().__init__(**params)
        self.n_neighbors = n_neighbors

    def _params(self) -> tuple[Any, ...]:
        return (*super()._params(), self.n_neighbors)

    def _estimator(self, n_rows: int) -> Any:
        lof = LocalOutlierFactor(n_neighbors=max(1, min(self.n_neighbors, n_rows - 1)), novelty=True)
        return _Whitened(lof, extend_range=False)


# Internals ----------------------------------------------------------------------------------


class _Whitened:
    """`estimator` on PCA-whitened rows; with `extend_range`, its score also falls with the
    distance beyond the training rows' range (see "Models" in the module docstring).

    scikit-learn's PCA(whiten=True) divides a zero-variance axis by machine epsilon (1e16
    times a rounding error); the floor here keeps a constant metric's axis finite.
    """

    def __init__(self, estimator: Any, *, extend_range: bool) -> None:
        self.estimator = estimator
        self.extend_range = extend_range
        self.reach = np.empty(0)
        self.weight = 0.0

    def fit(self, z: np.ndarray) -> _Whitened:
        self.pca = PCA(svd_solver="full").fit(z)
        self.sd = np.sqrt(np.maximum(self.pca.explained_variance_, VARIANCE_FLOOR))
        w = self._whiten(z)
        self.estimator.fit(w)
        if self.extend_range:
            self.reach = np.abs(w).max(axis=0)
            stat = -np.asarray(self.estimator.score_samples(w), dtype=np.float64)
            self.weight = float(robust_scale(stat[None, :], np.array([np.median(stat)]))[0])
        return self

    def _whiten(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.pca.transform(z)) / self.sd

    def score_samples(self, z: np.ndarray) -> np.ndarray:
        w = self._whiten(z)
        score = np.asarray(self.estimator.score_samples(w), dtype=np.float64)
        if self.extend_range:
            beyond = np.maximum(np.abs(w) - self.reach, 0.0)
            score = score - self.weight * np.sqrt((beyond**2).sum(axis=1))
        return score


@dataclass(frozen=True)
class _FoldModels:
    """The models fitted on the reference's two halves. A new row's statistic is the mean of
    theirs (see "Calibration" in the module docstring)."""

    models: tuple[OutlierModel, ...]

    def statistic(self, z: np.ndarray) -> np.ndarray:
        return np.mean([_statistic(model, z) for model in self.models], axis=0)


_MODEL_CACHE: OrderedDict[str, _FoldModels] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Reference:
    """The learned part of a state, unpacked: reference rows (raw units), pending rows,
    per-metric median and scale, and the calibration of the statistic (`tail` is None until
    the reference has `min_rows` rows)."""

    names: tuple[str, ...]
    rows: np.ndarray
    pending: np.ndarray
    median: np.ndarray
    scale: np.ndarray
    offset: float = 0.0
    spread: float = 1.0
    tail: TailModel | None = None

    @classmethod
    def empty(cls, names: tuple[str, ...]) -> _Reference:
        return cls.build(names, np.empty((0, len(names))))

    @classmethod
    def build(cls, names: tuple[str, ...], rows: np.ndarray) -> _Reference:
        """An uncalibrated reference of `rows`, with their medians and robust scales.

        The rows go through float32 first, as they do in the state, so that a state used as
        returned and one read back from JSON give the same medians, models and scores.
        """
        rows = rows.astype("<f4").astype(np.float64)
        m = len(names)
        if len(rows):
            median = np.median(rows, axis=0)
            scale = robust_scale(rows.T, median)
        else:
            median, scale = np.full(m, np.nan), np.ones(m)
        return cls(names=names, rows=rows, pending=np.empty((0, m)), median=median, scale=scale)

    @classmethod
    def from_state(cls, state: State) -> _Reference:
        names = tuple(state["names"])
        m = len(names)
        return cls(
            names=names,
            rows=_unpack_rows(state["reference"], m),
            pending=_unpack_rows(state["pending"], m),
            median=np.array(state["median"], dtype=np.float64).reshape(m),
            scale=np.array(state["scale"], dtype=np.float64).reshape(m),
            offset=float(state["offset"]),
            spread=float(state["spread"]),
            tail=TailModel.from_state(state["tail"]) if state["tail"] is not None else None,
        )

    def to_state(self, detector: str, *, last_ts: float | None, interval: float | None) -> State:
        return {
            "version": STATE_VERSION,
            "detector": detector,
            "names": list(self.names),
            "last_ts": last_ts,
            "interval": interval,
            "reference": pack(self.rows.ravel()),
            "pending": pack(self.pending.ravel()),
            # None until there are rows: NaN is not JSON (PostgreSQL's jsonb refuses it).
            "median": [float(v) if np.isfinite(v) else None for v in self.median],
            "scale": [float(v) for v in self.scale],
            "offset": self.offset,
            "spread": self.spread,
            "tail": self.tail.to_state() if self.tail is not None else None,
        }

    def standardise(self, rows: np.ndarray) -> np.ndarray:
        """Robust z per metric, clipped at +-Z_CLIP; a missing value is its median (z = 0)."""
        z = (rows - self.median) / self.scale
        return np.clip(np.nan_to_num(z, nan=0.0), -Z_CLIP, Z_CLIP)

    def probability(self, stat: np.ndarray) -> np.ndarray:
        """P(T >= t) for the statistic `stat` under the calibration."""
        assert self.tail is not None, "probability of an uncalibrated reference"
        return self.tail.probability(np.maximum((stat - self.offset) / self.spread, 0.0))


def _statistic(model: OutlierModel, z: np.ndarray) -> np.ndarray:
    """One model's outlier statistic: larger is more unusual."""
    return -np.asarray(model.score_samples(z), dtype=np.float64)


def _folds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out masks of the two folds: odd rows, then even rows. Interleaved rather than
    first and second half, so that both halves span the reference's whole time range."""
    odd = (np.arange(n) % 2).astype(bool)
    return odd, ~odd


def _unpack_rows(text: str, m: int) -> np.ndarray:
    return unpack(text).reshape(-1, m) if m else np.empty((0, 0))
