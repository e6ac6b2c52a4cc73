"""Fixtures of the end-to-end tests (the servers themselves are started in tests/conftest.py)."""
from __future__ import annotations

import pytest

from unifiedreward.clients import RewardClient


@pytest.fixture(scope="module")
def client(live_server):
    """The project's client on the live server, one per test module."""
    with RewardClient(live_server.base_url) as c:
        yield c
