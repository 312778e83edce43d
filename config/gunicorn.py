"""gunicorn settings for production (the Dockerfile, docker-compose.yml) and bench/ingest.py.

Command-line flags override these; WEB_CONCURRENCY / WEB_THREADS size the server.
"""

from __future__ import annotations

import gc
import os
from typing import Any

wsgi_app = "config.wsgi:application"
bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
# gthread keeps client connections alive (a collector posts batch after batch) and overlaps
# one request's Python with another's wait on PostgreSQL.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "2"))
keepalive = 75
timeout = 120
worker_tmp_dir = "/dev/shm"  # the heartbeat file: never on a slow or full disk
accesslog = "-"


def post_worker_init(worker: Any) -> None:
    """Freeze the loaded application out of the garbage collector's sight.

    Django, DRF and the app are a few hundred thousand long-lived objects that every full
    collection would walk again; an ingest request allocates enough to trigger such
    collections. Frozen, a collection walks only the objects of requests in flight
    (measured in bench/ingest.py: about a quarter less worker CPU per batch).
    """
    gc.freeze()
