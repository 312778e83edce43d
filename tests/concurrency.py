"""Run jobs in threads that start together, each on its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def run_concurrently(jobs: list[Callable[[], Any]]) -> list[BaseException]:
    """Start every job at once (a barrier), wait for all, and return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def worker(job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # collected and asserted on by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors
