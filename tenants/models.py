from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models


class Tenant(models.Model):
    """A customer of Vigil. Everything else hangs off a tenant and is invisible to others."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    # Quotas
    max_series = models.PositiveIntegerField(default=10_000)
    max_points_per_request = models.PositiveIntegerField(default=10_000)
    # Retention, in days, per resolution (enforced by the retention task).
    retention_raw_days = models.PositiveIntegerField(default=7)
    retention_1m_days = models.PositiveIntegerField(default=30)
    retention_5m_days = models.PositiveIntegerField(default=90)
    retention_1h_days = models.PositiveIntegerField(default=730)
    # Anomaly detection default for the tenant's series (a series may override it).
    detection_sensitivity = models.CharField(
        max_length=8, choices=[("low", "low"), ("medium", "medium"), ("high", "high")], default="medium"
    )

    # What a drift verdict on one of the tenant's models does (mlops.drift).
    class DriftPolicy(models.TextChoices):
        RETRAIN_GATE = "retrain_gate"  # train a candidate; the promotion gate decides
        RETRAIN_PROMOTE = "retrain_promote"  # train a candidate and promote it
        NOTIFY = "notify"  # report only (and fire `drift` alert rules)

    drift_policy = models.CharField(max_length=16, choices=DriftPolicy.choices, default=DriftPolicy.RETRAIN_GATE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    """A Django user's role in a tenant (a user may belong to several)."""

    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"
        VIEWER = "viewer"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_tenant_user")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"


class ApiKey(models.Model):
    """A tenant's API credential: `vgl_<prefix>_<secret>`.

    Only the SHA-256 of the whole key is stored. The secret is 256 bits of randomness, so a
    fast hash is enough (a slow password hash would only cost every request time); the
    prefix is public and serves the lookup.
    """

    class Scope(models.TextChoices):
        INGEST = "ingest"
        READ = "read"
        ADMIN = "admin"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True)  # serves the lookup on every request
    hashed_key = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @staticmethod
    def hash(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    def grants(self, scope: str) -> bool:
        """`admin` implies every other scope."""
        return scope in self.scopes or self.Scope.ADMIN in self.scopes
