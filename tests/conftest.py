"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The public datasets live next to the repository, never inside it.
SHARED_DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when the folder is absent (e.g. on CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real-data folder {SHARED_DATA} not found (expected ../shared/data next to the repository)"
        )
    return SHARED_DATA
