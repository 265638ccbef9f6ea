"""Schema migrations (Alembic) driven programmatically: init, upgrade, check."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from store.engine import Database

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The newest migration shipped with this version, kept here so opening the store (the
#: console's cold start, every CLI command) need not import Alembic; a test checks that it
#: equals Alembic's head. Update it with every new migration.
HEAD_REVISION = "0007"


def alembic_config(url: str) -> AlembicConfig:
    """An Alembic config pointing at our migrations, without an alembic.ini."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def alembic_head() -> str:
    """The head revision as Alembic computes it from the migration scripts (slow import)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def head_revision() -> str:
    """The newest migration shipped with this version."""
    return HEAD_REVISION


_HAS_VERSION_TABLE = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'",
    "postgresql": "SELECT count(*) FROM pg_catalog.pg_tables "
    "WHERE tablename = 'alembic_version' AND schemaname = ANY (current_schemas(false))",
}


async def current_revision(db: Database) -> str | None:
    """The revision the database is at (None when it has no schema), read with plain SQL."""
    async with db.engine.connect() as conn:
        probe = _HAS_VERSION_TABLE.get(db.dialect)
        if probe is not None and not (await conn.execute(text(probe))).scalar_one():
            return None
        row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
        return None if row is None else str(row[0])


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to `revision`, running Alembic on our engine."""

    from alembic import command

    def _upgrade(conn: Connection) -> None:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _upgrade_blocking(db: Database) -> None:  # pragma: no cover - convenience for scripts
    asyncio.run(upgrade(db))
