"""Kept apart from config.api: DRF imports the pagination class while its own views load."""

from __future__ import annotations

from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    """Stable pages over growing tables: new rows never shift a page already read."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 1000
