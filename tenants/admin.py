from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import services
from tenants.models import ApiKey, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "is_active",
        "max_series",
        "max_points_per_request",
        "retention_raw_days",
        "drift_policy",
        "created_at",
    ]
    list_filter = ["is_active", "drift_policy"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["slug", "name", "is_active"]}),
        ("Quotas", {"fields": ["max_series", "max_points_per_request"]}),
        (
            "Retention (days)",
            {"fields": ["retention_raw_days", "retention_1m_days", "retention_5m_days", "retention_1h_days"]},
        ),
        (
            "Models",
            {
                "fields": ["drift_policy"],
                "description": "What a drift verdict on one of the tenant's models does: train a candidate the "
                "promotion gate decides on, train and promote it, or only report (and fire drift alert rules).",
            },
        ),
    ]


class ApiKeyCreateForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ["tenant", "name", "scopes"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "tenant__slug"]
    readonly_fields = ["prefix", "scopes", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return [*self.readonly_fields, "tenant"] if obj else []

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return ["tenant", "name", "scopes"] if obj is None else ["tenant", "name", *self.readonly_fields]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = services.api_key_create(
            tenant=form.cleaned_data["tenant"],
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            created_by=request.user,
        )
        obj.pk, obj.prefix = issued.api_key.pk, issued.api_key.prefix
        messages.warning(request, f"The new key is {issued.raw_key} — copy it now, it will not be shown again.")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
