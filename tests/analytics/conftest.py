from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def late_data_allowed(settings: Any) -> None:
    """A lateness window that admits late points into rolled-up hours days back, for tests
    that write them on purpose (tests/analytics/test_lateness.py covers the refusal beyond it)."""
    settings.VIGIL_ROLLUP_LATENESS_SECONDS = 400 * 86400
