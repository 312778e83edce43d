from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from standardwebhooks import Webhook, WebhookVerificationError


class Command(BaseCommand):
    help = "A webhook receiver for the demo: verifies each notification's signature and prints it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--secret-file", required=True, help="The endpoint's whsec_ secret (demo_setup writes it).")

    def handle(self, *args: Any, port: int, secret_file: str, **options: Any) -> None:
        with open(secret_file) as fh:
            verifier = Webhook(fh.read().strip())
        out = self.stdout

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    message = verifier.verify(body, dict(self.headers.items()))
                except WebhookVerificationError as exc:
                    out.write(f"demo receiver: REFUSED {self.headers.get('webhook-id')}: {exc}")
                    self.send_response(401)
                else:
                    for alert in message.get("alerts", []):
                        summary = alert["annotations"].get("summary") or json.dumps(alert["labels"])
                        out.write(f"demo receiver: {alert['status']:<8} {summary}")
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.stdout.write(f"demo receiver: listening on http://127.0.0.1:{port}/hook")
        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
