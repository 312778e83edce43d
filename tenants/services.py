"""Writes for tenants, memberships and API keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from tenants.models import ApiKey, Membership, Tenant

KEY_PREFIX_BYTES = 6  # 12 hex characters: public, for the lookup
KEY_SECRET_BYTES = 32  # 256 bits


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str  # shown once; never stored


def membership_set(*, tenant: Tenant, user: Any, role: str) -> Membership:
    """Give `user` `role` in `tenant` (creating or updating the membership)."""
    membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership


def api_key_create(*, tenant: Tenant, name: str, scopes: Iterable[str], created_by: Any = None) -> IssuedKey:
    """Issue a key. The raw key is returned once; only its hash is stored."""
    scopes = sorted(set(scopes))
    unknown = set(scopes) - set(ApiKey.Scope.values)
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(ApiKey.Scope.values)}")
    prefix = secrets.token_hex(KEY_PREFIX_BYTES)
    raw_key = f"vgl_{prefix}_{secrets.token_urlsafe(KEY_SECRET_BYTES)}"
    api_key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=prefix, hashed_key=ApiKey.hash(raw_key), scopes=scopes, created_by=created_by
    )
    return IssuedKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key. Idempotent: revoking a revoked key keeps the first revocation time."""
    with transaction.atomic():
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key
