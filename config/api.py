"""API plumbing shared by every app: one error shape, pagination, the tenant-scoped base view.

Every error answers with one JSON shape:

    {"error": {"code": "<machine-readable>", "message": "<for people>", "details": [...]}}

`details` lists field or per-item problems when there are any.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from django.http import HttpRequest, JsonResponse
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.viewsets import GenericViewSet

from config.errors import Rejected
from tenants.auth import request_tenant
from tenants.models import ApiKey, Tenant


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _flatten(detail: Any, path: str = "") -> list[dict[str, Any]]:
    """DRF's nested ErrorDetail structures -> [{"field", "code", "message"}]."""
    if isinstance(detail, dict):
        return [
            item for key, value in detail.items() for item in _flatten(value, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(detail, list):
        return [item for value in detail for item in _flatten(value, path)]
    return [{"field": path or None, "code": getattr(detail, "code", "invalid"), "message": str(detail)}]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Rejected):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's 500 handler answers
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("invalid", "The request is invalid; see details.", _flatten(exc.detail))
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = error_body(codes if isinstance(codes, str) else exc.default_code, str(exc.detail))
    else:  # Django's Http404 / PermissionDenied, translated by DRF; no model names leak
        if response.status_code == 404:
            response.data = error_body("not_found", "Not found.")
        else:
            response.data = error_body("permission_denied", "You do not have permission to perform this action.")
    return response


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


class ErrorDetailSerializer(serializers.Serializer):
    index = serializers.IntegerField(required=False, help_text="Position of the offending item in a batch.")
    field = serializers.CharField(allow_null=True)
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorInnerSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable, e.g. invalid_points, not_found, missing_scope.")
    message = serializers.CharField()
    details = ErrorDetailSerializer(many=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorInnerSerializer()


ERROR_RESPONSES = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input; nothing was written."),
    401: OpenApiResponse(ErrorSerializer, description="Missing, invalid or revoked API key."),
    403: OpenApiResponse(ErrorSerializer, description="The key lacks the scope."),
    404: OpenApiResponse(ErrorSerializer, description="No such object in your tenant."),
}


class TenantScopedViewSet(GenericViewSet):
    """The one place that scopes querysets to the caller's tenant.

    `get_queryset` filters by the tenant of the authenticated key, so another tenant's
    object is a 404 on every verb (DRF's get_object), and lists never show it. The tenant
    is never read from the request body: subclasses get it from `self.tenant`.
    """

    tenant_field = "tenant"

    @property
    def tenant(self) -> Tenant:
        return request_tenant(self.request)

    @property
    def actor(self) -> str:
        """Who acts, as audit rows record it: the API key's name."""
        api_key = self.request.auth
        assert isinstance(api_key, ApiKey)
        return f"key:{api_key.name}"

    def get_queryset(self) -> QuerySet[Model]:
        queryset = super().get_queryset()
        if getattr(self, "swagger_fake_view", False):  # schema generation has no tenant
            return queryset.none()
        return queryset.filter(**{self.tenant_field: self.tenant})

    def validated(
        self, serializer_class: type[serializers.Serializer], *, partial: bool = False, data: Any = None
    ) -> dict[str, Any]:
        """The request body (or `data`) checked by an input serializer: 400 with details if not."""
        params = serializer_class(
            data=self.request.data if data is None else data, partial=partial, context=self.get_serializer_context()
        )
        params.is_valid(raise_exception=True)
        return dict(params.validated_data)


class WritableViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet):
    """Create and edit through one service call (`save`) fed by an input serializer; delete is a
    plain delete."""

    input_serializer_class: type[serializers.Serializer]

    def save(self, instance: Any, values: dict[str, Any]) -> Model:
        """Create (`instance` None) or edit through the service; returns what it saved."""
        raise NotImplementedError

    def render(self, instance: Model) -> Any:
        return self.get_serializer(instance).data

    def create(self, request: Request) -> Response:
        saved = self.save(None, self.validated(self.input_serializer_class))
        return Response(self.render(saved), status=status.HTTP_201_CREATED)

    def update(self, request: Request, pk: str | None = None) -> Response:
        return self._edit(partial=False)

    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        return self._edit(partial=True)

    def _edit(self, *, partial: bool) -> Response:
        instance = self.get_object()  # first: another tenant's object is a 404 whatever the body
        values = self.validated(self.input_serializer_class, partial=partial)
        return Response(self.render(self.save(instance, values)))
