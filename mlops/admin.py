"""The registry in the admin: versions per scope with their status, metrics, gate comparison and
the anomalies they scored, the audit trail, and promote / roll back / retrain through the same
services as everything else. Models are registered by training, never typed in here. Drift
reports are read here; calendar events are edited here as through the API."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from config.errors import Rejected
from mlops import training
from mlops.calendars import CALENDAR_EVENT_FIELDS, calendar_event_problems, calendar_event_save
from mlops.models import CalendarEvent, DriftReport, ModelVersion, ModelVersionEvent
from mlops.services import model_version_promote, model_version_rollback


def _pretty(value: Any) -> str:
    # A read-only JSON field renders as one compact line; these are nested facts.
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


def version_link(version: ModelVersion | None) -> str:
    """A link to a version's admin page (`-` for none)."""
    if version is None:
        return "-"
    url = reverse("admin:mlops_modelversion_change", args=[version.pk])
    return format_html('<a href="{}">{}</a>', url, str(version))


def training_window(version: ModelVersion | None) -> str:
    if version is None or version.train_from is None or version.train_to is None:
        return "-"
    return f"{version.train_from:%Y-%m-%d %H:%M} to {version.train_to:%Y-%m-%d %H:%M} UTC"


class ModelVersionEventInline(admin.TabularInline):
    model = ModelVersionEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "action", "actor", "reason"]
    readonly_fields = ["created_at", "action", "actor", "reason"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["scope_key", "version", "status", "detector", "trigger", "train_points", "created_at", "tenant"]
    list_filter = ["status", "scope_kind", "detector", "trigger", "tenant"]
    search_fields = ["scope_key", "cluster", "node", "metric"]
    list_select_related = ["tenant"]
    inlines = [ModelVersionEventInline]
    actions = ["promote", "roll_back", "retrain"]

    @admin.display(description="Artifact sha256")
    def artifact_sha256(self, version: ModelVersion) -> str:
        return version.artifact_id or ""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = [f.name for f in ModelVersion._meta.fields if f.name not in ("artifact", "metrics")]
        return [*fields, "artifact_sha256", "anomalies_scored", "gate_comparison", "training_metrics"]

    @admin.display(description="Anomalies it scored")
    def anomalies_scored(self, version: ModelVersion) -> str:
        count = version.anomalies.count()
        if not count:
            return "None yet."
        url = reverse("admin:analytics_anomalyresult_changelist") + f"?model_version__id__exact={version.pk}"
        return format_html('<a href="{}">{} anomal{}</a>', url, count, "y" if count == 1 else "ies")

    @admin.display(description="Promotion gate")
    def gate_comparison(self, version: ModelVersion) -> str:
        gate = version.metrics.get("gate")
        if not isinstance(gate, dict):
            return "Not gated (yet)."
        verdict = format_html(
            "<p><strong>{}</strong>: {}</p>", "Passed" if gate.get("passed") else "Kept", gate.get("summary", "")
        )
        candidate, current, checks = gate.get("candidate"), gate.get("current"), gate.get("checks") or {}
        if not isinstance(candidate, dict) or not isinstance(current, dict):
            return verdict
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((name.replace("_", " "), candidate.get(name), current.get(name)) for name in candidate),
        )
        checked = format_html_join(
            ", ", "{}: {}", ((name.replace("_", " "), "ok" if ok else "worse") for name, ok in checks.items())
        )
        return format_html(
            "{}<table><thead><tr><th>holdout</th><th>this version</th><th>v{} (active then)</th></tr></thead>"
            "<tbody>{}</tbody></table><p>{}</p>",
            verdict,
            gate.get("active_version", "?"),
            rows,
            checked,
        )

    @admin.display(description="Metrics")
    def training_metrics(self, version: ModelVersion) -> str:
        shown = {k: v for k, v in version.metrics.items() if k not in ("gate", "reference")}
        reference = version.metrics.get("reference")
        if isinstance(reference, dict) and reference:
            shown["reference"] = f"training distributions of {', '.join(sorted(reference))} (for drift)"
        return _pretty(shown)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Promote (make it its scope's active version)")
    def promote(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for version in queryset:
            try:
                model_version_promote(version=version, actor=request.user.get_username())
                self.message_user(request, f"{version.scope_key} v{version.version} is active.")
            except Rejected as exc:
                self.message_user(request, exc.message, messages.WARNING)

    @admin.action(description="Roll back its scope to the previous version")
    def roll_back(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        scopes = {(v.tenant_id, v.scope_key): v.tenant for v in queryset.select_related("tenant")}
        for (_, key), tenant in sorted(scopes.items()):
            try:
                back = model_version_rollback(tenant=tenant, key=key, actor=request.user.get_username())
                self.message_user(request, f"{key} is back on v{back.version}.")
            except Rejected as exc:
                self.message_user(request, exc.message, messages.WARNING)

    @admin.action(description="Retrain (its scope, default window)")
    def retrain(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        scopes = {(v.tenant_id, v.scope_key): v for v in queryset.select_related("tenant", "series__tenant")}
        for (_, key), version in sorted(scopes.items()):
            try:
                trained, created = training.model_version_train_request(
                    scope=training.version_scope(version),
                    trigger=ModelVersion.Trigger.MANUAL,
                    actor=request.user.get_username(),
                )
            except Rejected as exc:
                self.message_user(request, f"{key}: {exc.message}", messages.WARNING)
                continue
            if created:
                self.message_user(request, f"{key}: v{trained.version} is training.")
            else:
                self.message_user(request, f"{key}: these inputs already gave v{trained.version} ({trained.status}).")


@admin.register(DriftReport)
class DriftReportAdmin(admin.ModelAdmin):
    """Written by the drift checks (mlops.drift); read here."""

    list_display = ["scope_key", "verdict", "drifted", "action", "window_to", "points", "tenant"]
    list_filter = ["verdict", "action", "tenant"]
    search_fields = ["scope_key"]
    list_select_related = ["tenant"]
    date_hierarchy = "window_to"
    fields = readonly_fields = (
        "tenant",
        "scope_key",
        "checked_version",
        "window_from",
        "window_to",
        "points",
        "verdict",
        "drifted",
        "action",
        "retrained_version",
        "statistics_json",
        "created_at",
    )

    @admin.display(description="Model version")
    def checked_version(self, report: DriftReport) -> str:
        return version_link(report.model_version)

    @admin.display(description="Retrained")
    def retrained_version(self, report: DriftReport) -> str:
        return version_link(report.retrained)

    @admin.display(description="Statistics")
    def statistics_json(self, report: DriftReport) -> str:
        return _pretty(report.statistics)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DriftReport | None = None) -> bool:
        return False


class CalendarEventForm(forms.ModelForm):
    """The API's checks (mlops.calendars.calendar_event_problems), as form errors."""

    class Meta:
        model = CalendarEvent
        fields = ["tenant", "kind", "description", "start", "end", "cluster", "node", "suppress"]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        problems = calendar_event_problems(
            kind=cleaned.get("kind", ""),
            start=cleaned.get("start"),
            end=cleaned.get("end"),
            cluster=cleaned.get("cluster", ""),
            node=cleaned.get("node", ""),
        )
        for problem in problems:
            if problem["field"] not in self.errors:  # a field already refused says why itself
                self.add_error(problem["field"], forms.ValidationError(problem["message"], code=problem["code"]))
        return cleaned


@admin.register(CalendarEvent)
class CalendarEventAdmin(admin.ModelAdmin):
    form = CalendarEventForm
    list_display = ["start", "end", "kind", "cluster", "node", "suppress", "description", "tenant", "created_by"]
    list_filter = ["kind", "suppress", "tenant", "cluster"]
    search_fields = ["description", "cluster", "node"]
    list_select_related = ["tenant"]
    date_hierarchy = "start"
    readonly_fields = ["created_by", "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: CalendarEvent | None = None) -> Any:
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: CalendarEvent, form: Any, change: bool) -> None:
        # Through the API's service; the form has run its checks (calendar_event_problems).
        values = {name: form.cleaned_data[name] for name in CALENDAR_EVENT_FIELDS}
        if change:
            event = CalendarEvent.objects.get(pk=obj.pk)  # as stored: `obj` already has the form's values
            calendar_event_save(tenant=event.tenant, event=event, **values)
        else:
            event = calendar_event_save(
                tenant=form.cleaned_data["tenant"], created_by=request.user.get_username(), **values
            )
            obj.pk, obj.created_by = event.pk, event.created_by
