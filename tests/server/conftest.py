from __future__ import annotations

import pytest


@pytest.fixture(params=["legacy", "auto"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol generations: 2025-era (initialize, resources/subscribe) and 2026 (listen)."""
    return request.param
