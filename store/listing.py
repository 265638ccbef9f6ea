"""Sortable, keyset-paged ticket lists (no OFFSET), for the console, the CLI and views.

A page is one SELECT over ``tickets`` with outer joins to its agent, customer and queue
(many-to-one, so no row is duplicated), filtered by a WHERE from `store.query`, ordered
by one of `ORDERS` and cut after the last row of the previous page by comparing the
sort key as a row value: ``(updated_at, id) < (:u, :i)``. Pages therefore cost the same
at the start and at the end of a million tickets, and rows inserted meanwhile never
shift a page. Cursors are opaque strings (URL-safe base64 of JSON holding the sort key
of the boundary row).

The ``relevance`` order (full-text queries only) is the exception: its scores are
computed per query, so it pages by OFFSET (its cursor holds the offset).

On SQLite a page of a large result in the ``next`` order filtered by agent, queue or
customer walks the order's own index (`_window_rows`, `_walk_helps`): SQLite's planner
otherwise reads the matches through the filter's index and sorts every one of them to keep
100 ("My tickets" of 59k on a million tickets: 0.16 s at either end). Walking the order's
index stops after a page of matches; it is cut in windows of index entries so a skewed
result (matches far away) falls back to the planner.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Subquery,
    func,
    literal,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import Exists, ScalarSelect, SelectBase

from store.models import Agent, Customer, Queue, Tag, Ticket, TicketTag, UTCDateTime
from store.query import plan_search
from store.rows import TicketRow

if TYPE_CHECKING:
    _AnySelect = Select[*tuple[Any, ...]]

__all__ = [
    "ORDERS",
    "CursorError",
    "Page",
    "TicketRow",
    "count",
    "last_page",
    "list_page",
]

#: The orders a list can have, with the explanation shown in the console's `?` help.
ORDERS: dict[str, str] = {
    "updated": "recently changed first (updated time, newest first) - the default",
    "created": "newest tickets first (created time)",
    "number": "by ticket number, lowest (oldest) first",
    "next": (
        "what to do next: highest priority first, then the nearest SLA due time, then the "
        "customer who has waited longest since writing; tickets without a due time or "
        "without a waiting customer come after those with one"
    ),
    "relevance": (
        "best full-text match first (only for queries with search words; subject matches "
        "count double)"
    ),
}
DEFAULT_ORDER = "updated"

#: Stand-ins for NULL in the "next" order, so NULLs sort last and compare in row values.
#: Rendered as SQL literals (never bound) so an expression index can match the ORDER BY:
#: SQLite keeps datetimes as ISO text ("2026-11-23 09:00:00.000000"), PostgreSQL has
#: 'infinity'.
SQLITE_FAR_FUTURE = "'9999-12-31 23:59:59.999999'"
PG_FAR_FUTURE = "'infinity'::timestamptz"


class CursorError(ValueError):
    """A cursor that is not one of ours (or belongs to another order)."""


@dataclass
class Page:
    """One page of a list; pass a cursor back as `after` / `before` to move."""

    rows: list[TicketRow]
    next_cursor: str | None
    prev_cursor: str | None


# --- orders -----------------------------------------------------------------------------


def _far_future(dialect: str) -> ColumnElement[datetime]:
    text = SQLITE_FAR_FUTURE if dialect == "sqlite" else PG_FAR_FUTURE
    return literal_column(text, type_=UTCDateTime())


@dataclass(frozen=True)
class _Order:
    """A keyset order: key expressions all sorted one way, and how to read/bind its key."""

    name: str
    descending: bool
    #: Value types of the key, for cursor decoding: "int", "dt" or "dt?" (may be None).
    types: tuple[str, ...]

    def keys(self, dialect: str, t: Any = None) -> list[ColumnElement[Any]]:
        """The key expressions over `t` (``tickets`` or a Core alias of it)."""
        c = (Ticket.__table__ if t is None else t).c
        if self.name == "updated":
            return [c.updated_at, c.id]
        if self.name == "created":
            return [c.created_at, c.id]
        if self.name == "number":
            return [c.number]
        far = _far_future(dialect)
        return [
            -c.priority,
            func.coalesce(c.next_due_at, far),
            func.coalesce(c.last_customer_at, far),
            c.id,
        ]

    def columns(self, t: Any) -> list[ColumnElement[Any]]:
        """The columns of `t` a key is made of (read one key without a page; `values_at`)."""
        c = t.c
        if self.name == "updated":
            return [c.updated_at, c.id]
        if self.name == "created":
            return [c.created_at, c.id]
        if self.name == "number":
            return [c.number]
        return [c.priority, c.next_due_at, c.last_customer_at, c.id]

    def values_at(self, row: Row[Any]) -> list[Any]:
        """The key of a row of `columns` (in that order)."""
        return list(row)

    def values(self, row: Row[Any]) -> list[Any]:
        m = row._mapping
        if self.name == "updated":
            return [m["updated_at"], m["id"]]
        if self.name == "created":
            return [m["created_at"], m["id"]]
        if self.name == "number":
            return [m["number"]]
        return [m["priority"], m["next_due_at"], m["last_customer_at"], m["id"]]

    def binds(self, values: Sequence[Any], dialect: str) -> list[ColumnElement[Any]]:
        out: list[ColumnElement[Any]] = []
        for i, (kind, value) in enumerate(zip(self.types, values, strict=True)):
            if self.name == "next" and i == 0:
                out.append(literal(-int(value)))
            elif kind == "int":
                out.append(literal(int(value)))
            elif value is None:
                out.append(_far_future(dialect))
            else:
                out.append(literal(value, type_=UTCDateTime()))
        return out


_ORDERS: dict[str, _Order] = {
    "updated": _Order("updated", True, ("dt", "int")),
    "created": _Order("created", True, ("dt", "int")),
    "number": _Order("number", False, ("int",)),
    "next": _Order("next", False, ("int", "dt?", "dt?", "int")),
}


# --- cursors ----------------------------------------------------------------------------


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, order: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise CursorError("not a list cursor") from exc
    if not isinstance(payload, dict) or payload.get("o") != order:
        raise CursorError(f"this cursor is not for the {order!r} order")
    return payload


def _key_cursor(order: _Order, values: Sequence[Any]) -> str:
    key = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return _encode({"o": order.name, "k": key})


def _key_from_cursor(order: _Order, cursor: str) -> list[Any]:
    key = _decode(cursor, order.name).get("k")
    if not isinstance(key, list) or len(key) != len(order.types):
        raise CursorError("malformed list cursor")
    out: list[Any] = []
    for kind, value in zip(order.types, key, strict=True):
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise CursorError("malformed list cursor")
            out.append(value)
        elif value is None and kind == "dt?":
            out.append(None)
        else:
            try:
                moment = datetime.fromisoformat(value) if isinstance(value, str) else None
            except ValueError:
                moment = None
            if moment is None or moment.tzinfo is None:
                raise CursorError("malformed list cursor")
            out.append(moment)
    return out


def _offset_cursor(offset: int) -> str:
    return _encode({"o": "relevance", "off": offset})


def _offset_from_cursor(cursor: str) -> int:
    offset = _decode(cursor, "relevance").get("off")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise CursorError("malformed list cursor")
    return offset


# --- queries ----------------------------------------------------------------------------


TAG_SEPARATOR = "\x1f"


def _tags_column(dialect: str) -> ColumnElement[str | None]:
    """The ticket's tag names in one string (a correlated aggregate, run per page row)."""
    agg = (
        func.group_concat(Tag.name, TAG_SEPARATOR)
        if dialect == "sqlite"
        else func.string_agg(Tag.name, TAG_SEPARATOR)
    )
    return (
        select(agg)
        .select_from(TicketTag)
        .join(Tag, Tag.id == TicketTag.tag_id)
        .where(TicketTag.ticket_id == Ticket.id)
        .scalar_subquery()
        .label("tags")
    )


def _page_rows(page: Subquery, dialect: str) -> _AnySelect:
    """The displayed columns for the tickets in `page` (a subquery of ``page_id``s).

    Filtering, sorting and LIMIT happen in `page` on ``tickets`` alone (often from an
    index, without touching the table); only the page's rows are then joined.
    """
    return (
        select(
            Ticket.id,
            Ticket.number,
            Ticket.subject,
            Ticket.status,
            Ticket.priority,
            Agent.login.label("assignee_login"),
            Agent.name.label("assignee_name"),
            Customer.name.label("customer_name"),
            Customer.email.label("customer_email"),
            Queue.name.label("queue_name"),
            Ticket.updated_at,
            Ticket.created_at,
            Ticket.next_due_at,
            Ticket.postponed_until,
            Ticket.last_customer_at,
            _tags_column(dialect),
        )
        .select_from(page)
        .join(Ticket, Ticket.id == page.c.page_id)
        .outerjoin(Agent, Agent.id == Ticket.assignee_id)
        .outerjoin(Customer, Customer.id == Ticket.customer_id)
        .outerjoin(Queue, Queue.id == Ticket.queue_id)
    )


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _keyset_select(
    where: ColumnElement[bool],
    order: _Order,
    dialect: str,
    *,
    cursor_key: Sequence[Any] | None,
    backward: bool,
    limit: int,
) -> _AnySelect:
    keys = order.keys(dialect)
    # Walking forward in a descending order (or backward in an ascending one) goes down.
    downward = order.descending != backward
    page = select(Ticket.id.label("page_id")).where(where)
    if cursor_key is not None:
        binds = order.binds(cursor_key, dialect)
        if len(keys) == 1:
            page = page.where(keys[0] < binds[0] if downward else keys[0] > binds[0])
        else:
            lhs, rhs = tuple_(*keys), tuple_(*binds)
            page = page.where(lhs < rhs if downward else lhs > rhs)
            # Redundant, but SQLite only seeks an index by a row value's first item when
            # it is a plain column: this bound lets it seek on an expression (-priority).
            page = page.where(keys[0] <= binds[0] if downward else keys[0] >= binds[0])
    ordering = [k.desc() if downward else k.asc() for k in keys]
    inner = page.order_by(*ordering).limit(limit).subquery("page")
    return _page_rows(inner, dialect).order_by(*ordering)


# --- SQLite: walking the order's index --------------------------------------------------

#: Results with fewer matches than this are left to SQLite's planner (sorting them is cheap).
SMALL_RESULT = 2000
#: Index entries in the first window; each next one is twice as large, up to `MAX_WINDOW`
#: (SQLite reads a whole window's rows before it sorts and cuts the page).
FIRST_WINDOW = 1024
MAX_WINDOW = 8192
#: Index entries walked (each costs a table row read) before handing over to the planner.
WINDOW_BUDGET = 1 << 17


def _unindexed(where: ColumnElement[bool]) -> ColumnElement[bool]:
    """`where` with its ``tickets`` columns written ``+tickets.col`` (SQLite: no index).

    Only the window's join on the id is then indexable, so SQLite reads the window's rows
    and checks the filter on each. Subqueries are left alone (they have their own FROM).
    """
    table = Ticket.__table__
    name = Ticket.__tablename__

    def replace(element: Any, **_kw: Any) -> Any:
        if isinstance(element, (SelectBase, ScalarSelect, Exists)):
            return element
        if isinstance(element, ColumnClause) and element.table is table:
            return literal_column(f"+{name}.{element.name}", type_=element.type)
        return None

    return cast("ColumnElement[bool]", visitors.replacement_traverse(where, {}, replace))


def _seeks(
    order: _Order, dialect: str, t: Any, key: Sequence[Any] | None, downward: bool
) -> list[tuple[list[ColumnElement[bool]], int]]:
    """The index ranges past `key`, in walking order, each one SQLite can seek exactly.

    A row value over expressions (``(-priority, coalesce(...), ...) > (...)``) only seeks
    by its first item in SQLite; the rest is checked row by row (a table read each, deep
    into a priority). Spelled out lexicographically, every range is equalities on a
    prefix of the key and one strict bound on the next item: an exact seek. Each comes with
    the length of its prefix: SQLite sorts unless the ORDER BY leaves those items out.
    """
    if key is None:
        return [([], 0)]
    keys = order.keys(dialect, t)
    binds = order.binds(key, dialect)
    out = []
    for i in reversed(range(len(keys))):
        prefix = [keys[j] == binds[j] for j in range(i)]
        out.append(([*prefix, keys[i] < binds[i] if downward else keys[i] > binds[i]], i))
    return out


#: Filter columns with an index of their own: SQLite reads the matches through it and sorts
#: them all, instead of walking the order's index.
_SORTING_FILTERS = frozenset({"assignee_id", "queue_id", "customer_id", "organization_id"})


def _walk_helps(order: _Order, where: ColumnElement[bool]) -> bool:
    """Whether walking the order's index beats SQLite's own plan (measured on 1M tickets).

    Only for the ``next`` order (a row value over expressions does not seek, so SQLite's
    plan also reads a priority's rows up to the cursor), and only when `where` filters on
    a column of `_SORTING_FILTERS` without subqueries. A status-only filter (``is:active``)
    already gets an index that starts with the status and goes on in the order; tags and
    full-text words come with their own narrower plans.
    """
    if order.name != "next":
        return False
    table = Ticket.__table__
    names: set[str] = set()
    stack: list[Any] = [where]
    while stack:
        element = stack.pop()
        if isinstance(element, (SelectBase, ScalarSelect, Exists)):
            return False
        if isinstance(element, ColumnClause) and element.table is table:
            names.add(element.name)
        stack.extend(element.get_children())
    return bool(names & _SORTING_FILTERS)


async def _many(session: AsyncSession, where: ColumnElement[bool]) -> bool:
    matching = select(Ticket.id).where(where).limit(SMALL_RESULT).subquery()
    found = (await session.execute(select(func.count()).select_from(matching))).scalar_one()
    return int(found) >= SMALL_RESULT


async def _keyset_rows(
    session: AsyncSession,
    where: ColumnElement[bool],
    order: _Order,
    *,
    cursor_key: Sequence[Any] | None,
    backward: bool,
    limit: int,
) -> list[Row[Any]]:
    """Up to `limit` rows past `cursor_key`, in walking order (the page query)."""
    dialect = _dialect(session)
    if dialect != "sqlite" or not _walk_helps(order, where) or not await _many(session, where):
        stmt = _keyset_select(
            where, order, dialect, cursor_key=cursor_key, backward=backward, limit=limit
        )
        return await _rows(session, stmt)
    return await _window_rows(session, where, order, cursor_key, backward, limit)


async def _window_rows(
    session: AsyncSession,
    where: ColumnElement[bool],
    order: _Order,
    cursor_key: Sequence[Any] | None,
    backward: bool,
    limit: int,
) -> list[Row[Any]]:
    """Walk the order's index in windows of entries, keeping matches, until a page is full.

    A window is the next `size` entries of one seek range (read from the index alone);
    its rows are joined to ``tickets`` and filtered. Past `WINDOW_BUDGET` entries the
    matches are sparse, and the planner's own plan sorts the rest.
    """
    dialect = _dialect(session)
    downward = order.descending != backward
    walk = _unindexed(where)
    w = Ticket.__table__.alias("w")
    wkeys = order.keys(dialect, w)
    wordering = [k.desc() if downward else k.asc() for k in wkeys]
    ordering = [k.desc() if downward else k.asc() for k in order.keys(dialect)]
    rows: list[Row[Any]] = []
    key = cursor_key
    size, walked = FIRST_WINDOW, 0
    while walked < WINDOW_BUDGET:
        moved = False
        for seek, fixed in _seeks(order, dialect, w, key, downward):
            window = select(w.c.id.label("wid")).where(*seek).order_by(*wordering[fixed:])
            win = window.limit(size).subquery("win")
            page = (
                select(win.c.wid.label("page_id"))
                .join(Ticket, Ticket.id == win.c.wid)
                .where(walk)
                .order_by(*ordering)
                .limit(limit - len(rows))
                .subquery("page")
            )
            rows += await _rows(session, _page_rows(page, dialect).order_by(*ordering))
            if len(rows) >= limit:
                return rows
            walked += size
            last = select(*[c.label(f"k{i}") for i, c in enumerate(order.columns(w))])
            last = last.where(*seek).order_by(*wordering[fixed:]).offset(size - 1).limit(1)
            end = (await session.execute(last)).first()
            if end is not None:  # this range goes on past the window: walk on from its end
                key, size, moved = order.values_at(end), min(size * 2, MAX_WINDOW), True
                break
        if not moved:
            return rows  # every range ended inside its window: the index is done
    # Matches are sparse past here: the planner's own plan sorts the rest.
    stmt = _keyset_select(
        where, order, dialect, cursor_key=key, backward=backward, limit=limit - len(rows)
    )
    return rows + await _rows(session, stmt)


async def _rows(session: AsyncSession, stmt: _AnySelect) -> list[Row[Any]]:
    return list((await session.execute(stmt)).all())


def _ticket_rows(rows: Sequence[Row[Any]]) -> list[TicketRow]:
    out = []
    for r in rows:
        fields = dict(r._mapping)
        tags = fields.pop("tags", None)
        fields.pop("score", None)
        out.append(
            TicketRow(**fields, tags=tuple(sorted(tags.split(TAG_SEPARATOR))) if tags else ())
        )
    return out


def _check(limit: int, after: str | None, before: str | None, order: str) -> None:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if after is not None and before is not None:
        raise ValueError("give after or before, not both")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; one of: {', '.join(ORDERS)}")


async def list_page(
    session: AsyncSession,
    where: ColumnElement[bool],
    *,
    order: str = DEFAULT_ORDER,
    after: str | None = None,
    before: str | None = None,
    limit: int = 50,
    rank: Subquery | None = None,
) -> Page:
    """One page of tickets matching `where`, in `order`.

    No cursor: the first page. `after`: the page following a page's `next_cursor`.
    `before`: the page preceding a page's `prev_cursor`; when fewer than `limit` rows
    precede it, the first page is returned instead (so a page is always full when it
    can be). ``order="relevance"`` needs `rank` (`store.query.rank_subquery`).
    `prev_cursor` is None only on the first page; `next_cursor` None on the last.
    Full-text conditions in `where` get the SQL form `store.query.plan_search` picks.
    """
    _check(limit, after, before, order)
    if order == "relevance":
        return await _relevance_page(session, where, rank, after, before, limit)
    return await _list_page(session, await plan_search(session, where), order, after, before, limit)


async def _list_page(
    session: AsyncSession,
    where: ColumnElement[bool],
    order: str,
    after: str | None,
    before: str | None,
    limit: int,
) -> Page:
    spec = _ORDERS[order]
    if before is not None:
        before_key = _key_from_cursor(spec, before)
        rows = await _keyset_rows(
            session, where, spec, cursor_key=before_key, backward=True, limit=limit + 1
        )
        if len(rows) <= limit:
            return await _list_page(session, where, order, None, None, limit)
        rows = rows[:limit][::-1]
        return Page(
            _ticket_rows(rows),
            _key_cursor(spec, spec.values(rows[-1])),
            _key_cursor(spec, spec.values(rows[0])),
        )
    key = _key_from_cursor(spec, after) if after is not None else None
    rows = await _keyset_rows(session, where, spec, cursor_key=key, backward=False, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        _ticket_rows(rows),
        _key_cursor(spec, spec.values(rows[-1])) if more else None,
        _key_cursor(spec, spec.values(rows[0])) if key is not None and rows else None,
    )


async def last_page(
    session: AsyncSession,
    where: ColumnElement[bool],
    *,
    order: str = DEFAULT_ORDER,
    limit: int = 50,
    rank: Subquery | None = None,
) -> Page:
    """The final page (the console's ``G``): the order reversed, `limit` rows, reversed back."""
    _check(limit, None, None, order)
    if order == "relevance":
        total = await count(session, where)
        return await _relevance_page(
            session, where, rank, _offset_cursor(max(0, total - limit)), None, limit
        )
    spec = _ORDERS[order]
    where = await plan_search(session, where)
    rows = await _keyset_rows(session, where, spec, cursor_key=None, backward=True, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit][::-1]
    return Page(
        _ticket_rows(rows),
        None,
        _key_cursor(spec, spec.values(rows[0])) if more else None,
    )


async def _relevance_page(
    session: AsyncSession,
    where: ColumnElement[bool],
    rank: Subquery | None,
    after: str | None,
    before: str | None,
    limit: int,
) -> Page:
    if rank is None:
        raise ValueError("the relevance order needs search words (rank_subquery gave None)")
    if before is not None:
        start = max(0, _offset_from_cursor(before) - limit)
    elif after is not None:
        start = _offset_from_cursor(after)
    else:
        start = 0
    where = await plan_search(session, where)
    page = (
        select(Ticket.id.label("page_id"), rank.c.score)
        .join(rank, rank.c.ticket_id == Ticket.id)
        .where(where)
        .order_by(rank.c.score.desc(), Ticket.id.desc())
        .offset(start)
        .limit(limit + 1)
        .subquery("page")
    )
    stmt = _page_rows(page, _dialect(session)).order_by(page.c.score.desc(), Ticket.id.desc())
    rows = await _rows(session, stmt)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        _ticket_rows(rows),
        _offset_cursor(start + len(rows)) if more else None,
        _offset_cursor(start) if start > 0 else None,
    )


async def count(
    session: AsyncSession, where: ColumnElement[bool], *, limit: int | None = None
) -> int:
    """How many tickets match `where`; with `limit`, counting stops there (show "1000+")."""
    where = await plan_search(session, where, for_count=limit is None)
    if limit is None:
        stmt = select(func.count()).select_from(Ticket).where(where)
    else:
        matching = select(Ticket.id).where(where).limit(limit).subquery()
        stmt = select(func.count()).select_from(matching)
    return int((await session.execute(stmt)).scalar_one())
