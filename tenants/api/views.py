from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import ERROR_RESPONSES, TenantScopedViewSet
from tenants import services
from tenants.api.serializers import ApiKeyCreateSerializer, ApiKeyIssuedSerializer, ApiKeySerializer
from tenants.models import ApiKey


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """The tenant's API keys. Managing keys needs the `admin` scope."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer
    required_scopes = {"GET": "admin", "HEAD": "admin", "OPTIONS": "admin", "POST": "admin", "DELETE": "admin"}

    @extend_schema(
        summary="Issue an API key",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyIssuedSerializer, **ERROR_RESPONSES},
    )
    def create(self, request: Request) -> Response:
        params = ApiKeyCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        issued = services.api_key_create(
            tenant=self.tenant, name=params.validated_data["name"], scopes=params.validated_data["scopes"]
        )
        data = {**ApiKeySerializer(issued.api_key).data, "key": issued.raw_key}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Revoke an API key", responses={200: ApiKeySerializer, **ERROR_RESPONSES})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        api_key = services.api_key_revoke(api_key=self.get_object())
        return Response(ApiKeySerializer(api_key).data)
