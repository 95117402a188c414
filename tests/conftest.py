from __future__ import annotations

from pathlib import Path

import pytest

from medfair_audit.data import PhantomConfig, build_phantom


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-image phantom data set shared by read-only tests."""
    out = tmp_path_factory.mktemp("phantom") / "data"
    build_phantom(out, PhantomConfig(n=60, seed=3, workers=1))
    return out
