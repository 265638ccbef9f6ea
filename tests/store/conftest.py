"""Store test fixtures: a migrated `Database` on each backend (built on `db_url`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from store.engine import Database
from store.migrate import upgrade


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A fresh database with the schema from Alembic (`upgrade head`), SQLite or PostgreSQL."""
    database = Database(db_url)
    await upgrade(database)
    yield database
    await database.dispose()
