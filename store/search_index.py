"""Keeping the full-text index in step with tickets and articles.

The index holds one search document per ticket: its subject plus the bodies of all its
articles (oldest first), in the ``ticket_search`` table. SQLite: an FTS5 table whose rowid
is the ticket id, columns ``subject`` and ``body``. PostgreSQL: ``ticket_search(ticket_id,
tsv)`` with a GIN index, the subject weighted 'A' and the bodies 'D'. A search for a common
word therefore reads one posting per ticket, never one per article, and needs no lookup to
find the ticket an article belongs to (see `store.query` for how queries use it).

FTS5 cannot append to a row, so a change rebuilds the ticket's document from the
``tickets`` and ``articles`` rows (delete + insert; the cost grows with the ticket's text:
measured about 1 ms for a usual ticket, 5 ms at 100 KiB of text, 27 ms at 500 KiB, on a
loaded 2-core machine). Rebuilding from the rows also means the index can never drift
from them, whatever path wrote the rows. Every write path (the service,
bulk mail ingest, demo seeding) calls these functions in the same transaction as the rows
they index, after those rows are flushed, so a search never sees a ticket without its text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "ARTICLE_SEPARATOR",
    "PG_DOCUMENT_SQL",
    "SQLITE_BODY_SQL",
    "ArticleText",
    "TicketDocument",
    "index_articles",
    "index_new_tickets",
    "index_ticket",
    "move_articles",
    "optimize",
    "reindex_tickets",
]

#: Between two articles' texts in a document (the same as the SQL below uses).
ARTICLE_SEPARATOR = "\n"

#: The body column of a ticket's SQLite document: its articles' texts, oldest first.
#: (Correlated on ``t.id``; the migration's backfill uses the same expression.)
SQLITE_BODY_SQL = (
    "coalesce((SELECT group_concat(body_text, char(10)) FROM "
    "(SELECT a.body_text FROM articles a WHERE a.ticket_id = t.id AND a.body_text <> '' "
    "ORDER BY a.created_at, a.id)), '')"
)
#: A ticket's PostgreSQL document (correlated on ``t.id``): subject 'A', bodies 'D'.
PG_DOCUMENT_SQL = (
    "setweight(to_tsvector('simple', coalesce(t.subject, '')), 'A') || "
    "to_tsvector('simple', coalesce((SELECT string_agg(a.body_text, E'\\n' "
    "ORDER BY a.created_at, a.id) FROM articles a WHERE a.ticket_id = t.id), ''))"
)
#: Tickets rebuilt per statement (keeps the IN list and the work per statement bounded).
_CHUNK = 500


class ArticleText(NamedTuple):
    """One article's searchable text."""

    ticket_id: int
    article_id: int
    body: str


class TicketDocument(NamedTuple):
    """A new ticket's whole searchable text, for bulk paths that have it at hand."""

    ticket_id: int
    subject: str
    #: The article bodies, oldest first, joined with `ARTICLE_SEPARATOR`.
    body: str


async def index_new_tickets(
    session: AsyncSession, dialect: str, docs: Sequence[TicketDocument]
) -> None:
    """Index tickets that have no document yet, from text in hand (one executemany).

    For bulk inserts (demo seeding, imports): no rows are read back. The text must be what
    `reindex_tickets` would build from the rows, or searches will disagree with it.
    """
    params = [{"id": d.ticket_id, "subject": d.subject, "body": d.body} for d in docs]
    if not params:
        return
    if dialect == "sqlite":
        sql = "INSERT INTO ticket_search(rowid, subject, body) VALUES (:id, :subject, :body)"
    else:
        sql = (
            "INSERT INTO ticket_search(ticket_id, tsv) VALUES (:id, "
            "setweight(to_tsvector('simple', :subject), 'A') || to_tsvector('simple', :body))"
        )
    await session.execute(text(sql), params)


async def optimize(session: AsyncSession, dialect: str) -> None:
    """Merge the SQLite index into one segment (after bulk loads; seconds at 1M tickets).

    Each new document adds a small segment that FTS5 merges later in steps; a probe for
    one ticket seeks once per segment, so searches for common words are 3-10x faster on
    a merged index. No-op on PostgreSQL (GIN merges its pending list itself).
    """
    if dialect == "sqlite":
        await session.execute(text("INSERT INTO ticket_search(ticket_search) VALUES ('optimize')"))


async def reindex_tickets(session: AsyncSession, dialect: str, ticket_ids: Iterable[int]) -> None:
    """Rebuild the search documents of `ticket_ids` from their current rows.

    The tickets' and articles' rows must be flushed in this transaction already. A
    ticket that has no row (deleted) loses its document.
    """
    ids = sorted(set(ticket_ids))
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        if dialect == "sqlite":
            await session.execute(
                text("DELETE FROM ticket_search WHERE rowid IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": chunk},
            )
            await session.execute(
                text(
                    "INSERT INTO ticket_search(rowid, subject, body) "
                    f"SELECT t.id, t.subject, {SQLITE_BODY_SQL} FROM tickets t WHERE t.id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": chunk},
            )
        else:
            await session.execute(
                text(
                    "INSERT INTO ticket_search(ticket_id, tsv) "
                    f"SELECT t.id, {PG_DOCUMENT_SQL} FROM tickets t WHERE t.id = ANY(:ids) "
                    "ON CONFLICT (ticket_id) DO UPDATE SET tsv = EXCLUDED.tsv"
                ),
                {"ids": chunk},
            )


async def index_ticket(
    session: AsyncSession, dialect: str, ticket_id: int, subject: str, *, replace: bool = False
) -> None:
    """Index a new ticket, or its new subject (`replace=True`); its articles stay indexed.

    `subject` must already be the ticket row's subject (flushed): the document is
    rebuilt from the row, so both calls do the same thing.
    """
    del subject, replace  # the document is rebuilt from the rows
    await reindex_tickets(session, dialect, [ticket_id])


async def index_articles(session: AsyncSession, dialect: str, rows: Sequence[ArticleText]) -> None:
    """Add new articles' bodies to their tickets' documents (one rebuild per ticket)."""
    await reindex_tickets(session, dialect, (r.ticket_id for r in rows if r.body))


async def move_articles(
    session: AsyncSession, dialect: str, src_ticket_id: int, dst_ticket_id: int
) -> None:
    """A merge moved every article of `src_ticket_id` into `dst_ticket_id` (rows updated)."""
    await reindex_tickets(session, dialect, [src_ticket_id, dst_ticket_id])
