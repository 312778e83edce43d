from __future__ import annotations

import factory

from analytics.models import MetricSeries
from tests.tenants.factories import TenantFactory


class MetricSeriesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MetricSeries

    tenant = factory.SubFactory(TenantFactory)
    cluster = "eu-west"
    node = factory.Sequence(lambda n: f"node-{n}")
    metric = "cpu.usage"
    labels = factory.LazyFunction(dict)
