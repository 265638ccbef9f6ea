"""Shared fixtures: a migrated store on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from store.engine import Database
from store.migrate import upgrade
from store.service import Service

pytest_plugins = ["tests.services.plugin"]


class FakeClock:
    """A controllable clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def service(db_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    """A migrated store (Alembic `upgrade head`) behind the service layer, on a fake clock."""
    db = Database(db_url)
    await upgrade(db)
    yield Service(db, clock=clock)
    await db.dispose()


@pytest.fixture(scope="session", autouse=True)
def cache_dir() -> Iterator[Path]:
    """The helpdesk cache (the unpacked language model) in a directory of this test run, not
    the user's; sync parse workers inherit it."""
    path = Path(tempfile.mkdtemp(prefix="helpdesk-test-cache-"))
    before = os.environ.get("HELPDESK_CACHE_DIR")
    os.environ["HELPDESK_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("HELPDESK_CACHE_DIR", None)
    else:
        os.environ["HELPDESK_CACHE_DIR"] = before
    shutil.rmtree(path, ignore_errors=True)
