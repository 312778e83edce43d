"""`make run`: Vigil on one machine — migrate, demo tenant, then web + worker + beat + demo stream.

Runs on SQLite and kombu's filesystem broker (no servers needed) unless DATABASE_URL /
CELERY_BROKER_URL say otherwise. Ctrl-C stops every process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
PORT = os.environ.get("VIGIL_PORT", "8000")
RECEIVER_PORT = os.environ.get("VIGIL_DEMO_RECEIVER_PORT", "8001")
PY = sys.executable
QUEUES = "ingest,rollup,detect,train,drift,alerts,webhooks"


def manage(*args: str) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, check=True)


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    RUN_DIR.mkdir(exist_ok=True)
    key_file, secret_file = RUN_DIR / "demo-key", RUN_DIR / "demo-webhook-secret"
    receiver = f"http://127.0.0.1:{RECEIVER_PORT}/hook"
    manage("migrate", "--no-input", "-v", "0")
    manage("sync_periodic_tasks")
    manage("demo_setup", "--key-file", str(key_file), "--receiver-url", receiver, "--secret-file", str(secret_file))

    celery = [PY, "-m", "celery", "-A", "config"]
    commands = {
        "web": [PY, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload"],
        # Threads, not prefork: the filesystem broker and SQLite are happiest in one process.
        "worker": [*celery, "worker", "-Q", QUEUES, "--pool", "threads", "--concurrency", "4", "--loglevel", "INFO"],
        "beat": [*celery, "beat", "--loglevel", "INFO", "--schedule", str(RUN_DIR / "celerybeat-schedule")],
        "demo": [PY, "manage.py", "demo_stream", "--url", f"http://127.0.0.1:{PORT}", "--key-file", str(key_file)],
        "receiver": [PY, "manage.py", "demo_receiver", "--port", RECEIVER_PORT, "--secret-file", str(secret_file)],
    }
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, start_new_session=True) for name, cmd in commands.items()}
    print(f"\nVigil is up: http://127.0.0.1:{PORT}/api/v1/docs  admin: http://127.0.0.1:{PORT}/admin/ (admin/admin)")
    print(f"The demo tenant's alerts are posted, signed, to the demo receiver at {receiver}.")
    print("Ctrl-C stops web, worker, beat, the demo stream and the receiver.\n", flush=True)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping the others", file=sys.stderr)
                    exit_code = 1
                    raise KeyboardInterrupt
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C or TERM (make and this script are often signalled together) must not
        # cut the clean-up short and leave some of the processes running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
