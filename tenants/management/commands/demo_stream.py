from __future__ import annotations

import json
import math
import random
import time
import urllib.error
import urllib.request
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

NODES = ["web-1", "web-2", "db-1"]
METRICS = {
    "cpu.usage": ("percent", 35.0, 20.0),
    "http.latency.p99": ("ms", 180.0, 60.0),
    "http.errors": ("count", 2.0, 1.5),
}


class Command(BaseCommand):
    help = "Stream demo points to a running Vigil over HTTP: a daily cycle, noise, and a spike now and then."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--key-file", required=True)
        parser.add_argument("--interval", type=float, default=10.0, help="Seconds between batches.")
        parser.add_argument(
            "--backfill-minutes",
            type=int,
            default=60,
            help="History sent first, so the detectors are past their warm-up when streaming starts.",
        )

    def handle(
        self, *args: Any, url: str, key_file: str, interval: float, backfill_minutes: int, **options: Any
    ) -> None:
        with open(key_file) as fh:
            key = fh.read().strip()
        rng = random.Random()
        self.wait_for_web(url)
        start = time.time()
        history = [start - backfill_minutes * 60 + i * interval for i in range(int(backfill_minutes * 60 / interval))]
        for first in range(0, len(history), 100):  # 100 instants of every series a request
            self.send(url, key, [p for t in history[first : first + 100] for p in self.points(t, rng)])
        while True:
            self.send(url, key, self.points(time.time(), rng))
            time.sleep(interval)

    def points(self, now: float, rng: random.Random) -> list[dict[str, Any]]:
        phase = math.sin(2 * math.pi * (now % 86400) / 86400)
        points = []
        for node in NODES:
            for metric, (unit, base, amplitude) in METRICS.items():
                value = max(0.0, base + amplitude * phase + rng.gauss(0, amplitude / 10))
                if rng.random() < 0.01:
                    value *= 4  # an anomaly for the detectors to find
                points.append(
                    {
                        "cluster": "demo",
                        "node": node,
                        "metric": metric,
                        "unit": unit,
                        "labels": {"env": "demo"},
                        "timestamp": now,
                        "value": round(value, 3),
                    }
                )
        return points

    def send(self, url: str, key: str, points: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            f"{url}/api/v1/points",
            data=json.dumps({"points": points}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self.stdout.write(f"demo stream: {response.read().decode()}")
        except (urllib.error.URLError, OSError) as exc:  # the web server is still starting
            self.stderr.write(f"demo stream: {exc}")

    def wait_for_web(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
