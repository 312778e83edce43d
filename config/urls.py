from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from alerts.api.views import (
    AlertViewSet,
    DeliveryViewSet,
    EndpointViewSet,
    IncidentViewSet,
    MuteWindowViewSet,
    RouteViewSet,
    RuleTemplateViewSet,
    RuleViewSet,
    SilenceViewSet,
)
from analytics.api.anomalies import AnomalyViewSet, HealthViewSet
from analytics.api.views import PointsIngestView, SeriesQueryViewSet, SeriesViewSet
from mlops.api.views import CalendarEventViewSet, DriftReportViewSet, ModelVersionViewSet
from tenants.api.views import ApiKeyViewSet

router = SimpleRouter(trailing_slash=False)
router.register("model-versions", ModelVersionViewSet, basename="model-versions")
router.register("drift-reports", DriftReportViewSet, basename="drift-reports")
router.register("calendar-events", CalendarEventViewSet, basename="calendar-events")
router.register("series", SeriesViewSet, basename="series")
router.register("keys", ApiKeyViewSet, basename="keys")
router.register("anomalies", AnomalyViewSet, basename="anomalies")
router.register("rules", RuleViewSet, basename="rules")
router.register("rule-templates", RuleTemplateViewSet, basename="rule-templates")
router.register("alerts", AlertViewSet, basename="alerts")
router.register("incidents", IncidentViewSet, basename="incidents")
router.register("silences", SilenceViewSet, basename="silences")
router.register("mute-windows", MuteWindowViewSet, basename="mute-windows")
router.register("routes", RouteViewSet, basename="routes")
router.register("endpoints", EndpointViewSet, basename="endpoints")
router.register("deliveries", DeliveryViewSet, basename="deliveries")


api_v1 = [
    path("points", PointsIngestView.as_view(), name="points-ingest"),
    path("query", SeriesQueryViewSet.as_view({"get": "query_range"}), name="series-query"),
    path("health", HealthViewSet.as_view({"get": "summary"}), name="health"),
    path("health/top", HealthViewSet.as_view({"get": "top"}), name="health-top"),
    path("schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    path(
        "docs",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
    *router.urls,
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
]

handler404 = "config.api.json_404"
handler500 = "config.api.json_500"
