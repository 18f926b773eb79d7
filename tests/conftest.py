"""Shared fixtures: the repository's site-configs and a writable copy to break on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "site-configs"


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    """A copy of site-configs/ under a path with a space and a quote in it."""
    target = tmp_path / "my 'site' configs"
    shutil.copytree(CONFIG_DIR, target)
    return target
