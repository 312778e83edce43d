"""The registry in the admin: versions per scope with their status and metrics, the audit trail,
and promote / roll back through the same services as everything else. Models are registered by
training, never typed in here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.errors import Rejected
from mlops.models import ModelVersion, ModelVersionEvent
from mlops.services import model_version_promote, model_version_rollback


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
    actions = ["promote", "roll_back"]

    @admin.display(description="Artifact sha256")
    def artifact_sha256(self, version: ModelVersion) -> str:
        return version.artifact_id or ""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in ModelVersion._meta.fields if f.name != "artifact"] + ["artifact_sha256"]

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
