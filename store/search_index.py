"""Keeping the full-text index in step with tickets and articles.

Every write path (the service, bulk mail ingest, demo seeding) calls these functions in the
same transaction as the rows they index, so a search never sees a ticket without its text.
SQLite keeps FTS5 tables; PostgreSQL keeps generated tsvector columns, so most calls are
no-ops there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


class ArticleText(NamedTuple):
    """One article's searchable text."""

    ticket_id: int
    article_id: int
    body: str


async def index_ticket(
    session: AsyncSession, dialect: str, ticket_id: int, subject: str, *, replace: bool = False
) -> None:
    """Index a ticket's subject (`replace=True` when it changed)."""
    if dialect != "sqlite":
        return  # PostgreSQL keeps a generated tsvector column.
    if replace:
        await session.execute(text("DELETE FROM ticket_fts WHERE rowid = :id"), {"id": ticket_id})
    await session.execute(
        text("INSERT INTO ticket_fts(rowid, subject) VALUES (:id, :subject)"),
        {"id": ticket_id, "subject": subject},
    )


async def index_articles(session: AsyncSession, dialect: str, rows: Sequence[ArticleText]) -> None:
    """Index new articles' bodies (one executemany for the lot)."""
    if dialect != "sqlite":
        return
    params = [{"id": r.article_id, "body": r.body, "tid": r.ticket_id} for r in rows if r.body]
    if params:
        await session.execute(
            text("INSERT INTO article_fts(rowid, body, ticket_id) VALUES (:id, :body, :tid)"),
            params,
        )


async def move_articles(
    session: AsyncSession, dialect: str, src_ticket_id: int, dst_ticket_id: int
) -> None:
    """A merge moved every article of `src_ticket_id` into `dst_ticket_id`."""
    if dialect != "sqlite":
        return
    await session.execute(
        text("UPDATE article_fts SET ticket_id = :dst WHERE ticket_id = :src"),
        {"dst": dst_ticket_id, "src": src_ticket_id},
    )
