"""A real Celery worker process for end-to-end tests.

It runs against the test database and this run's Redis key space (config/settings/test.py),
consuming every Vigil queue. Tests that need to kill one start their own with `worker_start`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from config.celery_app import app as celery_app
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def worker_start(name: str = "e2e", **env_overrides: str) -> subprocess.Popen[bytes]:
    """Start a worker (threads pool, two threads) and wait until it answers a ping.

    `env_overrides` set settings read from the environment (e.g. VIGIL_WEBHOOK_RETRY_SCHEDULE)
    for this worker only. Its log is .run/<name>-worker.log.
    """
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "VIGIL_TEST_KEYPREFIX": settings.VIGIL_TEST_KEYPREFIX,
        **env_overrides,
    }
    (ROOT / ".run").mkdir(exist_ok=True)
    node = f"{name}-{os.getpid()}@%h"
    with open(ROOT / ".run" / f"{name}-worker.log", "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                ",".join(settings.VIGIL_QUEUES),
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "-n",
                node,
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    expected = node.replace("%h", os.uname().nodename)

    def answered() -> bool:
        if worker.poll() is not None:
            return True
        replies = celery_app.control.ping(timeout=0.5) or []
        return any(expected in reply for reply in replies)

    wait_for(answered, 60, f"worker {name} to answer ping")
    assert worker.poll() is None, f"worker {name} exited; see .run/{name}-worker.log"
    return worker


def worker_stop(worker: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Stop a worker: warm shutdown (it finishes its tasks), or SIGKILL when `kill`."""
    if kill:
        worker.kill()
    else:
        worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def workers_idle() -> bool:
    """No worker runs, holds or has scheduled (eta) a task: safe to flush the database."""
    inspect = celery_app.control.inspect(timeout=1.0)
    return not any(any((method() or {}).values()) for method in (inspect.active, inspect.reserved, inspect.scheduled))
