"""Schema migrations (Alembic) driven programmatically: init, upgrade, check."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from store.engine import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> AlembicConfig:
    """An Alembic config pointing at our migrations, without an alembic.ini."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this version."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def current_revision(db: Database) -> str | None:
    """The revision the database is at (None when it has no schema)."""

    def _get(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with db.engine.connect() as conn:
        return await conn.run_sync(_get)


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to `revision`, running Alembic on our engine."""

    def _upgrade(conn: Connection) -> None:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _upgrade_blocking(db: Database) -> None:  # pragma: no cover - convenience for scripts
    asyncio.run(upgrade(db))
