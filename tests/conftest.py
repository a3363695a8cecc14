"""Shared test fixtures.

Reference data lives in ../shared/fixtures beside the checkout. It is present in CI and may be
absent in a user's clone: tests that need it skip there, but fail when the CI variable is set.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def require_shared(path: Path) -> Path:
    """Return ``path`` if it exists; skip outside CI, fail in CI."""
    if path.exists():
        return path
    msg = f"reference data not found: {path}"
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set, so ../shared must be present)")
    pytest.skip(msg)


@pytest.fixture
def ml4m_fixtures() -> Path:
    return require_shared(FIXTURES / "ml4m")
