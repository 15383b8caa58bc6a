"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Converted weights are cached per test session, never in ~/.cache."""
    cache = os.environ.get("EDGEXFER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "edgexfer-cache")
    monkeypatch.setenv("EDGEXFER_CACHE", cache)
