"""Shared fixtures: a private Redis per test session, peers started on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.router_proc import RedisServer


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private Redis for the whole run (starting one per test would be slow)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The private Redis, emptied: no queue, retry or delivery record of an earlier test."""
    redis_session.client().flushall()
    return redis_session


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
