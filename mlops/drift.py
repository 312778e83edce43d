"""Drift: is an active model still a model of its data? (README, "Model lifecycle".)

Every VIGIL_DRIFT_EVERY_SECONDS beat checks each trained active version (versions learned
online have no training reference and are not checked). The version's model replays the points
since its training ended, as it would have served them (calendar events left out, its rules
applied), and the last VIGIL_DRIFT_WINDOW_SECONDS are compared with the reference its training
recorded (mlops.drift_stats):

- data drift, per feature: a series' values and residuals (value - expected: a new seasonal
  shape shows there, not in the values), a node's metrics. Each
  gets the PSI, the two-sample KS statistic and p-value (effective sample sizes, so
  autocorrelated minutes do not count as independent) and the Wasserstein distance. A feature
  drifts only when the difference is both significant and of practical size;
- concept drift: the anomaly rate against the rate in training (a Poisson test), and the
  precision of the feedback on the version's anomalies against the feedback before it.

One DriftReport per version and window end. A `drift` verdict acts by the tenant's policy:
train a candidate (trigger `drift`) that the gate judges, or that is promoted regardless, or
only report (and fire `drift` alert rules). A scope retrained for drift within
VIGIL_DRIFT_COOLDOWN_SECONDS is not retrained again (action `cooldown`).
"""

from __future__ import annotations

import itertools
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from alerts.evaluation import KINDS_AFTER_DRIFT, tenant_rules_evaluate_publish
from analytics.anomalies import node_columns, node_matrix
from analytics.detection import detector_create
from analytics.detection.multivariate import node_detector_create
from analytics.detection.windows import anomaly_spans
from analytics.models import Point
from mlops.calendars import calendar_events, calendar_mask
from mlops.drift_stats import Reference, Thresholds, feature_drift, precision_drift, rate_drift
from mlops.feedback import rules_apply
from mlops.models import DriftReport, ModelVersion
from mlops.services import model_version_load
from mlops.training import (
    Scope,
    model_version_train_request,
    residuals,
    training_window,
    version_scope,
)
from tenants.models import Tenant

logger = logging.getLogger(__name__)

Status = ModelVersion.Status
Verdict = DriftReport.Verdict
DRIFT_SHARD = 50
FAN_OUT_EXPIRES = timedelta(minutes=50)
DAY = 86400.0


def models_drift_publish(*, now: datetime | None = None) -> int:
    """Periodic: publish `versions_drift` for every trained active version, DRIFT_SHARD a message,
    round-robin across tenants, all for the same window end (`now` rounded down to the run
    interval, so a repeated run finds its reports written). Returns messages sent."""
    from mlops.tasks import versions_drift as task

    window_to = _window_end(now or timezone.now())
    versions = (
        ModelVersion.objects.filter(status=Status.ACTIVE, scope_kind__in=["series", "node"], train_to__isnull=False)
        .exclude(trigger=ModelVersion.Trigger.ONLINE)
        .order_by("tenant_id", "pk")
        .values_list("tenant_id", "pk")
    )
    per_tenant = [
        [ids[i : i + DRIFT_SHARD] for i in range(0, len(ids), DRIFT_SHARD)]
        for ids in ([pk for _, pk in group] for _, group in itertools.groupby(versions, key=lambda row: row[0]))
    ]
    sent = 0
    for rank in itertools.zip_longest(*per_tenant):
        for shard in rank:
            if shard is None:
                continue
            try:
                task.apply_async(args=(shard, window_to.isoformat()), expires=FAN_OUT_EXPIRES.total_seconds())
                sent += 1
            except Exception:  # broker down: the next run publishes again
                logger.warning("could not publish drift checks of %d versions", len(shard), exc_info=True)
    return sent


def _window_end(now: datetime) -> datetime:
    every = settings.VIGIL_DRIFT_EVERY_SECONDS
    return datetime.fromtimestamp(math.floor(now.timestamp() / every) * every, tz=UTC)


def versions_drift(*, version_ids: list[int], window_to: datetime) -> int:
    """Check each of `version_ids` that is still active. Returns the reports written now."""
    written, tenants = 0, set()
    versions = ModelVersion.objects.filter(pk__in=version_ids, status=Status.ACTIVE).select_related(
        "tenant", "series__tenant", "artifact"
    )
    for version in versions.order_by("pk"):
        if not DriftReport.objects.filter(model_version=version, window_to=window_to).exists():
            model_version_drift(version=version, window_to=window_to)
            written += 1
            tenants.add(version.tenant_id)
    for tenant_id in sorted(tenants):  # `drift` alert rules read the reports now, not at beat's tick
        tenant_rules_evaluate_publish(tenant_id=tenant_id, kinds=KINDS_AFTER_DRIFT)
    return written


def model_version_drift(*, version: ModelVersion, window_to: datetime) -> DriftReport:
    """The drift report of `version` for the window ending at `window_to` (see the module),
    written once: a second call returns the first report."""
    existing = DriftReport.objects.filter(model_version=version, window_to=window_to).first()
    if existing is not None:
        return existing
    assert version.train_to is not None
    window_from = max(window_to - timedelta(seconds=settings.VIGIL_DRIFT_WINDOW_SECONDS), version.train_to)
    scope = version_scope(version)
    model = model_version_load(version=version)
    if version.scope_kind == ModelVersion.ScopeKind.SERIES:
        features, windows = _series_recent(version, scope, model, window_from, window_to)
    else:
        features, windows = _node_recent(version, scope, model, window_from, window_to)
    points = max((len(values) for values in features.values()), default=0)
    statistics: dict[str, Any] = {"features": {}, "concept": {}}
    drifted: list[str] = []
    if points < settings.VIGIL_DRIFT_MIN_POINTS:
        verdict = Verdict.INSUFFICIENT
    else:
        thresholds = Thresholds(
            alpha=settings.VIGIL_DRIFT_ALPHA, psi=settings.VIGIL_DRIFT_PSI, wasserstein=settings.VIGIL_DRIFT_WASSERSTEIN
        )
        references = {name: Reference.from_dict(ref) for name, ref in (version.metrics.get("reference") or {}).items()}
        # How dependent a series' points are is known from its residuals in training (its values
        # also vary with the season); a node's metrics each from their own reference.
        residual = references.get("residual")
        for name, values in features.items():
            if name in references:
                ref = residual if residual is not None else references[name]
                independence = ref.n_eff / ref.n if ref.n else None
                result = feature_drift(references[name], values, thresholds, independence=independence)
                statistics["features"][name] = result
                if result.get("drifted"):
                    drifted.append(name)
        days = (window_to - window_from).total_seconds() / DAY
        rate = rate_drift(
            reference_rate_per_day=float(version.metrics.get("anomaly_rate_per_day") or 0.0),
            count=windows,
            days=days,
            alpha=settings.VIGIL_DRIFT_ALPHA,
        )
        reference, recent = _feedback(version, scope)
        precision = precision_drift(reference=reference, recent=recent)
        statistics["concept"] = {"anomaly_rate": rate, "feedback_precision": precision}
        drifted += [name for name, result in statistics["concept"].items() if result.get("drifted")]
        verdict = Verdict.DRIFT if drifted else Verdict.OK
    report = DriftReport(
        tenant=version.tenant,
        model_version=version,
        scope_key=version.scope_key,
        window_from=window_from,
        window_to=window_to,
        points=points,
        statistics=statistics,
        verdict=verdict,
        drifted=drifted,
    )
    with transaction.atomic():
        if verdict == Verdict.DRIFT:
            report.action, report.retrained = _act(version, scope, window_to)
        try:
            with transaction.atomic():
                report.save()
        except IntegrityError:  # written meanwhile by another run of the same window
            return DriftReport.objects.get(model_version=version, window_to=window_to)
    return report


def _act(version: ModelVersion, scope: Scope, window_to: datetime) -> tuple[str, ModelVersion | None]:
    """What the tenant's policy does with a drift verdict: (action, the version it trains)."""
    if version.tenant.drift_policy == Tenant.DriftPolicy.NOTIFY:
        return DriftReport.Action.NOTIFY, None
    since = timezone.now() - timedelta(seconds=settings.VIGIL_DRIFT_COOLDOWN_SECONDS)
    recent = ModelVersion.objects.filter(
        tenant=version.tenant,
        scope_key=version.scope_key,
        trigger=ModelVersion.Trigger.DRIFT,
        created_at__gte=since,
    ).exclude(status=Status.FAILED)
    if recent.exists():
        return DriftReport.Action.COOLDOWN, None
    start, end = training_window(window_to)
    retrained, _ = model_version_train_request(scope=scope, trigger=ModelVersion.Trigger.DRIFT, start=start, end=end)
    return DriftReport.Action.RETRAIN, retrained


def _series_recent(
    version: ModelVersion, scope: Scope, model: dict[str, Any], window_from: datetime, window_to: datetime
) -> tuple[dict[str, np.ndarray], int]:
    """The version's model replayed from the end of its training to `window_to`: the values and
    residuals it scored in [window_from, window_to), and the anomalies it found there."""
    assert scope.series is not None and version.train_to is not None
    detector = detector_create(version.detector, sensitivity=version.hyperparameters.get("sensitivity", "medium"))
    state = model["state"]
    since = datetime.fromtimestamp(state["last_ts"], tz=UTC) if state.get("last_ts") else version.train_to
    rows = list(
        Point.objects.filter(series=scope.series, ts__gt=since, ts__lt=window_to)
        .order_by("ts")
        .values_list("ts", "value")[: settings.VIGIL_TRAIN_MAX_POINTS]
    )
    if not rows:
        return {"value": np.empty(0), "residual": np.empty(0)}, 0
    ts = np.fromiter((moment.timestamp() for moment, _ in rows), dtype=np.float64, count=len(rows))
    vs = np.fromiter((value for _, value in rows), dtype=np.float64, count=len(rows))
    events = calendar_events(
        tenant_id=scope.tenant.pk, cluster=scope.cluster, node=scope.node, start=rows[0][0], end=window_to
    )
    keep = ~calendar_mask(ts, events)
    scores, state = detector.update(state, ts[keep], vs[keep])
    scores = rules_apply(model["rules"], scores, detector.threshold)[0]
    recent = (scores.timestamps >= window_from.timestamp()) & ~scores.warming
    part = scores.select(recent)
    gap = settings.VIGIL_ANOMALY_GAP_SAMPLES * float(state.get("interval") or 60.0)
    windows = len(anomaly_spans(part.timestamps, part.anomalous, gap_seconds=gap))
    return {"value": part.values, "residual": residuals(part)}, windows


def _node_recent(
    version: ModelVersion, scope: Scope, model: dict[str, Any], window_from: datetime, window_to: datetime
) -> tuple[dict[str, np.ndarray], int]:
    """As `_series_recent`, for a node: each metric's 1-minute means, and the anomalies."""
    assert version.train_to is not None
    members = scope.members()
    if len(members) < 2:
        return {}, 0
    detector = node_detector_create(version.detector, sensitivity=version.hyperparameters.get("sensitivity", "medium"))
    columns = node_columns(members)
    names = [columns[s.pk] for s in members]
    state = model["state"]
    since = datetime.fromtimestamp(state["last_ts"], tz=UTC) if state.get("last_ts") else version.train_to
    rows = int((window_to - since).total_seconds() // 60) + 1
    ts, matrix = node_matrix(members, columns, after=since, until=window_to - timedelta(microseconds=1), limit=rows)
    if not len(ts):
        return {name: np.empty(0) for name in names}, 0
    events = calendar_events(
        tenant_id=scope.tenant.pk, cluster=scope.cluster, node=scope.node, start=since, end=window_to
    )
    keep = ~calendar_mask(ts, events)
    ts, matrix = ts[keep], matrix[keep]
    scores, _ = detector.update(state, ts, matrix, names)
    recent = scores.timestamps >= window_from.timestamp()
    gap = settings.VIGIL_ANOMALY_GAP_SAMPLES * 60.0  # as training counted them (mlops.training)
    windows = len(anomaly_spans(scores.timestamps[recent], scores.anomalous[recent], gap_seconds=gap))
    in_window = ts >= window_from.timestamp()
    return {name: matrix[in_window, j] for j, name in enumerate(names)}, windows


def _feedback(version: ModelVersion, scope: Scope) -> tuple[tuple[int, int], tuple[int, int]]:
    """(true positives, judged) among the version's own anomalies, and among the scope's
    anomalies before it (the reference)."""
    judged = scope.anomalies().exclude(feedback="")
    mine = list(judged.filter(model_version=version).values_list("feedback", flat=True))
    before = list(judged.exclude(model_version=version).values_list("feedback", flat=True))
    return (before.count("true_positive"), len(before)), (mine.count("true_positive"), len(mine))
