"""Domain errors that services raise and the API renders (config.api.exception_handler)."""

from __future__ import annotations

from typing import Any


class Rejected(Exception):
    """A request refused as a whole: nothing was written.

    `details` lists every offending item (e.g. each bad point with its index and reason).
    """

    status_code = 400

    def __init__(self, code: str, message: str, details: list[dict[str, Any]] | None = None, status_code: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []
        self.status_code = status_code
