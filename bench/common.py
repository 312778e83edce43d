"""What the benchmarks that start servers share: PostgreSQL on loopback, free ports, the CPU
time of a process, and a main that stops cleanly on SIGTERM and on --time-limit (SIGALRM)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

HOST = "127.0.0.1"
PG_ADMIN_DSN = f"host={HOST} port=5432 user=postgres dbname=postgres"


def database_reset(name: str, *, create: bool = True) -> None:
    """Drop the database `name` (even with sessions on it) and, unless told not to, re-create it."""
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            cursor.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through the `finally` blocks that stop what was started


def _timed_out(signum: int, frame: Any) -> None:
    raise TimeoutError("the benchmark exceeded --time-limit")


def run_main(main: Callable[[], int]) -> None:
    """Run `main` and exit with its status: 130 when interrupted (Ctrl-C, SIGTERM), 1 when
    --time-limit (an alarm `main` sets) went off."""
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGALRM, _timed_out)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except TimeoutError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
