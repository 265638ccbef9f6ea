"""Alembic is the only way the schema is made: `upgrade head` matches the models on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from store.engine import Database
from store.migrate import current_revision, head_revision, upgrade
from store.models import Base


async def test_upgrade_head_matches_models_and_is_repeatable(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert await current_revision(db) is None
        await upgrade(db)
        await upgrade(db)  # a second run is a no-op, not an error
        assert await current_revision(db) == head_revision()
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
            # full-text structures and expression indexes are made by migrations on purpose
            diff = [
                d
                for d in diff
                if not any(k in str(d) for k in ("fts", "search", "next_order", "report_"))
            ]
            assert diff == []
            counter = (
                await conn.execute(text("SELECT value FROM counters WHERE name = 'ticket'"))
            ).scalar_one()
            assert counter == 1000  # ticket numbers start at #1001
    finally:
        await db.dispose()


def test_head_constant_is_alembics_head() -> None:
    # The store is opened without importing Alembic; a new migration must bump the constant.
    from store.migrate import HEAD_REVISION, alembic_head

    assert alembic_head() == HEAD_REVISION
