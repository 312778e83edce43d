from __future__ import annotations

from datetime import UTC, datetime, timedelta

import factory

from analytics.models import AnomalyResult, AnomalyScore, MetricSeries
from tests.tenants.factories import TenantFactory


class MetricSeriesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MetricSeries

    tenant = factory.SubFactory(TenantFactory)
    cluster = "eu-west"
    node = factory.Sequence(lambda n: f"node-{n}")
    metric = "cpu.usage"
    labels = factory.LazyFunction(dict)


class AnomalyResultFactory(factory.django.DjangoModelFactory):
    """A closed spike on one series; pass `series=None` (with tenant, cluster, node) for a
    node-level anomaly. Tenant, cluster, node and metric follow the series."""

    class Meta:
        model = AnomalyResult

    series = factory.SubFactory(MetricSeriesFactory)
    tenant = factory.LazyAttribute(lambda o: o.series.tenant if o.series else TenantFactory())
    cluster = factory.LazyAttribute(lambda o: o.series.cluster if o.series else "eu-west")
    node = factory.LazyAttribute(lambda o: o.series.node if o.series else "node-0")
    metric = factory.LazyAttribute(lambda o: o.series.metric if o.series else "")
    detector = "robust_zscore"
    window_start = factory.Sequence(lambda n: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=n))
    window_end = factory.LazyAttribute(lambda o: o.window_start + timedelta(minutes=5))
    peak_ts = factory.LazyAttribute(lambda o: o.window_start + timedelta(minutes=2))
    peak_score = 0.9
    label = AnomalyResult.Label.SPIKE
    observed = 912.0
    expected = 240.0
    lower = 180.0
    upper = 310.0
    deviation = 7.4
    explanation = factory.LazyAttribute(
        lambda o: f"{o.metric or 'node'} on {o.node} was {o.observed:g} at {o.peak_ts:%H:%M}, expected {o.expected:g}."
    )
    details = factory.LazyFunction(dict)
    status = AnomalyResult.Status.CLOSED


class AnomalyScoreFactory(factory.django.DjangoModelFactory):
    """The max anomaly score of a series in one minute bucket (pass `bucket` aligned to a minute)."""

    class Meta:
        model = AnomalyScore

    series = factory.SubFactory(MetricSeriesFactory)
    bucket = factory.Sequence(lambda n: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=n))
    score = 0.1
