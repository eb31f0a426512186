"""The engine's own tests switch it on, whatever DEBATE_LIGHTNING_ACCEL says for the rest of the suite."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def accel_on(monkeypatch):
    monkeypatch.setenv("DEBATE_LIGHTNING_ACCEL", "1")
