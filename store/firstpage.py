"""The console's first screenful on SQLite, read with the standard library before SQLAlchemy loads.

Why: the console's cold start (issue 3, target 0.5 s to the painted queue) cannot afford to
import SQLAlchemy's ORM (about 0.3 s) before the first frame. `helpdesk_tui.boot` therefore
opens a SQLite store read-only with `sqlite3`, checks the schema revision and the agent, and
reads the first page of the console's default view ("My tickets": `FIRST_VIEW_QUERY` in the
`FIRST_VIEW_ORDER` order) here; the console paints those rows while the store layer loads in
the background, and from then on every page comes from `store.listing` as usual.

This module is the one place where that page's SQL is written by hand. It must return
exactly what `store.listing.list_page` returns for that view's first page (same rows, same
order, same fields); `tests/store/test_firstpage.py` pins the two together on a store with
ties in every sort key. It imports nothing but the standard library (never SQLAlchemy, never
Textual). Anything unexpected (not SQLite, no file, an old schema, an unknown or disabled
agent, any SQLite error) returns None, and the caller takes the normal path, which reports
the problem with its usual message.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from store.labels import DEFAULT_LABELS
from store.revision import head_revision
from store.rows import TicketRow

#: The view and order the console opens on (the queue screen's first built-in view).
FIRST_VIEW_QUERY = "assignee:me is:active"
FIRST_VIEW_ORDER = "next"

#: `is:active` (store.models.ACTIVE_STATUSES) as SQL, in the order store.query emits it.
_ACTIVE_SQL = "('answered', 'new', 'on-hold', 'open', 'pending', 'postponed')"
#: NULLs last in the "next" order: the literal store.listing uses (so its indexes match).
_FAR = "'9999-12-31 23:59:59.999999'"
_NEXT_ORDER = (
    f"-tickets.priority, coalesce(tickets.next_due_at, {_FAR}), "
    f"coalesce(tickets.last_customer_at, {_FAR}), tickets.id"
)
_TAG_SEPARATOR = "\x1f"

#: Two plans for one result. The sort reads every active ticket of the agent from the table
#: and sorts them (store.listing's plan: cost ~ how many they have, 0.5 s for 59k on the 1M
#: bench store). The walk takes the agent's active ticket ids from a covering index, then
#: walks the "next"-order index and keeps those ids until the page is full (no table reads;
#: it stops after about `limit * all tickets / theirs` entries). An agent with tens of
#: thousands of tickets wants the walk, one with a few hundred the sort.
_PAGE_SQL = """
SELECT tickets.id, tickets.number, tickets.subject, tickets.status, tickets.priority,
       agents.login, agents.name, customers.name, customers.email, queues.name,
       tickets.updated_at, tickets.created_at, tickets.next_due_at, tickets.postponed_until,
       tickets.last_customer_at,
       (SELECT group_concat(tags.name, char(31)) FROM ticket_tags
          JOIN tags ON tags.id = ticket_tags.tag_id
         WHERE ticket_tags.ticket_id = tickets.id),
       tickets.version
  FROM (SELECT tickets.id AS page_id FROM tickets {source}
         ORDER BY {order} LIMIT ?) AS page
  JOIN tickets ON tickets.id = page.page_id
  LEFT OUTER JOIN agents ON agents.id = tickets.assignee_id
  LEFT OUTER JOIN customers ON customers.id = tickets.customer_id
  LEFT OUTER JOIN queues ON queues.id = tickets.queue_id
 ORDER BY {order}
"""
_SORT_SQL = _PAGE_SQL.format(
    source=f"WHERE tickets.status IN {_ACTIVE_SQL} AND tickets.assignee_id = ?",
    order=_NEXT_ORDER,
)
_WALK_SQL = _PAGE_SQL.format(
    source="INDEXED BY ix_tickets_next_order_all WHERE tickets.id IN (SELECT mine.id FROM "
    f"tickets AS mine WHERE mine.assignee_id = ? AND mine.status IN {_ACTIVE_SQL})",
    order=_NEXT_ORDER,
)
_MINE_SQL = f"SELECT count(*) FROM tickets WHERE assignee_id = ? AND status IN {_ACTIVE_SQL}"
#: The walk gives up after this long (tickets skewed against its estimate) and the sort runs.
WALK_BUDGET_S = 0.5
#: SQLite VM steps between two looks at the clock during the walk.
_CLOCK_STEPS = 1000


@dataclass(frozen=True)
class AgentInfo:
    """The agent at the console, as far as painting the first page needs it."""

    id: int
    login: str
    name: str
    role: str


@dataclass(frozen=True)
class FirstPage:
    """The default view's first page; `more` when tickets follow it."""

    rows: tuple[TicketRow, ...]
    more: bool
    query: str = FIRST_VIEW_QUERY
    order: str = FIRST_VIEW_ORDER


@dataclass(frozen=True)
class FastStart:
    """What the console needs for its first frame: the store's file, the agent, the rows."""

    url: str
    path: Path
    me: AgentInfo
    page: FirstPage
    #: Display label per status, as `Service.status_labels()` gives them (the list shows them).
    labels: dict[str, str]


def sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite URL as `store.config.normalise_db_url` writes it, else None.

    Only the simple form is handled (no query string, no escapes); anything else goes the
    normal way.
    """
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return None
    name = url[len(prefix) :]
    if not name or name == ":memory:" or any(c in name for c in "?%#"):
        return None
    return Path(name)


def read_fast_start(url: str, login: str, limit: int) -> FastStart | None:
    """Schema check, agent and first page of `login`'s default view, or None (see module)."""
    path = sqlite_file(url)
    if path is None or not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA query_only = ON")
        head = head_revision()
        if head is None or _revision(conn) != head:
            return None
        me = _agent(conn, login)
        if me is None:
            return None
        return FastStart(url, path, me, first_page(conn, me.id, limit), status_labels(conn))
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _revision(conn: sqlite3.Connection) -> str | None:
    has_table = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone()[0]
    if not has_table:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def _agent(conn: sqlite3.Connection, login: str) -> AgentInfo | None:
    row = conn.execute(
        "SELECT id, login, name, role, active FROM agents WHERE login = ?", (login,)
    ).fetchone()
    if row is None or not row[4]:
        return None
    return AgentInfo(int(row[0]), str(row[1]), str(row[2]), str(row[3]))


def status_labels(conn: sqlite3.Connection) -> dict[str, str]:
    """The team's status labels (`Service.status_labels()` without a language)."""
    labels = dict(DEFAULT_LABELS)
    row = conn.execute("SELECT value FROM settings WHERE key = 'status_labels'").fetchone()
    stored = json.loads(row[0]) if row is not None and row[0] is not None else None
    if isinstance(stored, dict) and isinstance(stored.get("default"), dict):
        labels.update(stored["default"])
    return labels


def first_page(conn: sqlite3.Connection, agent_id: int, limit: int) -> FirstPage:
    """The first `limit` rows of `FIRST_VIEW_QUERY` for the agent, in `FIRST_VIEW_ORDER`."""
    mine = conn.execute(_MINE_SQL, (agent_id,)).fetchone()[0]
    everyone = conn.execute("SELECT max(id) FROM tickets").fetchone()[0] or 0
    rows: list[tuple[Any, ...]] | None = None
    if mine * mine > limit * everyone:
        rows = _walk(conn, agent_id, limit + 1)
    if rows is None:
        rows = conn.execute(_SORT_SQL, (agent_id, limit + 1)).fetchall()
    return FirstPage(tuple(_row(r) for r in rows[:limit]), len(rows) > limit)


def _walk(conn: sqlite3.Connection, agent_id: int, limit: int) -> list[tuple[Any, ...]] | None:
    """The index walk, abandoned (None) when it runs over `WALK_BUDGET_S`."""
    deadline = time.monotonic() + WALK_BUDGET_S
    conn.set_progress_handler(lambda: time.monotonic() > deadline, _CLOCK_STEPS)
    try:
        return conn.execute(_WALK_SQL, (agent_id, limit)).fetchall()
    except sqlite3.OperationalError:
        return None  # interrupted, or the index is missing: the sort is always right
    finally:
        conn.set_progress_handler(None, 0)


def _when(value: object) -> datetime | None:
    """SQLite keeps UTC datetimes as naive ISO text (store.models.UTCDateTime)."""
    if value is None:
        return None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _row(r: tuple[Any, ...]) -> TicketRow:
    (id_, number, subject, status, priority, a_login, a_name, c_name, c_email, queue) = r[:10]
    tags = r[15]
    return TicketRow(
        id=id_,
        number=number,
        subject=subject,
        status=status,
        priority=priority,
        assignee_login=a_login,
        assignee_name=a_name,
        customer_name=c_name,
        customer_email=c_email,
        queue_name=queue,
        updated_at=_when(r[10]) or _missing("updated_at"),
        created_at=_when(r[11]) or _missing("created_at"),
        next_due_at=_when(r[12]),
        postponed_until=_when(r[13]),
        last_customer_at=_when(r[14]),
        tags=tuple(sorted(tags.split(_TAG_SEPARATOR))) if tags else (),
        version=r[16],
    )


def _missing(column: str) -> datetime:
    raise sqlite3.DataError(f"tickets.{column} is NULL")
