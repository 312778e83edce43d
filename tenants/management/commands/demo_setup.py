from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from tenants import services
from tenants.models import ApiKey, Membership, Tenant

DEMO_KEY_NAME = "demo (make run)"


class Command(BaseCommand):
    help = "Create (or reuse) the demo tenant and admin user, and issue a fresh demo API key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--key-file", help="Also write the raw key to this file (for the demo streamer).")

    @transaction.atomic
    def handle(self, *args: Any, key_file: str | None = None, **options: Any) -> None:
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
