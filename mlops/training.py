"""Training: a candidate version for one scope from its training window, then the promotion gate.

How a version is trained (README, "Model lifecycle"):

- The window is [start, end): by default the VIGIL_TRAIN_WINDOW_SECONDS before `now` rounded
  down to VIGIL_TRAIN_ALIGN_SECONDS, so every run in the same hour trains the same window.
- Idempotent per (scope, window): the version's `training_key` hashes the scope, the detector
  and its hyperparameters, the window, the scope's feedback and the calendar events in the
  window. Training the same inputs again returns the version they gave (unless it failed); the
  database enforces one. New feedback, or a new calendar event, makes new inputs.
- A series trains its streaming detector on its raw points, read in chunks of
  VIGIL_TRAIN_CHUNK_POINTS and streamed through the detector (what it keeps is its state, not the
  points), at most the newest VIGIL_TRAIN_MAX_POINTS. A node trains its multivariate detector on
  the 1-minute rollup means of its metrics. Points inside calendar events are left out.
- The suppression rules learned from feedback (mlops.feedback) are part of the model.
- The last VIGIL_GATE_WINDOW_SECONDS of the window are the holdout: the detector scores them
  before it learns them, as it would in production. Training metrics come from the scored
  points: score quantiles, contamination (the share of anomalous points), anomalies a day, and
  the reference distributions drift compares with later (mlops.drift).

The promotion gate (`_gate`) compares the candidate's holdout with what the active version
reported in production over the same window, and with the scope's judged anomalies. The
candidate is promoted only if it is no worse on each of:

1. false alarms: holdout anomalies judged false positive or expected that it still reports;
2. true positives: holdout anomalies judged true positive that it still finds;
3. judged anomalies of any time: it holds back no more true positives, and no fewer false
   positives, than the active version's rules do;
4. stability: it reports at most max(1, 25 %) more anomalies in the holdout.

Otherwise it stays a candidate; the comparison is recorded in its metrics and its audit trail.
A drift-triggered candidate of a tenant whose policy is `retrain_promote` is promoted anyway.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from analytics.anomalies import node_columns, node_matrix, series_sensitivity, serving_lock
from analytics.detection import Scores, detector_create
from analytics.detection.multivariate import node_detector_create
from analytics.detection.windows import anomaly_spans
from analytics.models import AnomalyResult, MetricSeries, Point
from config.errors import Rejected
from mlops.artifacts import ArtifactCorrupt, artifact_save, state_dumps
from mlops.calendars import calendar_events, calendar_mask
from mlops.drift_stats import reference_of
from mlops.feedback import Judged, judged_rules_hold, rules_apply, rules_learn
from mlops.models import ModelVersion, ModelVersionEvent
from mlops.services import model_version_load, model_version_promote, scope_key
from tenants.models import Tenant

logger = logging.getLogger(__name__)

Kind = ModelVersion.ScopeKind
Status = ModelVersion.Status
DAY = 86400.0


class TrainingFailed(Exception):
    """The window cannot train a model (too few points, too few metrics); the message says why."""


@dataclass(frozen=True)
class Scope:
    """What one model covers: a series, or a node's metrics (`kind` series or node)."""

    tenant: Tenant
    kind: str
    series: MetricSeries | None = None
    cluster: str = ""
    node: str = ""

    @classmethod
    def of_series(cls, series: MetricSeries) -> Scope:
        return cls(tenant=series.tenant, kind=Kind.SERIES, series=series, cluster=series.cluster, node=series.node)

    @property
    def key(self) -> str:
        return scope_key(kind=self.kind, series=self.series, cluster=self.cluster, node=self.node)

    def anomalies(self) -> QuerySet[AnomalyResult]:
        """The scope's anomalies (a series', or a node's node-level ones)."""
        if self.series is not None:
            return AnomalyResult.objects.filter(series=self.series)
        return AnomalyResult.objects.filter(
            tenant=self.tenant, cluster=self.cluster, node=self.node, series__isnull=True
        )

    def members(self) -> list[MetricSeries]:
        """A node's series, in id order."""
        return list(
            MetricSeries.objects.filter(tenant=self.tenant, cluster=self.cluster, node=self.node).order_by("pk")
        )


def training_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The default window: VIGIL_TRAIN_WINDOW_SECONDS up to `now` rounded down to the alignment."""
    now = now or timezone.now()
    align = settings.VIGIL_TRAIN_ALIGN_SECONDS
    end = datetime.fromtimestamp(math.floor(now.timestamp() / align) * align, tz=UTC)
    return end - timedelta(seconds=settings.VIGIL_TRAIN_WINDOW_SECONDS), end


# --- Starting: the idempotent part -------------------------------------------------------------


def model_version_train_start(
    *, scope: Scope, trigger: str, start: datetime, end: datetime, actor: str = ""
) -> tuple[ModelVersion, bool]:
    """The version that trains `scope` on [start, end): a new `training` row (True), or the
    version these same inputs already gave (False: trained, training now, or served).

    A `training` row older than VIGIL_TRAIN_STALE_SECONDS lost its worker: it is marked failed
    and a new one starts. Refuses (400) an empty or inverted window.
    """
    if end <= start:
        raise Rejected("invalid_window", "The training window must end after it starts.")
    detector, hyperparameters = _configuration(scope)
    key = _training_key(scope, detector, hyperparameters, start, end)
    with transaction.atomic():
        versions = ModelVersion.objects.filter(tenant=scope.tenant, scope_key=scope.key)
        rows = list(
            versions.select_for_update(no_key=True)
            .order_by("pk")
            .values_list("pk", "status", "training_key", "version")
        )
        same = [pk for pk, status, trained, _ in rows if trained == key and status != Status.FAILED]
        if same:
            existing = ModelVersion.objects.get(pk=same[0])
            if not _stale(existing):
                return existing, False
            _fail(existing, "the worker training it was lost")
        active = next((pk for pk, status, _, _ in rows if status == Status.ACTIVE), None)
        number = max((number for *_, number in rows), default=0) + 1
        try:
            with transaction.atomic():
                version = ModelVersion.objects.create(
                    tenant=scope.tenant,
                    scope_kind=scope.kind,
                    scope_key=scope.key,
                    series=scope.series,
                    cluster=scope.cluster,
                    node=scope.node,
                    metric=scope.series.metric if scope.series is not None else "",
                    version=number,
                    parent_id=active,
                    detector=detector,
                    hyperparameters=hyperparameters,
                    train_from=start,
                    train_to=end,
                    status=Status.TRAINING,
                    trigger=trigger,
                    created_by=actor,
                    training_key=key,
                )
        except IntegrityError:  # the scope's first version, started twice at once
            return ModelVersion.objects.get(tenant=scope.tenant, training_key=key, status__in=_LIVE), False
    return version, True


_LIVE = [Status.TRAINING, Status.CANDIDATE, Status.ACTIVE, Status.RETIRED]


def _configuration(scope: Scope) -> tuple[str, dict[str, Any]]:
    if scope.kind == Kind.SERIES and scope.series is not None:
        return settings.VIGIL_DETECTOR, {"sensitivity": series_sensitivity(scope.series)}
    if scope.kind == Kind.NODE:
        return settings.VIGIL_NODE_DETECTOR, {"sensitivity": scope.tenant.detection_sensitivity}
    raise Rejected("not_trainable", f"Scopes of kind {scope.kind!r} are not trained.")


def _training_key(scope: Scope, detector: str, hyperparameters: dict[str, Any], start: datetime, end: datetime) -> str:
    judged = sorted(scope.anomalies().exclude(feedback="").values_list("pk", "feedback"))
    events = sorted(_events(scope, start, end))
    inputs = [scope.key, detector, hyperparameters, start.isoformat(), end.isoformat(), judged, events]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _events(scope: Scope, start: datetime, end: datetime) -> list[tuple[float, float]]:
    """The calendar events over the window that cover the scope (all of them: training leaves
    out every known event, suppressing or not)."""
    return calendar_events(tenant_id=scope.tenant.pk, cluster=scope.cluster, node=scope.node, start=start, end=end)


def _stale(version: ModelVersion) -> bool:
    age = timezone.now() - version.created_at
    return version.status == Status.TRAINING and age > timedelta(seconds=settings.VIGIL_TRAIN_STALE_SECONDS)


def _fail(version: ModelVersion, error: str) -> None:
    version.status, version.error = Status.FAILED, error
    version.save(update_fields=["status", "error"])
    ModelVersionEvent.objects.create(version=version, action=ModelVersionEvent.Action.FAILED, reason=error)


def training_sweep() -> int:
    """Mark failed the versions whose training worker was lost (still `training` after
    VIGIL_TRAIN_STALE_SECONDS); the next scheduled or drift run trains the scope again. Returns
    how many."""
    cutoff = timezone.now() - timedelta(seconds=settings.VIGIL_TRAIN_STALE_SECONDS)
    swept = 0
    for version in ModelVersion.objects.filter(status=Status.TRAINING, created_at__lt=cutoff):
        with transaction.atomic():
            locked = ModelVersion.objects.select_for_update().filter(pk=version.pk, status=Status.TRAINING).first()
            if locked is not None:
                _fail(locked, "the worker training it was lost")
                swept += 1
    return swept


# --- Training ----------------------------------------------------------------------------------


@dataclass
class Fitted:
    """What a fit produced: the model, the points it learned, its metrics, the holdout windows."""

    state: dict[str, Any]
    rules: list[dict[str, Any]]
    points: int
    feature_schema: list[str]
    metrics: dict[str, Any]
    holdout: tuple[float, float]
    windows: list[tuple[float, float]] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)


def model_version_train(*, version: ModelVersion, scope: Scope | None = None) -> ModelVersion:
    """Train a `training` version (see the module): fit, store the artifact, make it a candidate
    (an audit event), then the gate. A fit that fails marks the version failed with the error;
    the active version keeps serving. Any other status: nothing to do, returned as it is."""
    if version.status != Status.TRAINING:
        return version
    scope = scope or version_scope(version)
    started = time.perf_counter()
    try:
        fitted = _fit_series(version, scope) if scope.kind == Kind.SERIES else _fit_node(version, scope)
    except TrainingFailed as exc:
        with transaction.atomic():
            _fail(version, str(exc))
        return version
    except Exception as exc:  # a bug or bad data in one scope must not leave it `training` for ever
        logger.exception("training %s failed", version)
        with transaction.atomic():
            _fail(version, f"{type(exc).__name__}: {exc}")
        return version
    fitted.metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    if _finish(version, fitted):
        _gate_and_promote(version, scope, fitted)
    return version


def version_scope(version: ModelVersion) -> Scope:
    if version.scope_kind == Kind.SERIES and version.series is not None:
        return Scope.of_series(version.series)
    return Scope(tenant=version.tenant, kind=version.scope_kind, cluster=version.cluster, node=version.node)


def _finish(version: ModelVersion, fitted: Fitted) -> bool:
    """Store the model and make `version` (updated in place) a candidate, unless the sweep marked
    it lost meanwhile (False: its result is not used)."""
    artifact = artifact_save(data=state_dumps({"state": fitted.state, "rules": fitted.rules}))
    with transaction.atomic():
        fields = {
            "artifact": artifact,
            "status": Status.CANDIDATE,
            "train_points": fitted.points,
            "feature_schema": fitted.feature_schema,
            "metrics": fitted.metrics,
        }
        if not ModelVersion.objects.filter(pk=version.pk, status=Status.TRAINING).update(**fields):
            version.refresh_from_db()
            return False
        for name, value in fields.items():
            setattr(version, name, value)
        ModelVersionEvent.objects.create(
            version=version,
            action=ModelVersionEvent.Action.REGISTERED,
            actor=version.created_by,
            reason=f"trained on {fitted.points} points ({version.trigger})",
        )
    return True


def _judged(scope: Scope) -> list[Judged]:
    rows = scope.anomalies().exclude(feedback="").values_list("pk", "feedback", "deviation", "peak_ts")
    return [Judged(id=pk, feedback=fb, deviation=dev, peak_ts=peak.timestamp()) for pk, fb, dev, peak in rows]


def _holdout_start(start: datetime, end: datetime) -> float:
    gate = min(settings.VIGIL_GATE_WINDOW_SECONDS, (end - start).total_seconds() / 2)
    return end.timestamp() - gate


def _fit_series(version: ModelVersion, scope: Scope) -> Fitted:
    series = scope.series
    assert series is not None and version.train_from is not None and version.train_to is not None
    start, end = version.train_from, version.train_to
    detector = detector_create(version.detector, sensitivity=version.hyperparameters["sensitivity"])
    judged = _judged(scope)
    rules = rules_learn(judged)
    events = _events(scope, start, end)
    holdout = _holdout_start(start, end)
    points = Point.objects.filter(series=series, ts__gte=start, ts__lt=end)
    cap = settings.VIGIL_TRAIN_MAX_POINTS
    newest = list(points.order_by("-ts").values_list("ts", flat=True)[cap - 1 : cap])
    if newest:  # more than the cap: the newest points
        points = points.filter(ts__gte=newest[0])

    state, learned, excluded, held = detector.initial_state(), 0, 0, 0
    values, scores_seen, holdout_parts = [], [], []
    windows, last_anomalous = 0, None
    read_seconds = fit_seconds = 0.0
    gap = settings.VIGIL_ANOMALY_GAP_SAMPLES * 60.0
    for ts, vs, took in _chunks(points.order_by("ts").values_list("ts", "value")):
        read_seconds += took
        inside = calendar_mask(ts, events)
        excluded += int(inside.sum())
        ts, vs = ts[~inside], vs[~inside]
        if not len(ts):
            continue
        began = time.perf_counter()
        scores, state = detector.update(state, ts, vs)
        scores, suppressed = rules_apply(rules, scores, detector.threshold)
        fit_seconds += time.perf_counter() - began
        learned += len(ts)
        held += suppressed
        gap = settings.VIGIL_ANOMALY_GAP_SAMPLES * float(state.get("interval") or 60.0)
        scored = ~scores.warming
        values.append(scores.values[scored])
        scores_seen.append(scores.score[scored])
        anomalous_ts = scores.timestamps[scores.anomalous]
        if len(anomalous_ts):
            previous = np.concatenate([[last_anomalous if last_anomalous is not None else -np.inf], anomalous_ts[:-1]])
            windows += int((anomalous_ts - previous > gap).sum())
            last_anomalous = float(anomalous_ts[-1])
        if scores.timestamps[-1] >= holdout:
            holdout_parts.append(scores.select(scores.timestamps >= holdout))
    needed = 2 * detector.min_points
    if learned < needed:
        raise TrainingFailed(f"{learned} points in the training window; at least {needed} are needed")

    score = np.concatenate(scores_seen) if scores_seen else np.empty(0)
    tail = Scores.concatenate(holdout_parts)
    residual = residuals(tail)
    days = max((end - start).total_seconds() / DAY, 1e-9)
    value_ref = reference_of(np.concatenate(values)) if values else None
    residual_ref = reference_of(residual)
    metrics: dict[str, Any] = {
        "points": learned,
        "excluded_points": excluded,
        "warming_points": learned - len(score),
        "suppressed_points": held,
        "rules": len(rules),
        **_quantiles(score, detector.threshold),
        "anomaly_windows": windows,
        "anomaly_rate_per_day": round(windows / days, 6),
        "read_seconds": round(read_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "reference": {
            name: ref.as_dict() for name, ref in (("value", value_ref), ("residual", residual_ref)) if ref is not None
        },
    }
    found = anomaly_spans(tail.timestamps, tail.anomalous, gap_seconds=gap)
    return Fitted(
        state=state,
        rules=rules,
        points=learned,
        feature_schema=[series.metric],
        metrics=metrics,
        holdout=(holdout, end.timestamp()),
        windows=found,
        judged=judged,
    )


def residuals(scores: Scores) -> np.ndarray:
    """What the model did not expect, in the series' units (value - expected) at the points it
    scored after warming up. In units, not robust sds: the detector's scale follows a noise
    that grew, so deviations would hide the very change drift looks for."""
    residual = scores.values - scores.expected
    return residual[~scores.warming & np.isfinite(residual)]


def _chunks(rows: Any) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """(timestamps, values, seconds spent reading) per VIGIL_TRAIN_CHUNK_POINTS rows, read with a
    server-side cursor so a long window never sits in memory whole."""
    size = settings.VIGIL_TRAIN_CHUNK_POINTS
    iterator = rows.iterator(chunk_size=size)
    while True:
        began = time.perf_counter()
        batch = list(itertools.islice(iterator, size))
        took = time.perf_counter() - began
        if not batch:
            return
        ts = np.fromiter((moment.timestamp() for moment, _ in batch), dtype=np.float64, count=len(batch))
        vs = np.fromiter((value for _, value in batch), dtype=np.float64, count=len(batch))
        yield ts, vs, took


def _fit_node(version: ModelVersion, scope: Scope) -> Fitted:
    assert version.train_from is not None and version.train_to is not None
    start, end = version.train_from, version.train_to
    members = scope.members()
    if len(members) < 2:
        raise TrainingFailed(f"node {scope.cluster}/{scope.node} has {len(members)} series; at least 2 are needed")
    detector = node_detector_create(version.detector, sensitivity=version.hyperparameters["sensitivity"])
    columns = node_columns(members)
    names = [columns[s.pk] for s in members]
    began = time.perf_counter()
    rows = int((end - start).total_seconds() // 60) + 1
    ts, matrix = node_matrix(members, columns, after=start - timedelta(microseconds=1), until=end, limit=rows)
    read_seconds = time.perf_counter() - began
    inside = calendar_mask(ts, _events(scope, start, end))
    ts, matrix = ts[~inside], matrix[~inside]
    keep = ts < end.timestamp()
    ts, matrix = ts[keep], matrix[keep]
    holdout = _holdout_start(start, end)
    split = int(np.searchsorted(ts, holdout))
    if split < detector.min_rows:
        raise TrainingFailed(f"{split} minutes before the holdout; at least {detector.min_rows} are needed")
    began = time.perf_counter()
    state = detector.update(detector.initial_state(), ts[:split], matrix[:split], names)[1]
    scores, state = detector.update(state, ts[split:], matrix[split:], names)
    fit_seconds = time.perf_counter() - began
    days = max((end.timestamp() - holdout) / DAY, 1e-9)
    gap = settings.VIGIL_ANOMALY_GAP_SAMPLES * 60.0
    found = anomaly_spans(scores.timestamps, scores.anomalous, gap_seconds=gap)
    scored = scores.score[~scores.warming]
    reference = {}
    for j, name in enumerate(names):
        ref = reference_of(matrix[:split, j])
        if ref is not None:
            reference[name] = ref.as_dict()
    metrics: dict[str, Any] = {
        "points": len(ts),
        "excluded_points": int(inside.sum()),
        "warming_points": int(scores.warming.sum()),
        **_quantiles(scored, detector.threshold),
        "anomaly_windows": len(found),
        "anomaly_rate_per_day": round(len(found) / days, 6),
        "read_seconds": round(read_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "reference": reference,
    }
    return Fitted(
        state=state,
        rules=[],
        points=len(ts),
        feature_schema=names,
        metrics=metrics,
        holdout=(holdout, end.timestamp()),
        windows=found,
    )


def _quantiles(score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Score quantiles and contamination (the share at or above the threshold) of scored points."""
    if not len(score):
        return {"score_quantiles": {}, "contamination": None}
    quantiles = np.quantile(score, [0.5, 0.9, 0.99, 0.999])
    return {
        "score_quantiles": {
            name: round(float(q), 6) for name, q in zip(("p50", "p90", "p99", "p999"), quantiles, strict=True)
        },
        "contamination": round(float(np.mean(score >= threshold)), 6),
    }


# --- The gate ----------------------------------------------------------------------------------


def _gate_and_promote(version: ModelVersion, scope: Scope, fitted: Fitted) -> None:
    if version.status != Status.CANDIDATE:
        return
    forced = version.trigger == ModelVersion.Trigger.DRIFT and (
        scope.tenant.drift_policy == Tenant.DriftPolicy.RETRAIN_PROMOTE
    )
    # One transaction: the comparison is never seen without its outcome. Locks are taken in the
    # order of every writer of a scope (the serving row, then the versions), so a detection
    # registering an online version at the same moment waits instead of deadlocking.
    with transaction.atomic():
        serving = serving_lock(version)
        comparison = _gate(version, scope, fitted, serving)
        ModelVersion.objects.filter(pk=version.pk).update(metrics={**version.metrics, "gate": comparison})
        version.metrics = {**version.metrics, "gate": comparison}
        if comparison["passed"] or forced:
            reason = f"gate: {comparison['summary']}" if comparison["passed"] else "drift policy: retrain and promote"
            try:
                with transaction.atomic():
                    model = {"state": fitted.state, "rules": fitted.rules}
                    promoted = model_version_promote(version=version, reason=reason, model=model)
                version.status, version.activated_at = promoted.status, promoted.activated_at
                return
            except Rejected as exc:  # the artifact did not verify: the active version keeps serving
                logger.error("could not promote %s: %s", version, exc.message)
        ModelVersionEvent.objects.create(
            version=version,
            action=ModelVersionEvent.Action.GATED,
            reason=f"kept as a candidate: {comparison['summary']}",
        )


def _gate(version: ModelVersion, scope: Scope, fitted: Fitted, serving: Any) -> dict[str, Any]:
    """The comparison of the module's docstring, as recorded in `metrics["gate"]`. `serving` is
    the scope's serving row (locked), or None."""
    active = ModelVersion.objects.filter(tenant=scope.tenant, scope_key=scope.key, status=Status.ACTIVE).first()
    start, end = fitted.holdout
    if active is None:
        return {"passed": True, "active": None, "summary": "no active version to compare with"}
    gap = settings.VIGIL_ANOMALY_GAP_SAMPLES * 60.0
    produced = list(
        scope.anomalies()
        .filter(window_end__gte=_utc(start), window_start__lt=_utc(end))
        .values_list("window_start", "window_end", "feedback")
    )

    def found(a: datetime, b: datetime) -> bool:
        return any(s - gap <= b.timestamp() and a.timestamp() <= e + gap for s, e in fitted.windows)

    negatives = [(a, b) for a, b, fb in produced if fb in ("false_positive", "expected")]
    positives = [(a, b) for a, b, fb in produced if fb == "true_positive"]
    tp = [j for j in fitted.judged if j.feedback == "true_positive"]
    fp = [j for j in fitted.judged if j.feedback != "true_positive"]
    if serving is not None and serving.model_version_id == active.pk:
        active_rules = getattr(serving, "rules", [])  # what detection applies (a node has none)
    else:
        try:
            active_rules = model_version_load(version=active)["rules"]
        except ArtifactCorrupt:  # it holds nothing back
            active_rules = []
    candidate = {
        "anomalies": len(fitted.windows),
        "false_alarms": sum(found(a, b) for a, b in negatives),
        "true_positives": sum(found(a, b) for a, b in positives),
        "judged_true_positives_held": len(judged_rules_hold(fitted.rules, tp)),
        "judged_false_positives_held": len(judged_rules_hold(fitted.rules, fp)),
    }
    current = {
        "anomalies": len(produced),
        "false_alarms": len(negatives),
        "true_positives": len(positives),
        "judged_true_positives_held": len(judged_rules_hold(active_rules, tp)),
        "judged_false_positives_held": len(judged_rules_hold(active_rules, fp)),
    }
    allowance = max(1, math.ceil(0.25 * current["anomalies"]))
    checks = {
        "false_alarms": candidate["false_alarms"] <= current["false_alarms"],
        "true_positives": candidate["true_positives"] >= current["true_positives"],
        "judged": candidate["judged_true_positives_held"] <= current["judged_true_positives_held"]
        and candidate["judged_false_positives_held"] >= current["judged_false_positives_held"],
        "stability": candidate["anomalies"] <= current["anomalies"] + allowance,
    }
    passed = all(checks.values())
    failed = [name for name, ok in checks.items() if not ok]
    summary = f"no worse than v{active.version}" if passed else f"worse than v{active.version} on {', '.join(failed)}"
    summary += (
        f" (holdout anomalies {candidate['anomalies']} vs {current['anomalies']}, "
        f"false alarms {candidate['false_alarms']} vs {current['false_alarms']})"
    )
    return {
        "passed": passed,
        "active": active.pk,
        "active_version": active.version,
        "window": [_utc(start).isoformat(), _utc(end).isoformat()],
        "candidate": candidate,
        "current": current,
        "checks": checks,
        "summary": summary,
    }


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# --- Scopes to train ---------------------------------------------------------------------------


def scopes_of(tenant: Tenant, *, since: datetime) -> Iterable[Scope]:
    """The tenant's scopes that detection serves and that received points since `since`: each
    detected series, and each node with a node detector state."""
    from analytics.models import NodeDetectorState

    series = MetricSeries.objects.filter(
        tenant=tenant, last_point_at__gte=since, detector_state__isnull=False
    ).select_related("tenant")
    for one in series.order_by("pk").iterator(chunk_size=2000):
        yield Scope.of_series(one)
    nodes = (
        NodeDetectorState.objects.filter(tenant=tenant, detector=settings.VIGIL_NODE_DETECTOR)
        .filter(last_ts__gte=since)
        .order_by("cluster", "node")
        .values_list("cluster", "node")
    )
    for cluster, node in nodes:
        yield Scope(tenant=tenant, kind=Kind.NODE, cluster=cluster, node=node)


# --- Publishing --------------------------------------------------------------------------------

# Scopes per `scopes_train` message; a queued fan-out message older than this is dropped (the next
# night publishes again).
TRAIN_SHARD = 25
FAN_OUT_EXPIRES = timedelta(hours=12)


def models_train_publish(*, now: datetime | None = None) -> int:
    """Periodic (nightly): publish `scopes_train` for every scope of every active tenant that
    received points in the training window, TRAIN_SHARD scopes a message, round-robin across
    tenants so one large tenant does not hold the others back. Returns messages sent."""
    start, end = training_window(now)
    per_tenant = []
    for tenant in Tenant.objects.filter(is_active=True).order_by("pk"):
        shards: list[tuple[str, list[str]]] = []
        series, nodes = [], []
        for scope in scopes_of(tenant, since=start):
            if scope.series is not None:
                series.append(str(scope.series.pk))
            else:
                nodes.append(f"{scope.cluster}/{scope.node}")
        for kind, keys in ((Kind.SERIES, series), (Kind.NODE, nodes)):
            shards += [(kind, keys[i : i + TRAIN_SHARD]) for i in range(0, len(keys), TRAIN_SHARD)]
        per_tenant.append([(tenant.pk, kind, keys) for kind, keys in shards])
    sent = 0
    for rank in itertools.zip_longest(*per_tenant):
        for shard in rank:
            if shard is not None and scopes_train_publish(
                *shard, trigger=ModelVersion.Trigger.SCHEDULE, start=start, end=end, expires=FAN_OUT_EXPIRES
            ):
                sent += 1
    return sent


def scopes_train_publish(
    tenant_id: int,
    kind: str,
    keys: list[str],
    *,
    trigger: str,
    start: datetime,
    end: datetime,
    expires: timedelta | None = None,
) -> bool:
    """Enqueue `mlops.tasks.scopes_train` on the train queue. Never raises: a lost message is
    trained by the next run (nightly, or the next drift verdict)."""
    from mlops.tasks import scopes_train as task

    options: dict[str, Any] = {"expires": expires.total_seconds()} if expires is not None else {}
    try:
        task.apply_async(args=(tenant_id, kind, keys, trigger, start.isoformat(), end.isoformat()), **options)
    except Exception:
        logger.warning("could not publish training of %d %s scopes", len(keys), kind, exc_info=True)
        return False
    return True


def scopes_train(*, tenant_id: int, kind: str, keys: list[str], trigger: str, start: datetime, end: datetime) -> int:
    """Train each scope of `keys` (series ids, or "cluster/node") of the tenant on [start, end),
    one after the other; scopes gone since are skipped. Returns the versions trained now."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        return 0
    scopes: list[Scope] = []
    if kind == Kind.SERIES:
        found = MetricSeries.objects.filter(tenant=tenant, pk__in=[int(k) for k in keys]).select_related("tenant")
        scopes = [Scope.of_series(series) for series in found.order_by("pk")]
    else:
        for key in keys:
            cluster, _, node = key.partition("/")
            scopes.append(Scope(tenant=tenant, kind=Kind.NODE, cluster=cluster, node=node))
    trained = 0
    for scope in scopes:
        version, new = model_version_train_start(scope=scope, trigger=trigger, start=start, end=end)
        if new:
            model_version_train(version=version, scope=scope)
            trained += 1
    return trained


def model_version_train_request(
    *, scope: Scope, trigger: str, actor: str = "", start: datetime | None = None, end: datetime | None = None
) -> tuple[ModelVersion, bool]:
    """Train `scope` on [start, end) (by default `training_window()`) on the train queue: the
    version from `model_version_train_start`, published after commit when it is new. What the
    API, the admin and a drift verdict ask for."""
    if start is None or end is None:
        start, end = training_window()
    version, created = model_version_train_start(scope=scope, trigger=trigger, start=start, end=end, actor=actor)
    if created:
        version_train_publish(version)
    return version, created


def version_train_publish(version: ModelVersion) -> None:
    """After commit, enqueue the training of a version the API or the admin started. If the
    broker is down the version stays `training` until the sweep marks it failed (and says so)."""
    from mlops.tasks import version_train as task

    def publish() -> None:
        try:
            task.delay(version.pk)
        except Exception:
            logger.warning("could not publish training of %s", version, exc_info=True)

    transaction.on_commit(publish)


def feedback_retrain_publish(anomaly: AnomalyResult) -> bool:
    """After feedback on a series' anomaly: if the series now has a pattern of negatives that its
    active version's rules do not cover yet (mlops.feedback), train it (trigger `feedback`) so the
    pattern stops alerting once the gate lets the new version through. Returns whether it did."""
    if anomaly.series_id is None or anomaly.feedback not in ("false_positive", "expected"):
        return False
    series = MetricSeries.objects.select_related("tenant").get(pk=anomaly.series_id)
    scope = Scope.of_series(series)
    rules = rules_learn(_judged(scope))
    covered: set[int] = set()
    active = ModelVersion.objects.filter(tenant=series.tenant, scope_key=scope.key, status=Status.ACTIVE).first()
    if active is not None and active.artifact_id is not None:
        try:
            covered = {i for rule in model_version_load(version=active)["rules"] for i in rule["anomalies"]}
        except ArtifactCorrupt:
            covered = set()
    if not any(set(rule["anomalies"]) - covered for rule in rules):
        return False
    start, end = training_window()
    transaction.on_commit(
        lambda: scopes_train_publish(
            series.tenant_id, Kind.SERIES, [str(series.pk)], trigger=ModelVersion.Trigger.FEEDBACK, start=start, end=end
        )
    )
    return True
