"""Bearer API-key authentication and scope permissions for the REST API."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from tenants.models import ApiKey, Tenant

# Writing last_used_at on every request would turn every read into a write; a minute's
# resolution is what an operator needs to spot unused keys.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class KeyPrincipal:
    """`request.user` for API-key requests: a key, never a Django user (see `request_tenant`)."""

    api_key: ApiKey

    is_authenticated = True
    is_anonymous = False


def request_tenant(request: Request) -> Tenant:
    """The tenant of the key that authenticated `request` (HasScope guarantees there is one)."""
    api_key = request.auth
    assert isinstance(api_key, ApiKey)
    return api_key.tenant


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme != self.keyword or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Expected 'Authorization: Bearer <api key>'.", code="invalid_key")
        return self.authenticate_key(raw_key.strip())

    def authenticate_key(self, raw_key: str) -> tuple[KeyPrincipal, ApiKey]:
        parts = raw_key.split("_", 2)  # the secret itself may contain "_"
        api_key = None
        if len(parts) == 3 and parts[0] == "vgl":
            api_key = ApiKey.objects.select_related("tenant").filter(prefix=parts[1]).first()
        if api_key is None or not hmac.compare_digest(api_key.hashed_key, ApiKey.hash(raw_key)):
            raise exceptions.AuthenticationFailed("Invalid API key.", code="invalid_key")
        if api_key.is_revoked:
            raise exceptions.AuthenticationFailed("This API key has been revoked.", code="revoked_key")
        if not api_key.tenant.is_active:
            raise exceptions.AuthenticationFailed("This tenant is deactivated.", code="tenant_inactive")
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return KeyPrincipal(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="vigil"'


class HasScope(permissions.BasePermission):
    """Requires an authenticated key that grants the view's scope for this method.

    Views declare `required_scopes = {"GET": "read", "POST": "ingest", ...}`; by default
    safe methods need `read` and the others `admin`.
    """

    default_scopes = {"GET": "read", "HEAD": "read", "OPTIONS": "read"}

    def has_permission(self, request: Request, view: Any) -> bool:
        if not isinstance(request.auth, ApiKey):
            raise exceptions.NotAuthenticated()
        scopes = {**self.default_scopes, **getattr(view, "required_scopes", {})}
        scope = scopes.get(request.method or "", ApiKey.Scope.ADMIN)
        if not request.auth.grants(scope):
            raise exceptions.PermissionDenied(f"This API key lacks the '{scope}' scope.", code="missing_scope")
        return True


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A Vigil API key: `vgl_<prefix>_<secret>`."}
