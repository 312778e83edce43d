"""Writes for the model registry: register a version, promote it, roll back, load it.

Every state change writes a ModelVersionEvent (the audit trail) in its own transaction, and a
scope's versions are changed only under a lock on them, so concurrent promotions and rollbacks
of one scope take turns and the database constraint (one active version) is never tested by a
race. Activating a version also installs it where detection reads it (the scope's
DetectorState or NodeDetectorState, analytics.anomalies), in the same transaction: that row is
locked first, then the versions, the order detection takes them in too.

A model (the artifact) is `{"state": <the detector's state>, "rules": [<suppression rules>]}`
(mlops.feedback). Training (mlops.training), the promotion gate and drift (mlops.drift) build
on these.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from analytics.anomalies import serving_install, serving_lock
from analytics.models import MetricSeries
from config.errors import Rejected
from mlops.artifacts import ArtifactCorrupt, artifact_read, artifact_save, state_dumps
from mlops.models import ModelVersion, ModelVersionEvent
from tenants.models import Tenant

Kind = ModelVersion.ScopeKind


def scope_key(
    *, kind: str, series: MetricSeries | None = None, cluster: str = "", node: str = "", metric: str = ""
) -> str:
    """The canonical name of a scope: `series:<id>`, `metric:<cluster>/<metric>` or `node:<cluster>/<node>`."""
    if kind == Kind.SERIES:
        if series is None:
            raise ValueError("a series scope needs its series")
        return f"series:{series.pk}"
    if kind == Kind.METRIC:
        return f"metric:{cluster}/{metric}"
    if kind == Kind.NODE:
        return f"node:{cluster}/{node}"
    raise ValueError(f"scope kind must be one of {Kind.values}")


def _scope_locked(tenant: Tenant, key: str) -> QuerySet[ModelVersion]:
    """Lock every version of the scope (in id order, so two lockers cannot deadlock) for the rest
    of the transaction, and return the scope's versions."""
    versions = ModelVersion.objects.filter(tenant=tenant, scope_key=key)
    list(versions.select_for_update(no_key=True).order_by("pk").values_list("pk", flat=True))
    return versions


def model_version_register(
    *,
    tenant: Tenant,
    kind: str,
    detector: str,
    state: Any,
    trigger: str,
    rules: list[dict[str, Any]] | None = None,
    series: MetricSeries | None = None,
    cluster: str = "",
    node: str = "",
    metric: str = "",
    hyperparameters: dict[str, Any] | None = None,
    feature_schema: list[str] | None = None,
    train_from: datetime | None = None,
    train_to: datetime | None = None,
    train_points: int = 0,
    metrics: dict[str, Any] | None = None,
    parent: ModelVersion | None = None,
    created_by: str = "",
) -> ModelVersion:
    """Record a trained model as the scope's next version (a candidate): its state and rules
    stored as a canonical-JSON artifact (shared with any version of identical bytes), an audit
    event. Version numbers increase per scope; two registrations at once get consecutive numbers."""
    if series is not None:
        cluster, node, metric = series.cluster, series.node, series.metric
    key = scope_key(kind=kind, series=series, cluster=cluster, node=node, metric=metric)
    artifact = artifact_save(data=state_dumps({"state": state, "rules": rules or []}))
    with transaction.atomic():
        number = (_scope_locked(tenant, key).aggregate(top=Max("version"))["top"] or 0) + 1
        try:
            with transaction.atomic():
                version = ModelVersion.objects.create(
                    tenant=tenant,
                    scope_kind=kind,
                    scope_key=key,
                    series=series,
                    cluster=cluster,
                    node=node,
                    metric=metric,
                    version=number,
                    parent=parent,
                    detector=detector,
                    hyperparameters=hyperparameters or {},
                    feature_schema=feature_schema or [],
                    train_from=train_from,
                    train_to=train_to,
                    train_points=train_points,
                    artifact=artifact,
                    metrics=metrics or {},
                    status=ModelVersion.Status.CANDIDATE,
                    trigger=trigger,
                    created_by=created_by,
                )
        except IntegrityError:
            # The scope's first version, registered twice at once: no row existed to lock.
            message = f"Version {number} of {key} was registered meanwhile."
            raise Rejected("version_conflict", message, status_code=409) from None
        ModelVersionEvent.objects.create(version=version, action=ModelVersionEvent.Action.REGISTERED, actor=created_by)
    return version


def model_version_serve_online(
    *, tenant: Tenant, kind: str, detector: str, state: Any, sensitivity: str, **scope: Any
) -> ModelVersion:
    """Register the model streaming starts a scope with (its first, or after its detector or
    sensitivity changed) and make it the active version at once: trigger `online`, no training
    window. Called by detection, which holds the scope's serving row and installs it itself."""
    version = model_version_register(
        tenant=tenant,
        kind=kind,
        detector=detector,
        state=state,
        trigger=ModelVersion.Trigger.ONLINE,
        hyperparameters={"sensitivity": sensitivity},
        **scope,
    )
    with transaction.atomic():
        _activate(_scope_locked(tenant, version.scope_key), version, actor="", reason="learned online")
    return version


def model_version_load(*, version: ModelVersion) -> dict[str, Any]:
    """The version's model, `{"state", "rules"}`, read from its artifact and verified
    (ArtifactCorrupt otherwise)."""
    if version.artifact is None:
        raise ArtifactCorrupt(f"{version} has no artifact")
    try:
        model = json.loads(artifact_read(version.artifact))
    except ValueError as exc:  # the right bytes cannot be wrong JSON; a store serving other bytes can
        raise ArtifactCorrupt(f"{version}'s artifact is not a model: {exc}") from None
    if not isinstance(model, dict) or "state" not in model:
        raise ArtifactCorrupt(f"{version}'s artifact is not a model")
    return {"state": model["state"], "rules": model.get("rules") or []}


def model_version_promote(
    *, version: ModelVersion, actor: str = "", reason: str = "", model: dict[str, Any] | None = None
) -> ModelVersion:
    """Make `version` its scope's active model, serving detection from now on; the active one
    before it retires. Both are audit events. Refuses (409) a version still training or failed,
    and one whose artifact does not verify: the active version keeps serving. Does nothing if it
    is already active. `model` is the version's model when the caller holds it (training, which
    has just stored it); otherwise it is read back from the artifact and verified."""
    with transaction.atomic():
        serving = serving_lock(version)
        versions = _scope_locked(version.tenant, version.scope_key)
        target = versions.select_related("artifact", "tenant").get(pk=version.pk)
        if target.status == ModelVersion.Status.ACTIVE:
            return target
        if target.status in (ModelVersion.Status.TRAINING, ModelVersion.Status.FAILED):
            raise Rejected("not_promotable", f"{target} cannot be promoted.", status_code=409)
        model = model if model is not None else _verified(target)
        _activate(versions, target, actor=actor, reason=reason)
        if serving is not None:
            serving_install(serving, target, model)
    return target


def model_version_rollback(*, tenant: Tenant, key: str, actor: str = "", reason: str = "") -> ModelVersion:
    """Put back the newest earlier version that has served (v3 -> v2, then v2 -> v1: rollbacks
    walk back through the history, they do not flip between two). The current one retires;
    both are audit events, in one transaction. Refuses (409) when there is nothing to go back to
    or the earlier version's artifact does not verify."""
    with transaction.atomic():
        current = ModelVersion.objects.filter(tenant=tenant, scope_key=key, status=ModelVersion.Status.ACTIVE).first()
        if current is None:
            raise Rejected("nothing_active", f"No active version of {key} to roll back.", status_code=409)
        serving = serving_lock(current)
        versions = _scope_locked(tenant, key)
        current = versions.get(pk=current.pk)
        if current.status != ModelVersion.Status.ACTIVE:
            raise Rejected("version_conflict", f"{current} was replaced meanwhile.", status_code=409)
        previous = (
            versions.filter(status=ModelVersion.Status.RETIRED, activated_at__isnull=False)
            .filter(version__lt=current.version)
            .select_related("artifact", "tenant")
            .order_by("-version")
            .first()
        )
        if previous is None:
            raise Rejected("nothing_to_roll_back", f"{current} has no earlier active version.", status_code=409)
        model = _verified(previous)
        current.status = ModelVersion.Status.RETIRED
        current.save(update_fields=["status"])
        ModelVersionEvent.objects.create(
            version=current, action=ModelVersionEvent.Action.ROLLED_BACK, actor=actor, reason=reason
        )
        _activate(versions, previous, actor=actor, reason=f"rollback from v{current.version}")
        if serving is not None:
            serving_install(serving, previous, model)
    return previous


def _verified(version: ModelVersion) -> dict[str, Any]:
    try:
        return model_version_load(version=version)
    except ArtifactCorrupt as exc:
        raise Rejected("artifact_corrupt", f"{version} cannot be served: {exc}.", status_code=409) from None


def _activate(versions: QuerySet[ModelVersion], target: ModelVersion, *, actor: str, reason: str) -> None:
    """Under the scope's lock: `target` active, the active one before it retired, audit events."""
    for current in versions.filter(status=ModelVersion.Status.ACTIVE).exclude(pk=target.pk):
        current.status = ModelVersion.Status.RETIRED
        current.save(update_fields=["status"])
        ModelVersionEvent.objects.create(
            version=current,
            action=ModelVersionEvent.Action.RETIRED,
            actor=actor,
            reason=f"replaced by v{target.version}",
        )
    target.status, target.activated_at = ModelVersion.Status.ACTIVE, timezone.now()
    target.save(update_fields=["status", "activated_at"])
    ModelVersionEvent.objects.create(
        version=target, action=ModelVersionEvent.Action.PROMOTED, actor=actor, reason=reason
    )
