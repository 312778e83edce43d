"""Writes for anomaly detection: streaming scoring of series, the rescan, node-level
detection and feedback on anomalies.

How the pieces fit (README, "Anomaly detection pipeline"):

- Streaming (`series_detect`). After the ingest pipeline claims a batch it publishes the
  batch's series ids to the `detect` queue. Per series, under a row lock on its
  `DetectorState`, the points newer than `last_ts` are scored by the series' detector
  (`settings.VIGIL_DETECTOR`, the series' effective sensitivity), the state advances, the
  minute scores go to `AnomalyScore` and the anomalous points, merged into windows, to
  `AnomalyResult`, all in one transaction. Points older than `last_ts` when they arrive
  (late data) are not scored here.
- The rescan (`anomalies_rescan`, beat, every minute): (a) re-publishes detection for series
  whose newest point has waited longer than a grace period without being scored (a lost
  message); (b) re-scores the late points behind rollup minutes revised well after they
  ended (`series_rescore`), against the current state, without advancing it.
- Nodes (`nodes_detect`, beat, every 5 minutes): per node, the 1-minute rollup means of its
  series, aligned in time, go through the multivariate detector (`VIGIL_NODE_DETECTOR`).

Merging into `AnomalyResult` is a join: a window overlapping or within the gap tolerance of
an existing row of the same series (or node) and detector widens that row (earliest start,
latest end, the higher peak, the more structural label, the union of detectors); otherwise
it is a new row. Joins are idempotent and order-free, so re-scoring the same points, from
the stream, the rescan or from scratch, gives the same rows.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone as dj_timezone

from alerts.evaluation import KINDS_AFTER_DETECTION, series_rules_evaluate_publish
from analytics import selectors
from analytics.detection import Detector, Scores, State, detector_create
from analytics.detection.explain import explain, explain_node
from analytics.detection.multivariate import NodeDetector, NodeScores, node_detector_create
from analytics.detection.windows import LABEL_PRIORITY, AnomalyWindow, anomaly_windows
from analytics.models import (
    AnomalyResult,
    AnomalyScore,
    DetectorState,
    MetricSeries,
    NodeDetectorState,
    Point,
    Rollup,
)
from analytics.rollups import chunked
from mlops.calendars import Calendar, calendar_events, calendar_mask, tenant_calendar
from mlops.feedback import rules_apply
from mlops.models import ModelVersion
from tenants.models import Tenant

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = 60
# Series ids per `series_detect` message, and (series, range) pairs per `series_rescore`.
DETECT_SHARD = 200
RESCORE_SHARD = 200
# Nodes per `node_detect` message.
NODE_SHARD = 50
# A node run scores at most this much of its newest minutes in one detector call (see
# `_node_detect_one`).
NODE_SCORE_TAIL = timedelta(hours=1)
# A message of the rescan or of the node fan-out still queued after this is dropped: the
# next run publishes what is still due, so a backed-up queue does not fill with duplicates.
FAN_OUT_EXPIRES = timedelta(minutes=10)
# Revised rollup minutes of one series closer than this become one re-score range.
RESCORE_JOIN = timedelta(minutes=10)
# The cache key of the rescan's watermark (see `anomalies_rescan`).
RESCAN_WATERMARK_KEY = "vigil:anomalies-rescan:revised-watermark"
# The interval assumed for a series whose detector has not measured one yet.
DEFAULT_INTERVAL = 60.0


# --- Feedback --------------------------------------------------------------------------------


def anomaly_feedback_set(*, anomaly: AnomalyResult, feedback: str, comment: str = "") -> AnomalyResult:
    """Record a person's verdict on an anomaly (true positive, false positive, expected).

    Sets `feedback`, `feedback_comment` and `feedback_at`; writes nothing (and keeps
    `feedback_at`) when both the feedback and the comment are unchanged, so a repeated
    submission is a no-op. A new pattern of false positives trains the series again
    (mlops.training.feedback_retrain_publish). `feedback` must be one of AnomalyResult.Feedback or "" to clear.
    """
    if feedback and feedback not in AnomalyResult.Feedback.values:
        raise ValueError(f"unknown feedback {feedback!r}; expected one of {sorted(AnomalyResult.Feedback.values)}")
    if anomaly.feedback == feedback and anomaly.feedback_comment == comment:
        return anomaly
    with transaction.atomic():
        anomaly.feedback = feedback
        anomaly.feedback_comment = comment
        anomaly.feedback_at = dj_timezone.now() if feedback else None
        anomaly.save(update_fields=["feedback", "feedback_comment", "feedback_at", "updated_at"])
    from mlops.training import feedback_retrain_publish  # mlops builds on analytics: imported late

    feedback_retrain_publish(anomaly)
    return anomaly


# --- Streaming ---------------------------------------------------------------------------------


def series_sensitivity(series: MetricSeries) -> str:
    """The series' effective detection sensitivity: its own, else its tenant's."""
    return series.detection_sensitivity or series.tenant.detection_sensitivity


def series_detect(*, series_ids: Iterable[int]) -> int:
    """Score the points of `series_ids` that are newer than what their detectors have seen.

    Per series, in one transaction under a row lock on its DetectorState (created on first
    use with `settings.VIGIL_DETECTOR` and the series' effective sensitivity; two workers on
    the same series take turns): reads the points after `last_ts` (at most
    VIGIL_DETECT_MAX_POINTS, oldest first), updates the detector, saves the state and
    `last_ts`, upserts the per-minute maxima into AnomalyScore, merges the anomalous windows
    into AnomalyResult (see the module) and closes the open rows that the series has moved
    past by more than the gap tolerance. When the detector or the sensitivity changed, the
    state is reset first: the new detector learns the history up to `last_ts` silently
    (VIGIL_DETECT_WARMUP_POINTS, no scores written) and streaming resumes after it; the
    previous detector's open anomalies are closed. A series with more points due than one
    run reads is published again after commit, and the anomaly alert rules of the scored
    series are evaluated (alerts.evaluation).

    Returns the number of points scored. Idempotent: a second run finds no point after
    `last_ts` and writes nothing. Series that no longer exist are skipped.
    """
    scored, unfinished, touched = 0, [], []
    calendars: dict[int, Calendar] = {}  # per tenant, read once for this call
    for series_id in sorted(set(series_ids)):
        count, more = _series_detect_one(series_id, calendars)
        scored += count
        if count:
            touched.append(series_id)
        if more:
            unfinished.append(series_id)
    if unfinished:
        transaction.on_commit(lambda: series_detect_publish(series_ids=unfinished))
    if touched:
        # Anomaly alert rules read what was just written: evaluate them now, not at beat's tick.
        transaction.on_commit(lambda: series_rules_evaluate_publish(series_ids=touched, kinds=KINDS_AFTER_DETECTION))
    return scored


def series_detect_publish(*, series_ids: Iterable[int], expires: timedelta | None = None) -> int:
    """Enqueue `analytics.tasks.series_detect` on the detect queue, DETECT_SHARD series a
    message. Never raises: a lost message is found by the rescan. Returns messages sent."""
    from analytics.tasks import series_detect as task

    options: dict[str, Any] = {"expires": expires.total_seconds()} if expires is not None else {}
    sent = 0
    for chunk in chunked(sorted(set(series_ids)), DETECT_SHARD):
        try:
            task.apply_async(args=(chunk,), **options)
            sent += 1
        except Exception:  # the broker is down or unreachable; the rescan re-publishes
            logger.warning("could not publish detection of %d series; the rescan will", len(chunk), exc_info=True)
    return sent


def _series_detect_one(series_id: int, calendars: dict[int, Calendar]) -> tuple[int, bool]:
    """`series_detect` of one series: (points scored, more points are due). `calendars` holds the
    suppressing calendar of each tenant met so far in this call (read on first use)."""
    with transaction.atomic():
        series = MetricSeries.objects.select_related("tenant").filter(pk=series_id).first()
        if series is None:
            return 0, False
        name, sensitivity = settings.VIGIL_DETECTOR, series_sensitivity(series)
        detector = detector_create(name, sensitivity=sensitivity)
        row = _state_lock(series, detector, name, sensitivity)
        reset = row.detector != name or row.sensitivity != sensitivity
        if reset:
            _state_reset(row, series, detector, name, sensitivity)
        elif row.model_version_id is None:
            _series_version_attach(row, series, detector)
            reset = True  # saved below

        limit = settings.VIGIL_DETECT_MAX_POINTS
        points = Point.objects.filter(series_id=series.pk)
        if row.last_ts is not None:
            points = points.filter(ts__gt=row.last_ts)
        rows = list(points.order_by("ts").values_list("ts", "value")[: limit + 1].iterator(chunk_size=10_000))
        more = len(rows) > limit
        rows = rows[:limit]
        if not rows:
            if reset:
                row.save(update_fields=[*SERVING_FIELDS, "updated_at"])
            return 0, False
        ts = np.array([moment.timestamp() for moment, _ in rows])
        values = np.array([value for _, value in rows], dtype=np.float64)
        # A calendar event that suppresses detection: its points are neither scored nor learned.
        held = calendar_mask(ts, _suppressing(calendars, series).covering(series.cluster, series.node))
        scores, state = detector.update(row.state, ts[~held], values[~held])
        scores = rules_apply(row.rules, scores, detector.threshold)[0]
        if not _json_safe(state):
            # PostgreSQL refuses NaN and infinities in JSON; a detector that produced one (an
            # absurd value overflowing somewhere) starts afresh rather than failing this series
            # on every run. Its scores of this batch are kept: they were computed before.
            logger.error("detector %s of series %s produced a non-finite state; starting it afresh", name, series.pk)
            state = detector.initial_state()
        row.state = state
        row.last_ts = rows[-1][0]
        row.save(update_fields=[*SERVING_FIELDS, "last_ts", "updated_at"])

        gap = _gap_seconds(state, scores)
        _scores_write(series.pk, scores)
        _series_windows_merge(
            series=series,
            detector=name,
            version_id=row.model_version_id,
            scores=scores,
            gap=gap,
            horizon=row.last_ts.timestamp() - gap,
        )
        return len(scores), more


def _suppressing(calendars: dict[int, Calendar], series: MetricSeries) -> Calendar:
    """The suppressing events of the series' tenant over every point detection can still meet
    (raw retention back, the allowed clock skew ahead), from `calendars` or read into it."""
    if series.tenant_id not in calendars:
        now = dj_timezone.now()
        calendars[series.tenant_id] = tenant_calendar(
            tenant_id=series.tenant_id,
            start=now - timedelta(days=series.tenant.retention_raw_days),
            end=now + timedelta(seconds=settings.VIGIL_INGEST_MAX_FUTURE_SECONDS),
            suppressing=True,
        )
    return calendars[series.tenant_id]


def _series_events(
    series: MetricSeries, start: datetime, end: datetime, *, suppressing: bool = True
) -> list[tuple[float, float]]:
    """The calendar events over the series (or its node) in [start, end]: those that hold
    detection back, or (`suppressing=False`) all, as training leaves them all out."""
    return calendar_events(
        tenant_id=series.tenant_id,
        cluster=series.cluster,
        node=series.node,
        start=start,
        end=end,
        suppressing=suppressing,
    )


def _json_safe(state: State) -> bool:
    try:
        json.dumps(state, allow_nan=False)
    except ValueError:
        return False
    return True


def _state_lock(series: MetricSeries, detector: Detector, name: str, sensitivity: str) -> DetectorState:
    """The series' DetectorState, locked for this transaction; created on first use.

    INSERT ... ON CONFLICT DO NOTHING, then SELECT ... FOR UPDATE: a worker racing to create
    the same row waits for the first one's commit and then locks the committed row.
    """
    row = DetectorState.objects.select_for_update().filter(series_id=series.pk).first()
    if row is None:
        DetectorState.objects.bulk_create(
            [
                DetectorState(
                    series_id=series.pk, detector=name, sensitivity=sensitivity, state=detector.initial_state()
                )
            ],
            ignore_conflicts=True,
        )
        row = DetectorState.objects.select_for_update().get(series_id=series.pk)
    return row


def _state_reset(row: DetectorState, series: MetricSeries, detector: Detector, name: str, sensitivity: str) -> None:
    """Start the series' state over for a new detector or sensitivity, without a flood.

    The new detector learns the last VIGIL_DETECT_WARMUP_POINTS points up to `last_ts`
    silently (they were scored already, by the previous configuration; re-scoring them would
    report history again), so streaming resumes where it was with a warmed-up state. The
    previous detector's open windows are closed: nothing will extend them any more.
    """
    state = detector.initial_state()
    if row.last_ts is not None:
        history = list(
            Point.objects.filter(series_id=series.pk, ts__lte=row.last_ts)
            .order_by("-ts")
            .values_list("ts", "value")[: settings.VIGIL_DETECT_WARMUP_POINTS]
        )[::-1]
        if history:
            ts = np.array([moment.timestamp() for moment, _ in history])
            state = detector.update(state, ts, np.array([value for _, value in history], dtype=np.float64))[1]
    logger.info(
        "detector state of series %s reset: %s/%s -> %s/%s", series.pk, row.detector, row.sensitivity, name, sensitivity
    )
    AnomalyResult.objects.filter(series_id=series.pk, status=AnomalyResult.Status.OPEN).exclude(detector=name).update(
        status=AnomalyResult.Status.CLOSED, updated_at=dj_timezone.now()
    )
    row.detector, row.sensitivity, row.state, row.rules = name, sensitivity, state, []
    row.model_version = _serve_online(series.tenant, "series", name, state, sensitivity, series=series)


def _gap_seconds(state: State, scores: Scores) -> float:
    """The gap tolerance: VIGIL_ANOMALY_GAP_SAMPLES sampling intervals of the series (the
    detector's running estimate, else the median gap of these points, else a minute)."""
    interval = state.get("interval")
    if not interval and len(scores) > 1:
        interval = float(np.median(np.diff(scores.timestamps)))
    return float(settings.VIGIL_ANOMALY_GAP_SAMPLES) * float(interval or DEFAULT_INTERVAL)


# --- Writing scores and windows -------------------------------------------------------------


def _scores_write(series_id: int, scores: Scores) -> None:
    """Upsert the highest score per minute of `scores` into AnomalyScore, keeping the higher
    of the stored and the new score (so re-scoring never lowers what was reported)."""
    if not len(scores):
        return
    ts = np.asarray(scores.timestamps, dtype=np.float64)
    score = np.nan_to_num(np.asarray(scores.score, dtype=np.float64), nan=0.0)
    buckets = (np.floor(ts / MINUTE) * MINUTE).astype(np.int64)
    order = np.argsort(buckets, kind="stable")
    buckets, score = buckets[order], score[order]
    starts = np.flatnonzero(np.append(True, buckets[1:] != buckets[:-1]))
    maxima = np.maximum.reduceat(score, starts)
    adapt = connection.ops.adapt_datetimefield_value
    rows = [
        (series_id, adapt(_utc(float(bucket))), float(value))
        for bucket, value in zip(buckets[starts].tolist(), maxima.tolist(), strict=True)
    ]
    table = AnomalyScore._meta.db_table
    with connection.cursor() as cursor:
        for chunk in chunked(rows, 1000):
            cursor.execute(
                f"INSERT INTO {table} (series_id, bucket, score) VALUES {', '.join(['(%s, %s, %s)'] * len(chunk))} "
                f"ON CONFLICT (series_id, bucket) DO UPDATE SET score = excluded.score "
                f"WHERE excluded.score > {table}.score",
                [value for row in chunk for value in row],
            )


def _series_windows_merge(
    *, series: MetricSeries, detector: str, version_id: int | None, scores: Scores, gap: float, horizon: float
) -> list[AnomalyResult]:
    """Merge the anomalous windows of `scores` into the series' AnomalyResult rows of
    `detector`, then set the status of the rows: open while their end is at or after
    `horizon` (the newest scored point minus the gap), closed before it."""
    period = scores.info.get("period")
    existing = AnomalyResult.objects.filter(series_id=series.pk, detector=detector)
    written = []
    for window in anomaly_windows(scores, gap_seconds=gap):
        row, found, before = _merge(
            existing,
            _Found(window=window, period=period),
            gap=gap,
            horizon=horizon,
            new=lambda: _series_row(series, detector, version_id),
        )
        row.explanation, row.details = explain(
            found.window, metric=series.metric, unit=series.unit, period=found.period, node=series.node
        )
        if before is None or _facts(row) != before:
            row.save()
        written.append(row)
    _close_before(existing, horizon)
    return written


@dataclass(frozen=True)
class _Found:
    """A window and the facts that follow its peak: the seasonality (series), or the
    metrics' shares, observed and expected values at the peak (node)."""

    window: AnomalyWindow
    period: float | None = None
    contributions: dict[str, float] = dataclasses.field(default_factory=dict)
    observed: dict[str, float] = dataclasses.field(default_factory=dict)
    expected: dict[str, float] = dataclasses.field(default_factory=dict)
    # Node windows take the label of their peak (the direction of its top metric) rather
    # than the label priority, where a spike would always beat a dip.
    label_of_peak: bool = False


def _merge(
    existing: QuerySet[AnomalyResult],
    found: _Found,
    *,
    gap: float,
    horizon: float,
    new: Callable[[], AnomalyResult],
) -> tuple[AnomalyResult, _Found, tuple[Any, ...] | None]:
    """The row `found` joins (unsaved), the joined facts, and the row's facts before (None
    for a new row): the earliest row of `existing` overlapping it or within `gap` of it,
    widened by it, or a new row. Rows it bridges are folded into the first and deleted (the
    first feedback given is kept). The row is open when its end is at or after `horizon`,
    closed before."""
    window = found.window
    near = list(
        existing.filter(window_start__lte=_utc(window.end + gap), window_end__gte=_utc(window.start - gap)).order_by(
            "window_start", "pk"
        )
    )
    if not near:
        row, joined, before = new(), found, None
    else:
        row, others = near[0], near[1:]
        before = _facts(row) if not others else None
        joined = _join(_row_found(row), found)
        for other in others:
            joined = _join(joined, _row_found(other))
            if not row.feedback and other.feedback:
                row.feedback, row.feedback_comment = other.feedback, other.feedback_comment
                row.feedback_at = other.feedback_at
        if others:
            AnomalyResult.objects.filter(pk__in=[other.pk for other in others]).delete()
    w = joined.window
    row.window_start, row.window_end, row.peak_ts = _utc(w.start), _utc(w.end), _utc(w.peak_ts)
    row.peak_score, row.label = w.peak_score, w.label
    row.observed, row.expected = _finite(w.observed), _finite(w.expected)
    row.lower, row.upper, row.deviation = _finite(w.lower), _finite(w.upper), _finite(w.deviation)
    row.status = AnomalyResult.Status.OPEN if w.end >= horizon else AnomalyResult.Status.CLOSED
    return row, joined, before


_FACT_FIELDS = (
    "window_start",
    "window_end",
    "peak_ts",
    "peak_score",
    "label",
    "observed",
    "expected",
    "lower",
    "upper",
    "deviation",
    "status",
    "explanation",
    "details",
)


def _facts(row: AnomalyResult) -> tuple[Any, ...]:
    """What a merge may change of a stored row: a row whose facts a re-score leaves equal
    is not written again (`updated_at` keeps its meaning)."""
    return tuple(getattr(row, name) for name in _FACT_FIELDS)


def _close_before(rows: QuerySet[AnomalyResult], horizon: float) -> int:
    return rows.filter(status=AnomalyResult.Status.OPEN, window_end__lt=_utc(horizon)).update(
        status=AnomalyResult.Status.CLOSED, updated_at=dj_timezone.now()
    )


def _join(a: _Found, b: _Found) -> _Found:
    """Two windows of one series (or node) as one: commutative, associative, idempotent."""
    x, y = a.window, b.window
    # The higher peak wins; on equal scores the earlier one (as windows.py does).
    top = a if (x.peak_score, -x.peak_ts) >= (y.peak_score, -y.peak_ts) else b
    overlap = x.start <= y.end and y.start <= x.end
    window = dataclasses.replace(
        top.window,
        start=min(x.start, y.start),
        end=max(x.end, y.end),
        label=top.window.label if top.label_of_peak else min((x.label, y.label), key=_label_rank),
        detectors=tuple(sorted(set(x.detectors) | set(y.detectors))),
        # Overlapping windows were (partly) the same points scored twice: counting them
        # again would make a re-run change the row, so the count is a lower bound there.
        points=max(x.points, y.points) if overlap else x.points + y.points,
    )
    return dataclasses.replace(top, window=window)


def _label_rank(label: str) -> tuple[int, str]:
    return (LABEL_PRIORITY.index(label) if label in LABEL_PRIORITY else len(LABEL_PRIORITY), label)


def _row_found(row: AnomalyResult) -> _Found:
    """A stored row back as a window with its peak facts (from `details`, the facts of
    its explanation), for joining."""
    details = row.details or {}
    contributions = details.get("contributions") or []
    window = AnomalyWindow(
        start=row.window_start.timestamp(),
        end=row.window_end.timestamp(),
        peak_ts=row.peak_ts.timestamp(),
        peak_score=row.peak_score,
        label=row.label,
        observed=_nan(row.observed),
        expected=_nan(row.expected),
        lower=_nan(row.lower),
        upper=_nan(row.upper),
        deviation=_nan(row.deviation),
        detectors=tuple(details.get("detectors") or ()),
        points=int(details.get("points") or 1),
    )
    return _Found(
        window=window,
        period=details.get("seasonality_seconds"),
        contributions={item["metric"]: item["share"] for item in contributions},
        observed={item["metric"]: item["observed"] for item in contributions if item.get("observed") is not None},
        expected={item["metric"]: item["expected"] for item in contributions if item.get("expected") is not None},
        label_of_peak=row.series_id is None,
    )


def _series_row(series: MetricSeries, detector: str, version_id: int | None) -> AnomalyResult:
    return AnomalyResult(
        tenant_id=series.tenant_id,
        series=series,
        cluster=series.cluster,
        node=series.node,
        metric=series.metric,
        detector=detector,
        model_version_id=version_id,
    )


# --- The rescan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RescanReport:
    detect_messages: int  # series_detect messages for series with unscored newest points
    rescore_messages: int  # series_rescore messages for late points
    closed: int  # open anomalies closed because their series or node went silent
    since: datetime  # revisions read: revised_at in [since, until)
    until: datetime


def anomalies_rescan(*, now: datetime | None = None) -> RescanReport:
    """Periodic safety net of streaming detection (beat, every minute); fans out by shard.

    (a) Lost messages: series whose newest point is older than VIGIL_DETECT_GRACE_SECONDS
    (the pipeline had its chance) but newer than their DetectorState's `last_ts`, or that
    have no state, get `series_detect`, DETECT_SHARD series a message, round-robin across
    tenants. Only series with a point in the last VIGIL_RESCAN_LOOKBACK_SECONDS: history
    from before detection was enabled is not swept in wholesale.

    (b) Late points: minute rollups revised (`Rollup.revised_at`) in [watermark, now -
    VIGIL_RESCAN_LAG_SECONDS) more than VIGIL_RESCAN_LATE_AFTER_SECONDS after their minute
    ended held points that arrived after the stream had moved on; they go to
    `series_rescore`, merged into ranges per series. A minute revised while it was the
    stream's head (in-order data completing it) is skipped: streaming scored it.

    The watermark lives in Django's default cache (RESCAN_WATERMARK_KEY), not in a model:
    it only saves work. Each run reads the half-open tile [watermark, now - lag) and then
    moves the watermark to its end. The lag (default: the task hard time limit) is how long
    a rollup refresh may take to commit after stamping `revised_at`, so a tile is complete
    when it is read and every revision is read once. Without a watermark (first run, cache
    flushed, a per-process cache in another worker) a run starts VIGIL_RESCAN_LOOKBACK_SECONDS
    back: revisions are then re-scored again, which the idempotent merge absorbs, never
    missed. The watermark only advances when every message was published.

    (c) Silence: open anomalies whose series (or node) sent nothing for longer than the gap
    tolerance plus VIGIL_DETECT_GRACE_SECONDS after the window's end are closed
    (`anomalies_close_silent`): streaming only closes a window when later points arrive.

    Side effects: publishes messages (expiring after FAN_OUT_EXPIRES), moves the watermark
    and closes silent anomalies. Safe to overlap with itself (at worst duplicate messages).
    """
    now = now or dj_timezone.now()
    closed = anomalies_close_silent(now=now)
    lookback = timedelta(seconds=settings.VIGIL_RESCAN_LOOKBACK_SECONDS)

    stale = series_detect_stale_shards(now=now)
    detect_sent = sum(series_detect_publish(series_ids=shard, expires=FAN_OUT_EXPIRES) for shard in stale)

    stored = cache.get(RESCAN_WATERMARK_KEY)
    since = max(stored, now - lookback) if isinstance(stored, datetime) else now - lookback
    until = now - timedelta(seconds=settings.VIGIL_RESCAN_LAG_SECONDS)
    rescore_sent, complete = 0, True
    if until > since:
        ranges = late_ranges(since=since, until=until)
        for shard in _round_robin(ranges, RESCORE_SHARD):
            if series_rescore_publish(ranges=shard, expires=FAN_OUT_EXPIRES):
                rescore_sent += 1
            else:
                complete = False
        if complete:
            cache.set(RESCAN_WATERMARK_KEY, until, timeout=None)
    return RescanReport(
        detect_messages=detect_sent, rescore_messages=rescore_sent, closed=closed, since=since, until=until
    )


def anomalies_close_silent(*, now: datetime) -> int:
    """Close open anomalies whose series (or node) went quiet: nothing scored within the gap
    tolerance (VIGIL_ANOMALY_GAP_SAMPLES of its sampling interval) plus the grace period
    after the window's end. Returns how many were closed.

    Each close is a conditional UPDATE (still open, end still before the cut-off), so a
    window that streaming extends meanwhile stays open. Idempotent.
    """
    grace = timedelta(seconds=settings.VIGIL_DETECT_GRACE_SECONDS)
    shortest = timedelta(seconds=settings.VIGIL_ANOMALY_GAP_SAMPLES)  # a one-second interval
    candidates = AnomalyResult.objects.filter(
        status=AnomalyResult.Status.OPEN, window_end__lt=now - shortest - grace
    ).values_list("pk", "series_id", "window_end")
    intervals = dict(
        DetectorState.objects.filter(
            series_id__in={series_id for _, series_id, _ in candidates if series_id is not None}
        ).values_list("series_id", "state__interval")
    )
    closed = 0
    for pk, series_id, end in candidates:
        # Node rows are 1-minute rollups; a series without a state yet gets a minute too.
        interval = float(intervals.get(series_id) or DEFAULT_INTERVAL) if series_id is not None else MINUTE
        cut_off = now - timedelta(seconds=settings.VIGIL_ANOMALY_GAP_SAMPLES * interval) - grace
        if end < cut_off:
            closed += AnomalyResult.objects.filter(
                pk=pk, status=AnomalyResult.Status.OPEN, window_end__lt=cut_off
            ).update(status=AnomalyResult.Status.CLOSED, updated_at=dj_timezone.now())
    return closed


def series_detect_stale_shards(*, now: datetime | None = None) -> list[list[int]]:
    """Series due for detection that streaming has not scored (see `anomalies_rescan` (a)),
    in shards of one tenant each, round-robin across tenants."""
    now = now or dj_timezone.now()
    grace = timedelta(seconds=settings.VIGIL_DETECT_GRACE_SECONDS)
    lookback = timedelta(seconds=settings.VIGIL_RESCAN_LOOKBACK_SECONDS)
    stale = (
        MetricSeries.objects.filter(last_point_at__lt=now - grace, last_point_at__gte=now - lookback)
        .filter(Q(detector_state__isnull=True) | Q(detector_state__last_ts__lt=F("last_point_at")))
        .order_by("tenant_id", "pk")
        .values_list("tenant_id", "pk")
    )
    per_tenant = [
        list(chunked([sid for _, sid in members], DETECT_SHARD))
        for _, members in itertools.groupby(stale, key=lambda row: row[0])
    ]
    return [shard for rank in itertools.zip_longest(*per_tenant) for shard in rank if shard is not None]


@dataclass(frozen=True)
class LateRange:
    """Points of one series in [start, end) to re-score: minutes revised by late data."""

    tenant_id: int
    series_id: int
    start: datetime
    end: datetime


def late_ranges(*, since: datetime, until: datetime) -> list[LateRange]:
    """Minute rollups revised in [since, until) long enough after they ended to hold late
    points (VIGIL_RESCAN_LATE_AFTER_SECONDS), merged per series into ranges (minutes less
    than RESCORE_JOIN apart join), tenant by tenant."""
    late_after = timedelta(seconds=settings.VIGIL_RESCAN_LATE_AFTER_SECONDS)
    minute = timedelta(seconds=MINUTE)
    result: list[LateRange] = []
    for tenant in Tenant.objects.order_by("pk"):
        revised = (
            selectors.rollups_revised_since(tenant=tenant, since=since, resolution=Rollup.Resolution.MINUTE)
            .filter(revised_at__lt=until)
            .values_list("series_id", "bucket", "revised_at")
        )
        buckets: dict[int, set[datetime]] = {}
        for series_id, bucket, revised_at in revised.iterator(chunk_size=10_000):
            if revised_at is not None and revised_at - (bucket + minute) > late_after:
                buckets.setdefault(series_id, set()).add(bucket)
        for series_id in sorted(buckets):
            ordered = sorted(buckets[series_id])
            start = end = ordered[0]
            for bucket in ordered[1:]:
                if bucket - end > RESCORE_JOIN:
                    result.append(LateRange(tenant.pk, series_id, start, end + minute))
                    start = bucket
                end = bucket
            result.append(LateRange(tenant.pk, series_id, start, end + minute))
    return result


def _round_robin(ranges: list[LateRange], size: int) -> list[list[LateRange]]:
    per_tenant = [
        list(chunked(list(members), size)) for _, members in itertools.groupby(ranges, key=lambda r: r.tenant_id)
    ]
    return [shard for rank in itertools.zip_longest(*per_tenant) for shard in rank if shard is not None]


def series_rescore_publish(*, ranges: Sequence[LateRange], expires: timedelta | None = None) -> bool:
    """Enqueue `analytics.tasks.series_rescore` for `ranges` on the detect queue. Never
    raises; returns whether the message was handed to the broker."""
    from analytics.tasks import series_rescore as task

    options: dict[str, Any] = {"expires": expires.total_seconds()} if expires is not None else {}
    payload = [[r.series_id, r.start.isoformat(), r.end.isoformat()] for r in ranges]
    try:
        task.apply_async(args=(payload,), **options)
    except Exception:  # broker down: the watermark stays, the next run re-reads these revisions
        logger.warning("could not publish a re-score of %d ranges", len(payload), exc_info=True)
        return False
    return True


def series_rescore(*, ranges: Iterable[tuple[int, datetime, datetime]]) -> int:
    """Re-score the points of each (series, start, end) that are not newer than the
    series' `last_ts` (newer ones are streaming's), and merge their anomalies. Returns the
    number of points re-scored.

    What they are scored against: a copy of the series' current state, wound back
    (`last_ts` moved) to just before VIGIL_RESCAN_CONTEXT_POINTS points that precede the
    range, updated with those context points and then the range's points; only the range's
    scores are kept and the state is thrown away. So the long memory (calibration,
    seasonal profile, learned from everything up to now) is the current one -- slightly
    non-causal for old points, an accepted approximation, since no past state is stored --
    while the short memory (rolling median, level, CUSUM) is primed by the points that
    actually surrounded the late ones, now including them. Scoring them against the raw
    current state instead would compare an old point with the level of the present.

    Side effects, per series in one transaction under the DetectorState lock: AnomalyScore
    maxima raised where the new scores are higher; windows joined into AnomalyResult (open
    if they reach within the gap of `last_ts`). Never lowers a score or removes an anomaly.
    Idempotent: the same points re-scored against the same state give the same rows.
    """
    rescored = 0
    for series_id, start, end in sorted(ranges):
        rescored += _series_rescore_one(series_id, start, end)
    return rescored


def _series_rescore_one(series_id: int, start: datetime, end: datetime) -> int:
    with transaction.atomic():
        series = MetricSeries.objects.select_related("tenant").filter(pk=series_id).first()
        row = DetectorState.objects.select_for_update().filter(series_id=series_id).first()
        if series is None or row is None or row.last_ts is None or start > row.last_ts:
            return 0  # never scored: streaming will score these points in order
        detector = detector_create(row.detector, sensitivity=row.sensitivity)
        limit = settings.VIGIL_DETECT_MAX_POINTS
        window = list(
            Point.objects.filter(series_id=series_id, ts__gte=start, ts__lt=end, ts__lte=row.last_ts)
            .order_by("ts")
            .values_list("ts", "value")[:limit]
        )
        held = calendar_mask(
            np.array([moment.timestamp() for moment, _ in window]),
            _series_events(series, window[0][0], window[-1][0]) if window else [],
        )
        window = [point for point, skip in zip(window, held.tolist(), strict=True) if not skip]
        if not window:
            return 0
        context = list(
            Point.objects.filter(series_id=series_id, ts__lt=start)
            .order_by("-ts")
            .values_list("ts", "value")[: settings.VIGIL_RESCAN_CONTEXT_POINTS]
        )[::-1]
        points = context + window
        ts = np.array([moment.timestamp() for moment, _ in points])
        values = np.array([value for _, value in points], dtype=np.float64)
        interval = float(row.state.get("interval") or DEFAULT_INTERVAL)
        wound_back = {**copy.deepcopy(row.state), "last_ts": float(ts[0]) - interval}
        scores = detector.update(wound_back, ts, values)[0].select(slice(len(context), None))
        scores = rules_apply(row.rules, scores, detector.threshold)[0]
        gap = _gap_seconds(row.state, scores)
        _scores_write(series_id, scores)
        _series_windows_merge(
            series=series,
            detector=row.detector,
            version_id=row.model_version_id,
            scores=scores,
            gap=gap,
            horizon=row.last_ts.timestamp() - gap,
        )
        return len(scores)


# --- Nodes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeShard:
    tenant_id: int
    nodes: tuple[tuple[str, str], ...]  # (cluster, node)


def nodes_detect(*, now: datetime | None = None) -> int:
    """Periodic (beat, every 5 minutes): publish `node_detect` for every node of every
    tenant with at least two series that received a point within VIGIL_RESCAN_LOOKBACK_SECONDS,
    NODE_SHARD nodes of one tenant a message, round-robin across tenants. Returns messages
    sent. Publishing only; duplicates are harmless (see `node_detect`)."""
    now = now or dj_timezone.now()
    recent = now - timedelta(seconds=settings.VIGIL_RESCAN_LOOKBACK_SECONDS)
    nodes = (
        MetricSeries.objects.filter(last_point_at__gte=recent)
        .values("tenant_id", "cluster", "node")
        .annotate(series=Count("pk"))
        .filter(series__gte=2)
        .order_by("tenant_id", "cluster", "node")
        .values_list("tenant_id", "cluster", "node")
    )
    per_tenant = [
        [NodeShard(tenant_id, tuple(chunk)) for chunk in chunked([(c, n) for _, c, n in members], NODE_SHARD)]
        for tenant_id, members in itertools.groupby(nodes, key=lambda row: row[0])
    ]
    sent = 0
    for rank in itertools.zip_longest(*per_tenant):
        for shard in rank:
            if shard is not None and node_detect_publish(shard=shard, expires=FAN_OUT_EXPIRES):
                sent += 1
    return sent


def node_detect_publish(*, shard: NodeShard, expires: timedelta | None = None) -> bool:
    """Enqueue `analytics.tasks.node_detect` for one shard. Never raises."""
    from analytics.tasks import node_detect as task

    options: dict[str, Any] = {"expires": expires.total_seconds()} if expires is not None else {}
    try:
        task.apply_async(args=(shard.tenant_id, [list(node) for node in shard.nodes]), **options)
    except Exception:  # broker down: the next run publishes again
        logger.warning("could not publish node detection of %d nodes", len(shard.nodes), exc_info=True)
        return False
    return True


def node_detect(*, tenant: Tenant, nodes: Iterable[tuple[str, str]], now: datetime | None = None) -> int:
    """Score each node of `tenant` (cluster, node) with the multivariate detector
    (`settings.VIGIL_NODE_DETECTOR`, the tenant's sensitivity). Returns rows scored.

    Per node, in one transaction under a row lock on its NodeDetectorState (created on first
    use): the 1-minute rollup means of the node's series -- one column per metric, named by
    the metric (with its labels when two series share a metric name) -- are aligned by
    minute from the state's `last_ts` (first run: VIGIL_NODE_DETECT_HISTORY_SECONDS back) to
    VIGIL_NODE_DETECT_DELAY_SECONDS ago (so minutes are complete and rolled up), at most
    VIGIL_NODE_DETECT_MAX_ROWS minutes; scored; the state and `last_ts` saved; anomalous
    minutes merged into node-level AnomalyResult rows (series NULL; label spike or dip by
    the direction of the top contributing metric; explanation naming the top metrics) like
    series windows; open rows the node moved past closed. A changed detector or sensitivity
    resets the state as `series_detect` does. Nodes with fewer than two series are skipped.

    Idempotent: a second run finds no minute after `last_ts`. Only this tenant's series are
    read, so nodes of the same name in other tenants never mix.
    """
    now = now or dj_timezone.now()
    scored = 0
    for cluster, node in sorted({(c, n) for c, n in nodes}):
        scored += _node_detect_one(tenant, cluster, node, now)
    return scored


def _node_detect_one(tenant: Tenant, cluster: str, node: str, now: datetime) -> int:
    name, sensitivity = settings.VIGIL_NODE_DETECTOR, tenant.detection_sensitivity
    detector = node_detector_create(name, sensitivity=sensitivity)
    with transaction.atomic():
        series = list(MetricSeries.objects.filter(tenant=tenant, cluster=cluster, node=node).order_by("pk"))
        if len(series) < 2:
            return 0
        columns = node_columns(series)
        row = _node_state_lock(tenant, cluster, node, detector, name)
        if row.sensitivity != sensitivity:
            _node_state_reset(row, series, columns, detector, sensitivity)
        elif row.model_version_id is None:
            _node_version_attach(row, series, detector)

        cutoff = now - timedelta(seconds=settings.VIGIL_NODE_DETECT_DELAY_SECONDS)
        start = row.last_ts or now - timedelta(seconds=settings.VIGIL_NODE_DETECT_HISTORY_SECONDS)
        ts, matrix = node_matrix(series, columns, after=start, until=cutoff, limit=settings.VIGIL_NODE_DETECT_MAX_ROWS)
        if not len(ts):
            row.save(update_fields=[*NODE_SERVING_FIELDS, "updated_at"])
            return 0
        # A calendar event that suppresses detection: its minutes are neither scored nor learned.
        held = calendar_mask(ts, _series_events(series[0], _utc(float(ts[0])), _utc(float(ts[-1]))))
        last = float(ts[-1])
        ts, matrix = ts[~held], matrix[~held]
        names = [columns[s.pk] for s in series]
        units = {columns[s.pk]: s.unit for s in series}
        # The node detector scores every row of a call against the model of the call's start,
        # so a first run's history in one call would be all warm-up: the rows older than
        # NODE_SCORE_TAIL before the newest go first (learned), the tail is then scored
        # against them. A steady run (5 rows) is one call.
        tail = int(np.searchsorted(ts, ts[-1] - NODE_SCORE_TAIL.total_seconds()))
        state, scored = row.state, 0
        for part in (slice(0, tail), slice(tail, len(ts))):
            if part.start == part.stop:
                continue
            scores, state = detector.update(state, ts[part], matrix[part], names)
            scored += len(scores)
            gap = float(settings.VIGIL_ANOMALY_GAP_SAMPLES) * float(state.get("interval") or MINUTE)
            if len(scores):
                _node_windows_merge(
                    tenant, cluster, node, name, row.model_version_id, scores, units, gap=gap, horizon=last - gap
                )
        row.state = state
        row.last_ts = _utc(last)
        row.save(update_fields=[*NODE_SERVING_FIELDS, "last_ts", "updated_at"])
        return scored


def node_columns(series: list[MetricSeries]) -> dict[int, str]:
    """Column name per series: its metric, or metric{labels} when the metric name repeats."""
    counts: dict[str, int] = {}
    for s in series:
        counts[s.metric] = counts.get(s.metric, 0) + 1
    return {
        s.pk: s.metric
        if counts[s.metric] == 1
        else f"{s.metric}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}"
        for s in series
    }


def _node_state_lock(tenant: Tenant, cluster: str, node: str, detector: NodeDetector, name: str) -> NodeDetectorState:
    key = {"tenant": tenant, "cluster": cluster, "node": node, "detector": name}
    row = NodeDetectorState.objects.select_for_update().filter(**key).first()
    if row is None:
        NodeDetectorState.objects.bulk_create(
            [NodeDetectorState(**key, sensitivity=tenant.detection_sensitivity, state=detector.initial_state())],
            ignore_conflicts=True,
        )
        row = NodeDetectorState.objects.select_for_update().get(**key)
        # A new node detector: nothing will extend the previous one's open windows.
        AnomalyResult.objects.filter(
            tenant=tenant, cluster=cluster, node=node, series__isnull=True, status=AnomalyResult.Status.OPEN
        ).exclude(detector=name).update(status=AnomalyResult.Status.CLOSED, updated_at=dj_timezone.now())
    return row


def _node_state_reset(
    row: NodeDetectorState,
    series: list[MetricSeries],
    columns: dict[int, str],
    detector: NodeDetector,
    sensitivity: str,
) -> None:
    """As `_state_reset`: learn the minutes up to `last_ts` silently, then resume."""
    state = detector.initial_state()
    if row.last_ts is not None:
        after = row.last_ts - timedelta(seconds=settings.VIGIL_NODE_DETECT_HISTORY_SECONDS)
        ts, matrix = node_matrix(
            series, columns, after=after, until=row.last_ts, limit=settings.VIGIL_NODE_DETECT_MAX_ROWS
        )
        if len(ts):
            state = detector.update(state, ts, matrix, [columns[s.pk] for s in series])[1]
    row.sensitivity, row.state = sensitivity, state
    row.model_version = _serve_online(
        row.tenant, "node", row.detector, state, sensitivity, cluster=row.cluster, node=row.node
    )


def node_matrix(
    series: list[MetricSeries], columns: dict[int, str], *, after: datetime, until: datetime, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """(minute starts in unix seconds, matrix of means: one row per minute, one column per
    series in `series` order, NaN where a series has no bucket) for the minutes in
    (after, until], at most the first `limit` minutes that have any bucket."""
    ids = [s.pk for s in series]
    buckets = Rollup.objects.filter(
        series_id__in=ids, resolution=Rollup.Resolution.MINUTE, bucket__gt=after, bucket__lte=until
    )
    last = list(buckets.order_by("bucket").values_list("bucket", flat=True).distinct()[limit - 1 : limit])
    if last:
        buckets = buckets.filter(bucket__lte=last[0])
    rows = list(buckets.values_list("series_id", "bucket", "mean"))
    if not rows:
        return np.empty(0), np.empty((0, len(ids)))
    minutes = sorted({bucket for _, bucket, _ in rows})
    row_of = {bucket: i for i, bucket in enumerate(minutes)}
    column_of = {sid: j for j, sid in enumerate(ids)}
    matrix = np.full((len(minutes), len(ids)), np.nan)
    for sid, bucket, mean in rows:
        matrix[row_of[bucket], column_of[sid]] = mean
    return np.array([bucket.timestamp() for bucket in minutes]), matrix


def _node_windows_merge(
    tenant: Tenant,
    cluster: str,
    node: str,
    detector: str,
    version_id: int | None,
    scores: NodeScores,
    units: dict[str, str],
    *,
    gap: float,
    horizon: float,
) -> None:
    """Node-level anomalies: `scores` as a Scores (labelled by the top contributing
    metric's direction) through `anomaly_windows`, each window joined like a series'."""
    n = len(scores)
    labels = np.full(n, "", dtype=object)
    top_observed, top_expected = np.full(n, np.nan), np.full(n, np.nan)
    for i in np.flatnonzero(scores.anomalous).tolist():
        top = scores.top_metrics(i, 1)
        if not top:
            labels[i] = AnomalyResult.Label.SPIKE
            continue
        j = scores.names.index(top[0][0])
        top_observed[i], top_expected[i] = scores.observed[i, j], scores.expected[j]
        below = np.isfinite(top_observed[i]) and np.isfinite(top_expected[i]) and top_observed[i] < top_expected[i]
        labels[i] = AnomalyResult.Label.DIP if below else AnomalyResult.Label.SPIKE
    as_scores = Scores(
        timestamps=scores.timestamps,
        values=top_observed,
        score=scores.score,
        expected=top_expected,
        lower=np.full(n, np.nan),
        upper=np.full(n, np.nan),
        deviation=np.full(n, np.nan),
        warming=scores.warming,
        anomalous=scores.anomalous,
        label=labels,
        detector=np.where(scores.anomalous, detector, "").astype(object),
    )
    existing = AnomalyResult.objects.filter(
        tenant=tenant, cluster=cluster, node=node, detector=detector, series__isnull=True
    )
    index_of = {t: i for i, t in enumerate(scores.timestamps.tolist())}
    for window in anomaly_windows(as_scores, gap_seconds=gap):
        i = index_of[window.peak_ts]
        found = _Found(
            window=dataclasses.replace(window, label=str(labels[i])),
            contributions={metric: float(share) for metric, share in scores.contributions[i].items()},
            observed={m: v for j, m in enumerate(scores.names) if (v := _finite(scores.observed[i, j])) is not None},
            expected={m: v for j, m in enumerate(scores.names) if (v := _finite(scores.expected[j])) is not None},
            label_of_peak=True,
        )
        row, joined, before = _merge(
            existing,
            found,
            gap=gap,
            horizon=horizon,
            new=lambda: AnomalyResult(
                tenant=tenant,
                series=None,
                cluster=cluster,
                node=node,
                metric="",
                detector=detector,
                model_version_id=version_id,
            ),
        )
        w = joined.window
        row.explanation, row.details = explain_node(
            node=node,
            start=w.start,
            end=w.end,
            peak_ts=w.peak_ts,
            peak_score=w.peak_score,
            label=w.label,
            detector=detector,
            contributions=joined.contributions,
            observed=joined.observed,
            expected=joined.expected,
            units=units,
            points=w.points,
        )
        if before is None or _facts(row) != before:
            row.save()
    _close_before(existing, horizon)


# --- Serving the registry's versions (mlops) -------------------------------------------------
#
# Each scope detection scores (a series, a node) has one row it serves from: DetectorState or
# NodeDetectorState. The row names the registry's version it grew from (`model_version`, the
# lineage every anomaly records) and, for a series, the suppression rules that version learned
# from feedback. A scope starts with an `online` version (the detector learning from scratch);
# promoting or rolling back installs another version's model into the row.

SERVING_FIELDS = ("state", "detector", "sensitivity", "model_version", "rules")
NODE_SERVING_FIELDS = ("state", "sensitivity", "model_version")


def serving_lock(version: ModelVersion) -> DetectorState | NodeDetectorState | None:
    """The row that serves `version`'s scope, locked for this transaction; None when detection has
    not started on the scope (it then starts from the scope's active version) or the scope kind
    is not served by detection (`metric`)."""
    if version.scope_kind == ModelVersion.ScopeKind.SERIES:
        return DetectorState.objects.select_for_update().filter(series_id=version.series_id).first()
    if version.scope_kind == ModelVersion.ScopeKind.NODE:
        return (
            NodeDetectorState.objects.select_for_update()
            .filter(tenant_id=version.tenant_id, cluster=version.cluster, node=version.node, detector=version.detector)
            .first()
        )
    return None


def serving_install(row: DetectorState | NodeDetectorState, version: ModelVersion, model: dict[str, Any]) -> None:
    """Serve `version` (its verified `model`) from `row`, locked by the caller.

    The model's state learns, silently, the points between the end of its training and where
    detection is (at most VIGIL_DETECT_WARMUP_POINTS, the newest; calendar events left out, as
    training leaves them out), so streaming resumes where it was and nothing is reported twice.
    The scope's open anomalies of other versions close: nothing will extend them.
    """
    sensitivity = str(version.hyperparameters.get("sensitivity") or row.sensitivity)
    anomalies = AnomalyResult.objects.filter(status=AnomalyResult.Status.OPEN)
    if isinstance(row, DetectorState):
        detector = detector_create(version.detector, sensitivity=sensitivity)
        series = MetricSeries.objects.get(pk=row.series_id)
        row.state = _series_caught_up(detector, model["state"], series, until=row.last_ts)
        row.detector, row.rules = version.detector, model["rules"]
        anomalies = anomalies.filter(series_id=row.series_id)
    else:
        node_detector = node_detector_create(version.detector, sensitivity=sensitivity)
        members = list(
            MetricSeries.objects.filter(tenant_id=row.tenant_id, cluster=row.cluster, node=row.node).order_by("pk")
        )
        row.state = _node_caught_up(node_detector, model["state"], members, until=row.last_ts)
        anomalies = anomalies.filter(tenant_id=row.tenant_id, cluster=row.cluster, node=row.node, series__isnull=True)
    learned = row.state.get("last_ts")
    if learned is not None and (row.last_ts is None or learned > row.last_ts.timestamp()):
        row.last_ts = _utc(float(learned))  # trained on points streaming has not reached: not scored twice
    row.sensitivity, row.model_version = sensitivity, version
    row.save()
    anomalies.exclude(model_version=version).update(status=AnomalyResult.Status.CLOSED, updated_at=dj_timezone.now())


def _series_caught_up(detector: Detector, state: State, series: MetricSeries, *, until: datetime | None) -> State:
    if until is None:
        return state
    points = Point.objects.filter(series_id=series.pk, ts__lte=until)
    if state.get("last_ts") is not None:
        points = points.filter(ts__gt=_utc(float(state["last_ts"])))
    history = list(points.order_by("-ts").values_list("ts", "value")[: settings.VIGIL_DETECT_WARMUP_POINTS])[::-1]
    if not history:
        return state
    ts = np.array([moment.timestamp() for moment, _ in history])
    values = np.array([value for _, value in history], dtype=np.float64)
    known = _series_events(series, history[0][0], until, suppressing=False)
    keep = ~calendar_mask(ts, known)
    return detector.update(state, ts[keep], values[keep])[1]


def _node_caught_up(
    detector: NodeDetector, state: State, series: list[MetricSeries], *, until: datetime | None
) -> State:
    if until is None or len(series) < 2:
        return state
    if state.get("last_ts") is not None:
        after = _utc(float(state["last_ts"]))
    else:
        after = until - timedelta(seconds=settings.VIGIL_NODE_DETECT_HISTORY_SECONDS)
    columns = node_columns(series)
    ts, matrix = node_matrix(series, columns, after=after, until=until, limit=settings.VIGIL_NODE_DETECT_MAX_ROWS)
    if not len(ts):
        return state
    keep = ~calendar_mask(ts, _series_events(series[0], _utc(float(ts[0])), until, suppressing=False))
    return detector.update(state, ts[keep], matrix[keep], [columns[s.pk] for s in series])[1]


def _series_version_attach(row: DetectorState, series: MetricSeries, detector: Detector) -> None:
    """A series' first detection (or its first since the registry): serve the scope's active
    version if it matches the configuration (trained before detection reached the series), else
    register the online model the row holds."""
    active = _active_version(series.tenant_id, f"series:{series.pk}", row.detector, row.sensitivity)
    model = _model_or_none(active) if active is not None else None
    if active is not None and model is not None:
        row.state = _series_caught_up(detector, model["state"], series, until=row.last_ts)
        row.rules, row.model_version = model["rules"], active
        return
    row.model_version = _serve_online(series.tenant, "series", row.detector, row.state, row.sensitivity, series=series)


def _node_version_attach(row: NodeDetectorState, series: list[MetricSeries], detector: NodeDetector) -> None:
    """As `_series_version_attach`, for a node."""
    active = _active_version(row.tenant_id, f"node:{row.cluster}/{row.node}", row.detector, row.sensitivity)
    model = _model_or_none(active) if active is not None else None
    if active is not None and model is not None:
        row.state = _node_caught_up(detector, model["state"], series, until=row.last_ts)
        row.model_version = active
        return
    row.model_version = _serve_online(
        row.tenant, "node", row.detector, row.state, row.sensitivity, cluster=row.cluster, node=row.node
    )


def _active_version(tenant_id: int, key: str, detector: str, sensitivity: str) -> ModelVersion | None:
    return (
        ModelVersion.objects.filter(
            tenant_id=tenant_id,
            scope_key=key,
            status=ModelVersion.Status.ACTIVE,
            detector=detector,
            hyperparameters__sensitivity=sensitivity,
        )
        .select_related("artifact")
        .first()
    )


def _model_or_none(version: ModelVersion) -> dict[str, Any] | None:
    from mlops.artifacts import ArtifactCorrupt
    from mlops.services import model_version_load  # mlops builds on analytics: imported late

    try:
        return model_version_load(version=version)
    except ArtifactCorrupt:
        logger.exception("active %s does not verify; detection learns online instead", version)
        return None


def _serve_online(
    tenant: Tenant, kind: str, detector: str, state: State, sensitivity: str, **scope: Any
) -> ModelVersion:
    from mlops.services import model_version_serve_online  # mlops builds on analytics: imported late

    return model_version_serve_online(
        tenant=tenant, kind=kind, detector=detector, state=state, sensitivity=sensitivity, **scope
    )


# --- Helpers ---------------------------------------------------------------------------------


def _utc(seconds: float) -> datetime:
    """Unix seconds as an aware datetime, rounded to the microsecond (the storage precision),
    so a timestamp read back from a point gives the same datetime it came from."""
    return EPOCH + timedelta(microseconds=round(seconds * 1_000_000))


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
