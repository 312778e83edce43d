"""The demo set-up of `make run`: rules on the demo stream's metrics and an endpoint at the demo receiver."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

from alerts.models import AlertRule, WebhookEndpoint

pytestmark = pytest.mark.django_db


def test_demo_setup_creates_alert_rules_and_an_endpoint_whose_secret_it_writes(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    arguments = ["--key-file", str(tmp_path / "key"), "--receiver-url", "http://127.0.0.1:8001/hook"]
    call_command("demo_setup", *arguments, "--secret-file", str(secret_file), stdout=io.StringIO())
    call_command("demo_setup", *arguments, "--secret-file", str(secret_file), stdout=io.StringIO())  # again: same rules

    assert sorted(AlertRule.objects.values_list("name", flat=True)) == [
        "Error spike: http.errors",
        "p99 latency: http.latency.p99",
    ]
    [endpoint] = WebhookEndpoint.objects.all()
    assert endpoint.url == "http://127.0.0.1:8001/hook"
    assert secret_file.read_text() == endpoint.secret  # the live secret, from the second run
