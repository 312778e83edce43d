"""The alerting admin, for operators of every tenant. Writes go through the same services as the
API (rules get their versions, matchers and URLs their checks); what Vigil itself writes (alert
states, incidents, notifications, deliveries) is read-only, changed only by the actions."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from alerts import delivery, services
from alerts.evaluation import RulePreview, rule_preview
from alerts.models import (
    Alert,
    AlertRule,
    AlertRuleVersion,
    Delivery,
    DeliveryAttempt,
    Incident,
    IncidentActivity,
    MuteWindow,
    Notification,
    Route,
    Silence,
    WebhookEndpoint,
)
from config.errors import Rejected

PREVIEW_LISTED = 10  # fired intervals listed per rule in the preview message


def _pretty_json(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


# --- saving through the services ------------------------------------------------------------------


class _DryRun(Exception):
    pass


class ServiceForm(forms.ModelForm):
    """A model form whose save is one service call, `apply`.

    The admin decides between "saved" and "show the form again with its errors" before
    save_model runs, while our services validate and write in one call. So clean() runs `apply`
    in a savepoint that is always rolled back: the service's own checks (the one parser of
    each thing) become the form's errors, and no second copy of them lives here."""

    actor = ""  # the admin user's name, set by ServiceAdmin.get_form

    def apply(self, values: dict[str, Any]) -> Model:
        """Create or edit through the service; returns the saved object."""
        raise NotImplementedError

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        assert cleaned is not None
        for field in self._meta.model._meta.concrete_fields:
            # An emptied JSON textarea is None; the column wants its default ([] or {}).
            if isinstance(field, models.JSONField) and field.name in cleaned and cleaned[field.name] is None:
                cleaned[field.name] = field.get_default()
        if self.errors:
            return cleaned
        try:
            with transaction.atomic():
                self.apply(cleaned)
                raise _DryRun
        except _DryRun:
            pass
        except Rejected as exc:
            for detail in exc.details or [{"field": None, "message": exc.message}]:
                path = detail.get("field") or ""  # e.g. "condition.window_seconds", "matchers[0].value"
                name = re.split(r"[.\[]", path)[0]
                message = f"{path}: {detail['message']}" if path else detail["message"]
                self.add_error(name if name in self.fields else None, message)
        return cleaned

    def _existing(self) -> Any:
        """The object as stored (the form's instance is being changed by the form), or None."""
        return type(self.instance).objects.get(pk=self.instance.pk) if self.instance.pk else None

    def _tenant(self, values: dict[str, Any]) -> Any:
        if "tenant" in values:  # at creation; afterwards it is read-only, the instance's
            return values["tenant"]
        return self.instance.tenant


class ServiceAdmin(admin.ModelAdmin):
    """Saves through the form's service call; the tenant is chosen once, at creation."""

    form: type[ServiceForm]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = cast(type[ServiceForm], super().get_form(request, obj, change=change, **kwargs))
        form.actor = request.user.get_username()  # a fresh class per call (modelform_factory)
        return form

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj.pk = form.apply(form.cleaned_data).pk


class ReadOnlyAdmin(admin.ModelAdmin):
    """What Vigil writes: the change page is a view page; changes happen through the actions."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Who may run the actions: whoever Django would let change the model."""
        meta = self.model._meta
        return request.user.has_perm(f"{meta.app_label}.change_{meta.model_name}")


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- rules ---------------------------------------------------------------------------------------


class AlertRuleForm(ServiceForm):
    class Meta:
        model = AlertRule
        fields = ["tenant", "name", "enabled", *AlertRule.VERSIONED_FIELDS]

    def apply(self, values: dict[str, Any]) -> AlertRule:
        fields = {name: values[name] for name in services.RULE_FIELDS if name in values}
        rule = self._existing()
        if rule is None:
            return services.rule_create(tenant=values["tenant"], created_by=self.actor, **fields)
        return services.rule_update(rule=rule, updated_by=self.actor, **fields)


def preview_message(rule: AlertRule, preview: RulePreview) -> str:
    """One line an operator can read: how often and when the rule would have fired."""
    hours = round((preview.end - preview.start).total_seconds() / 3600)
    fired = sorted(
        (start, end, severity, alert.labels) for alert in preview.alerts for start, end, severity in alert.fired
    )
    if not fired:
        return f"{rule.name}: would not have fired in the last {hours} h ({preview.evaluations} evaluations)."
    shown = [
        f"{labels.get('node') or labels.get('cluster', '')} {severity} {start:%Y-%m-%d %H:%M}"
        + (f"-{end:%H:%M}" if end else " (still firing)")
        for start, end, severity, labels in fired[:PREVIEW_LISTED]
    ]
    more = f"; and {len(fired) - PREVIEW_LISTED} more" if len(fired) > PREVIEW_LISTED else ""
    listing = "; ".join(shown)
    return f"{rule.name}: would have fired {len(fired)} time(s) in the last {hours} h (UTC): {listing}{more}."


@admin.register(AlertRule)
class AlertRuleAdmin(ServiceAdmin):
    form = AlertRuleForm
    list_display = ["name", "tenant", "kind", "enabled", "version"]
    list_filter = ["kind", "enabled", "tenant"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]
    readonly_fields = ["version", "created_at", "updated_at", "versions_table"]
    actions = ["preview"]

    # Deleting resolves (and notifies) the rule's firing alerts first: the service, not a bare delete.
    def delete_model(self, request: HttpRequest, obj: AlertRule) -> None:
        services.rule_delete(rule=obj, actor=request.user.get_username())

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AlertRule]) -> None:
        for rule in queryset:
            services.rule_delete(rule=rule, actor=request.user.get_username())

    @admin.display(description="Versions")
    def versions_table(self, rule: AlertRule) -> str:
        if rule.pk is None:
            return "-"
        rows = [
            (
                version.version,
                f"{version.created_at:%Y-%m-%d %H:%M}",
                version.created_by or "-",
                _pretty_json(version.spec),
            )
            for version in rule.versions.order_by("-version")
        ]
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html("<table><tr><th>version</th><th>at</th><th>by</th><th>spec</th></tr>{}</table>", body)

    @admin.action(description="Preview: test against the last 24 h")
    def preview(self, request: HttpRequest, queryset: QuerySet[AlertRule]) -> None:
        for rule in queryset:
            try:
                self.message_user(request, preview_message(rule, rule_preview(rule=rule, hours=24)))
            except ValueError as exc:  # rule_preview's refusal: no-data rules cannot be replayed
                self.message_user(request, f"{rule.name}: cannot be previewed ({exc}).", messages.WARNING)


@admin.register(AlertRuleVersion)
class AlertRuleVersionAdmin(ReadOnlyAdmin):
    list_display = ["rule", "version", "created_at", "created_by"]
    list_select_related = ["rule"]
    search_fields = ["rule__name"]
    readonly_fields = ("rule", "version", "created_at", "created_by", "spec_json")
    fields = readonly_fields

    @admin.display(description="Spec")
    def spec_json(self, version: AlertRuleVersion) -> str:
        return _pretty_json(version.spec)


# --- alerts and incidents ------------------------------------------------------------------------


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["id", "rule", "tenant", "state", "severity", "health", "value", "fired_at", "resolved_at"]
    list_filter = ["state", "severity", "health", "tenant"]
    list_select_related = ["rule", "tenant"]
    search_fields = ["rule__name", "fingerprint"]


class IncidentActivityInline(ReadOnlyInline):
    model = IncidentActivity
    readonly_fields = ("created_at", "kind", "alert", "previous", "current", "value", "comment", "actor")
    fields = readonly_fields


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    list_display = ["id", "title", "tenant", "severity", "status", "assignee", "created_at", "resolved_at"]
    list_filter = ["status", "severity", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["title", "rule__name"]
    date_hierarchy = "created_at"
    inlines = [IncidentActivityInline]
    actions = ["acknowledge", "resolve"]

    @admin.action(description="Acknowledge", permissions=["operate"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        done = refused = 0
        for incident in queryset:
            try:
                services.incident_acknowledge(incident=incident, actor=request.user.get_username())
                done += 1
            except Rejected:
                refused += 1  # resolved already
        self.message_user(request, f"Acknowledged {done} incident(s); {refused} resolved ones left alone.")

    @admin.action(description="Resolve", permissions=["operate"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        for incident in queryset:
            services.incident_resolve(incident=incident, actor=request.user.get_username())
        self.message_user(request, f"Resolved {len(queryset)} incident(s).")


# --- silences, mute windows, routes ----------------------------------------------------------------


class SilenceForm(ServiceForm):
    class Meta:
        model = Silence
        fields = ["tenant", "matchers", "starts_at", "ends_at", "comment"]

    def apply(self, values: dict[str, Any]) -> Silence:
        fields = {name: values[name] for name in ("matchers", "starts_at", "ends_at", "comment")}
        return services.silence_create(tenant=values["tenant"], created_by=self.actor, **fields)


@admin.register(Silence)
class SilenceAdmin(ServiceAdmin, ReadOnlyAdmin):
    """Created through silence_create; a silence is never edited, only expired (the action)."""

    form = SilenceForm
    list_display = ["id", "tenant", "matchers", "starts_at", "ends_at", "created_by", "comment"]
    list_filter = ["tenant"]
    list_select_related = ["tenant"]
    actions = ["expire"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin.ModelAdmin.has_add_permission(self, request)

    @admin.action(description="Expire now", permissions=["operate"])
    def expire(self, request: HttpRequest, queryset: QuerySet[Silence]) -> None:
        for silence in queryset:
            services.silence_expire(silence=silence)
        self.message_user(request, f"Expired {len(queryset)} silence(s).")


class MuteWindowForm(ServiceForm):
    class Meta:
        model = MuteWindow
        fields = ["tenant", "name", "matchers", "weekdays", "start_time", "end_time", "timezone", "enabled"]

    def apply(self, values: dict[str, Any]) -> MuteWindow:
        fields = {name: values[name] for name in self.Meta.fields if name in values and name != "tenant"}
        return services.mute_window_save(tenant=self._tenant(values), window=self._existing(), **fields)


@admin.register(MuteWindow)
class MuteWindowAdmin(ServiceAdmin):
    form = MuteWindowForm
    list_display = ["name", "tenant", "weekdays", "start_time", "end_time", "timezone", "enabled"]
    list_filter = ["enabled", "tenant"]
    list_select_related = ["tenant"]


class RouteForm(ServiceForm):
    class Meta:
        model = Route
        fields = [
            "tenant",
            "name",
            "position",
            "matchers",
            "severities",
            "endpoints",
            "group_by",
            "group_wait_seconds",
            "group_interval_seconds",
            "repeat_interval_seconds",
            "continue_matching",
        ]

    def apply(self, values: dict[str, Any]) -> Route:
        fields = {name: values[name] for name in self.Meta.fields if name in values and name != "tenant"}
        fields["endpoints"] = list(fields.get("endpoints") or [])
        return services.route_save(tenant=self._tenant(values), route=self._existing(), **fields)


@admin.register(Route)
class RouteAdmin(ServiceAdmin):
    form = RouteForm
    list_display = ["name", "tenant", "position", "continue_matching"]
    list_filter = ["tenant"]
    list_select_related = ["tenant"]


# --- endpoints and deliveries --------------------------------------------------------------------


class WebhookEndpointForm(ServiceForm):
    """Never shows a secret: the secret fields are not in the form."""

    secret = ""  # set by apply on creation, shown once by the admin
    # Not a URLField: alerts.delivery checks URLs (scheme, resolvable, public); one checker.
    url = forms.CharField(max_length=2000)

    class Meta:
        model = WebhookEndpoint
        fields = ["tenant", "name", "url", "enabled", "severities", "matchers", "event_types", "headers"]

    def apply(self, values: dict[str, Any]) -> WebhookEndpoint:
        fields = {name: values[name] for name in self.Meta.fields if name in values and name != "tenant"}
        endpoint = self._existing()
        if endpoint is not None:
            return delivery.endpoint_update(endpoint=endpoint, **fields)
        endpoint, self.secret = delivery.endpoint_create(tenant=values["tenant"], **fields)
        return endpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ServiceAdmin):
    form = WebhookEndpointForm
    list_display = ["name", "tenant", "url", "enabled", "failing_since", "disabled_at"]
    list_filter = ["enabled", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["name", "url", "tenant__slug"]
    readonly_fields = [
        "disabled_at",
        "disabled_reason",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    ]
    actions = ["send_test", "rotate_secret"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            messages.warning(request, f"The signing secret is {form.secret} — copy it now, it will not be shown again.")

    @admin.action(description="Send test", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            try:
                sent = delivery.endpoint_send_test(endpoint=endpoint)
                self.message_user(request, f"{endpoint.name}: test queued as {sent.webhook_id}.")
            except Rejected as exc:
                self.message_user(request, f"{endpoint.name}: {exc.message}", messages.ERROR)

    @admin.action(description="Rotate secret", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            secret = delivery.endpoint_secret_rotate(endpoint=endpoint)
            expires = endpoint.previous_secret_expires_at
            messages.warning(
                request,
                f"{endpoint.name}: the new secret is {secret} — copy it now, it will not be shown again. "
                f"The previous one also signs until {expires:%Y-%m-%d %H:%M} UTC.",
            )


class DeliveryAttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    readonly_fields = ("number", "started_at", "duration_ms", "status_code", "outcome", "error", "response_excerpt")
    fields = readonly_fields


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["webhook_id", "tenant", "endpoint", "event", "status", "attempts", "last_status_code", "created_at"]
    list_filter = ["status", "tenant"]
    list_select_related = ["tenant", "endpoint", "notification"]
    search_fields = ["webhook_id", "endpoint__name"]
    date_hierarchy = "created_at"
    inlines = [DeliveryAttemptInline]
    actions = ["replay"]

    @admin.display(description="Event")
    def event(self, sent: Delivery) -> str:
        return sent.notification.event

    @admin.action(description="Replay", permissions=["operate"])
    def replay(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        refused = []
        for sent in queryset:
            try:
                delivery.delivery_replay(delivery=sent)
            except Rejected as exc:
                refused.append(f"{sent.webhook_id}: {exc.message}")
        self.message_user(request, f"Replayed {len(queryset) - len(refused)} delivery(ies).")
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ["id", "tenant", "event", "incident", "created_at"]
    list_filter = ["event", "tenant"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    readonly_fields = ("tenant", "event", "incident", "group", "created_at", "body_json")
    fields = readonly_fields

    @admin.display(description="Body")
    def body_json(self, notification: Notification) -> str:
        return _pretty_json(json.loads(notification.body))
