"""Rows of the registry for API and admin tests; training itself is tested in test_training."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import factory

from mlops.models import CalendarEvent, DriftReport, ModelVersion
from tests.analytics.factories import MetricSeriesFactory
from tests.tenants.factories import TenantFactory

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class ModelVersionFactory(factory.django.DjangoModelFactory):
    """A trained candidate of one series (versions number up per scope)."""

    class Meta:
        model = ModelVersion

    series = factory.SubFactory(MetricSeriesFactory)
    tenant = factory.LazyAttribute(lambda o: o.series.tenant)
    scope_kind = ModelVersion.ScopeKind.SERIES
    scope_key = factory.LazyAttribute(lambda o: f"series:{o.series.pk}")
    cluster = factory.LazyAttribute(lambda o: o.series.cluster)
    node = factory.LazyAttribute(lambda o: o.series.node)
    metric = factory.LazyAttribute(lambda o: o.series.metric)
    version = factory.LazyAttribute(lambda o: ModelVersion.objects.filter(scope_key=o.scope_key).count() + 1)
    detector = "ensemble"
    hyperparameters = factory.LazyFunction(lambda: {"sensitivity": "medium"})
    train_from = T0
    train_to = T0 + timedelta(days=21)
    train_points = 6048
    metrics = factory.LazyFunction(lambda: {"contamination": 0.002, "reference": {"value": {"n": 10}}})
    status = ModelVersion.Status.CANDIDATE
    trigger = ModelVersion.Trigger.SCHEDULE


class DriftReportFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DriftReport

    model_version = factory.SubFactory(ModelVersionFactory)
    tenant = factory.LazyAttribute(lambda o: o.model_version.tenant)
    scope_key = factory.LazyAttribute(lambda o: o.model_version.scope_key)
    window_to = factory.Sequence(lambda n: T0 + timedelta(days=30, hours=n))
    window_from = factory.LazyAttribute(lambda o: o.window_to - timedelta(days=7))
    points = 2016
    statistics = factory.LazyFunction(
        lambda: {"features": {"value": {"psi": 0.41, "ks_p": 1e-9, "drifted": True}}, "concept": {}}
    )
    verdict = DriftReport.Verdict.DRIFT
    drifted = factory.LazyFunction(lambda: ["value"])
    action = DriftReport.Action.NOTIFY


class CalendarEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CalendarEvent

    tenant = factory.SubFactory(TenantFactory)
    kind = CalendarEvent.Kind.MAINTENANCE
    description = "Database upgrade"
    start = T0
    end = T0 + timedelta(hours=4)
    cluster = "eu-west"
    node = ""
