"""Test settings: real PostgreSQL and Redis at their standard local addresses when reachable.

When they are not, the suite falls back to SQLite and an in-memory broker, and the tests
marked `services` are skipped (loudly; `VIGIL_REQUIRE_SERVICES=1` turns that into a failure,
see tests/conftest.py). DATABASE_URL / CELERY_BROKER_URL override the probing.
"""

from __future__ import annotations

import os
import socket


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-insecure-key")
os.environ.setdefault("DJANGO_DEBUG", "false")
if "DATABASE_URL" not in os.environ and _reachable("127.0.0.1", 5432):
    os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/vigil"
if "CELERY_BROKER_URL" not in os.environ and _reachable("127.0.0.1", 6379):
    os.environ["CELERY_BROKER_URL"] = "redis://127.0.0.1:6379/9"

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import BASE_DIR, database_config, env  # noqa: E402

ALLOWED_HOSTS = ["*"]
DATABASES = {
    "default": database_config(env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / '.run' / 'test.sqlite3'}"))
}
DATABASES["default"]["CONN_MAX_AGE"] = 0
# A test database per run, like the Redis key space: two runs at once (a developer's and an
# editor's, or parallel checkouts) would otherwise drop each other's database.
DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="memory://")
# Each test run gets its own key space in Redis, so parallel runs never consume each
# other's messages; the end-to-end worker is started with the same prefix.
VIGIL_TEST_KEYPREFIX = env.str("VIGIL_TEST_KEYPREFIX", default=f"vigil-test-{os.getpid()}:")
os.environ["VIGIL_TEST_KEYPREFIX"] = VIGIL_TEST_KEYPREFIX
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "global_keyprefix": VIGIL_TEST_KEYPREFIX}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SERVICES_AVAILABLE = DATABASES["default"]["ENGINE"].endswith("postgresql") and CELERY_BROKER_URL.startswith("redis")

VIGIL_WEBHOOK_ALLOW_PRIVATE = env.bool("VIGIL_WEBHOOK_ALLOW_PRIVATE", default=True)  # receivers on loopback
