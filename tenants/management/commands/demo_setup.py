from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from alerts import delivery
from alerts import services as alert_services
from alerts.models import AlertRule, WebhookEndpoint
from tenants import services
from tenants.models import ApiKey, Membership, Tenant

DEMO_KEY_NAME = "demo (make run)"
DEMO_ENDPOINT_NAME = "demo receiver (make run)"


class Command(BaseCommand):
    help = "Create (or reuse) the demo tenant and admin user, and issue a fresh demo API key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--key-file", help="Also write the raw key to this file (for the demo streamer).")
        parser.add_argument("--receiver-url", help="Send the demo tenant's alerts to this webhook receiver.")
        parser.add_argument("--secret-file", help="Write the receiver endpoint's signing secret to this file.")

    @transaction.atomic
    def handle(
        self,
        *args: Any,
        key_file: str | None = None,
        receiver_url: str | None = None,
        secret_file: str | None = None,
        **options: Any,
    ) -> None:
        tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo"})
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        if user is None:
            user = user_model.objects.create_superuser("admin", "admin@example.com", "admin")
        services.membership_set(tenant=tenant, user=user, role=Membership.Role.OWNER)
        # One live demo key at a time: the previous run's key is revoked.
        ApiKey.objects.filter(tenant=tenant, name=DEMO_KEY_NAME, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        issued = services.api_key_create(
            tenant=tenant, name=DEMO_KEY_NAME, scopes=["ingest", "read", "admin"], created_by=user
        )
        if key_file:
            with open(key_file, "w") as fh:
                fh.write(issued.raw_key)
        self.stdout.write(f"demo tenant: {tenant.slug}    admin user: admin / admin")
        self.stdout.write(f"demo API key (ingest, read, admin): {issued.raw_key}")
        self.alerting_setup(tenant, receiver_url, secret_file)

    def alerting_setup(self, tenant: Tenant, receiver_url: str | None, secret_file: str | None) -> None:
        """Two rules from the templates on the demo stream's metrics and, given a receiver, an
        endpoint at it (re-created each run, so the secret written out is the live one)."""
        for template, metric in (("p99_latency", "http.latency.p99"), ("error_spike", "http.errors")):
            name = f"{alert_services.RULE_TEMPLATES[template].title}: {metric}"
            if not AlertRule.objects.filter(tenant=tenant, name=name).exists():
                alert_services.rule_template_apply(tenant=tenant, template=template, metric=metric, created_by="demo")
        if not receiver_url:
            return
        WebhookEndpoint.objects.filter(tenant=tenant, name=DEMO_ENDPOINT_NAME).delete()
        _, secret = delivery.endpoint_create(tenant=tenant, name=DEMO_ENDPOINT_NAME, url=receiver_url)
        if secret_file:
            with open(secret_file, "w") as fh:
                fh.write(secret)
        self.stdout.write(f"demo alerts go to {receiver_url} (rules: p99 latency, error spike)")
