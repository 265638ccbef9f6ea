"""Keyset-paged ticket lists: every order walked forward and backward against a Python sort."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ColumnElement, insert, select, true

from store.engine import Database
from store.listing import (
    ORDERS,
    CursorError,
    Page,
    count,
    last_page,
    list_page,
)
from store.models import Agent, Article, Customer, Queue, Tag, Ticket, TicketTag
from store.query import QueryContext, compile_where, parse, rank_subquery
from store.search_index import reindex_tickets

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
N = 300
FAR = datetime(9999, 1, 1, tzinfo=UTC)
STATUSES = ["new", "open", "open", "pending", "closed"]


async def seed(db: Database, n: int = N) -> None:
    """`n` tickets with many ties in every sort key, and NULLs in the nullable ones."""
    rng = random.Random(42)
    async with db.write() as s:
        alice = Agent(login="alice", name="Alice Agent")
        bob = Agent(login="bob", name="Bob Agent")
        queue = Queue(name="Support")
        carol = Customer(name="Carol", email="carol@acme.com")
        s.add_all([alice, bob, queue, carol])
        urgent = Tag(name="urgent")
        vip = Tag(name="vip")
        s.add_all([urgent, vip])
        await s.flush()
        numbers = list(range(5000, 5000 + n))
        rng.shuffle(numbers)  # number order differs from id order
        rows = []
        for i in range(n):
            created = NOW - timedelta(hours=rng.randint(0, 40))
            rows.append(
                {
                    "number": numbers[i],
                    "subject": f"ticket {i}" + (" alpha" * rng.randint(0, 3)),
                    "status": rng.choice(STATUSES),
                    "priority": rng.randint(0, 3),
                    "assignee_id": rng.choice([None, alice.id, bob.id]),
                    "customer_id": rng.choice([None, carol.id]),
                    "queue_id": rng.choice([None, queue.id]),
                    "created_at": created,
                    "updated_at": created + timedelta(minutes=rng.choice([0, 0, 30, 90])),
                    "next_due_at": rng.choice(
                        [None, None, NOW + timedelta(hours=rng.randint(0, 5))]
                    ),
                    "last_customer_at": rng.choice(
                        [None, NOW - timedelta(hours=rng.randint(0, 5))]
                    ),
                    "postponed_until": None,
                }
            )
        await s.execute(insert(Ticket), rows)
        ids = {
            number: ticket_id
            for ticket_id, number in await s.execute(select(Ticket.id, Ticket.number))
        }
        for number, ticket_id in ids.items():
            if number % 3 == 0:
                s.add(TicketTag(ticket_id=ticket_id, tag_id=urgent.id))
            if number % 5 == 0:
                s.add(TicketTag(ticket_id=ticket_id, tag_id=vip.id))
        await reindex_tickets(s, db.dialect, ids.values())


def sort_key(order: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if order == "updated":
        return lambda r: (-r["updated_at"].timestamp(), -r["id"])
    if order == "created":
        return lambda r: (-r["created_at"].timestamp(), -r["id"])
    if order == "number":
        return lambda r: (r["number"],)
    return lambda r: (
        -r["priority"],
        r["next_due_at"] or FAR,
        r["last_customer_at"] or FAR,
        r["id"],
    )


async def expected_ids(db: Database, where: ColumnElement[bool], order: str) -> list[int]:
    async with db.read() as s:
        result = await s.execute(
            select(
                Ticket.id,
                Ticket.number,
                Ticket.priority,
                Ticket.updated_at,
                Ticket.created_at,
                Ticket.next_due_at,
                Ticket.last_customer_at,
            ).where(where)
        )
        rows = [dict(r._mapping) for r in result]
    return [r["id"] for r in sorted(rows, key=sort_key(order))]


async def walk_forward(
    db: Database, where: ColumnElement[bool], order: str, limit: int
) -> list[Page]:
    pages = []
    cursor = None
    async with db.read() as s:
        while True:
            page = await list_page(s, where, order=order, after=cursor, limit=limit)
            pages.append(page)
            if page.next_cursor is None:
                return pages
            assert len(page.rows) == limit
            cursor = page.next_cursor
            assert len(pages) < 10_000


async def walk_backward(
    db: Database, where: ColumnElement[bool], order: str, limit: int
) -> list[Page]:
    async with db.read() as s:
        page = await last_page(s, where, order=order, limit=limit)
        pages = [page]
        while page.prev_cursor is not None:
            page = await list_page(s, where, order=order, before=page.prev_cursor, limit=limit)
            pages.append(page)
            assert len(pages) < 10_000
    return pages


def where_for(text_: str, dialect: str) -> ColumnElement[bool]:
    return compile_where(parse(text_), QueryContext(me_agent_id=None, now=NOW, dialect=dialect))


@pytest.mark.parametrize("order", ["updated", "created", "number", "next"])
async def test_walk_every_order(db: Database, order: str) -> None:
    await seed(db)
    for query, limit in (("", 7), ("", 50), ("status:open", 9), ("tag:urgent -tag:vip", 1)):
        where = where_for(query, db.dialect)
        expected = await expected_ids(db, where, order)
        assert expected, query

        pages = await walk_forward(db, where, order, limit)
        got = [r.id for p in pages for r in p.rows]
        assert got == expected, (query, limit)
        assert pages[0].prev_cursor is None
        assert all(p.prev_cursor is not None for p in pages[1:])

        back = await walk_backward(db, where, order, limit)
        assert back[-1].prev_cursor is None
        assert [r.id for r in back[-1].rows] == expected[:limit]  # the first page, full
        tail = [r.id for p in reversed(back[:-1]) for r in p.rows]
        assert tail == expected[len(expected) - len(tail) :]  # contiguous, no gaps
        assert set(tail) | set(expected[:limit]) == set(expected)
        assert all(len(p.rows) == min(limit, len(expected)) for p in back)
        assert back[0].next_cursor is None

        async with db.read() as s:
            assert await count(s, where) == len(expected)
            assert await count(s, where, limit=5) == min(5, len(expected))


async def test_rows_carry_joined_fields_and_tags(db: Database) -> None:
    await seed(db, 40)
    async with db.read() as s:
        page = await list_page(s, true(), order="number", limit=40)
        full = {
            t.id: t
            for t in (await s.execute(select(Ticket).order_by(Ticket.number))).unique().scalars()
        }
    assert [r.number for r in page.rows] == sorted(r.number for r in page.rows)
    assert page.next_cursor is None and page.prev_cursor is None
    for row in page.rows:
        t = full[row.id]
        assert row.subject == t.subject and row.status == t.status
        assert row.assignee_login == (t.assignee.login if t.assignee else None)
        assert row.assignee_name == (t.assignee.name if t.assignee else None)
        assert row.customer_email == (t.customer.email if t.customer else None)
        assert row.customer_name == (t.customer.name if t.customer else None)
        assert row.queue_name == (t.queue.name if t.queue else None)
        assert row.updated_at == t.updated_at and row.updated_at.tzinfo is not None
        assert row.next_due_at == t.next_due_at
        assert row.tags == tuple(tag.name for tag in t.tags)


async def test_pages_are_stable_under_inserts(db: Database) -> None:
    await seed(db, 60)
    where = true()
    expected = await expected_ids(db, where, "updated")
    async with db.read() as s:
        first = await list_page(s, where, limit=20)
    async with db.write() as s:  # a fresh, most recently updated ticket arrives
        s.add(Ticket(number=99999, subject="new", created_at=NOW, updated_at=NOW + timedelta(1)))
    async with db.read() as s:
        second = await list_page(s, where, after=first.next_cursor, limit=20)
        back = await list_page(s, where, before=second.prev_cursor, limit=20)
        assert back.prev_cursor is not None
        front = await list_page(s, where, before=back.prev_cursor, limit=20)
    assert [r.id for r in first.rows + second.rows] == expected[:40]
    assert [r.id for r in back.rows] == [r.id for r in first.rows]
    # One row (the new one) precedes: too few for a page, so the first page comes back.
    assert front.rows[0].number == 99999 and front.prev_cursor is None
    assert [r.id for r in front.rows[1:]] == expected[:19]


async def test_empty_and_edge_pages(db: Database) -> None:
    await seed(db, 10)
    nothing = where_for("status:solved", db.dialect)
    async with db.read() as s:
        for order in ("updated", "created", "number", "next"):
            page = await list_page(s, nothing, order=order)
            assert page.rows == [] and page.next_cursor is None and page.prev_cursor is None
            last = await last_page(s, nothing, order=order)
            assert last.rows == [] and last.prev_cursor is None
            assert await count(s, nothing) == 0
        everything = await list_page(s, true(), limit=10)
        assert len(everything.rows) == 10 and everything.next_cursor is None
        one = await list_page(s, true(), limit=9)
        after_end = await list_page(s, true(), after=one.next_cursor, limit=9)
        assert len(after_end.rows) == 1 and after_end.next_cursor is None


async def test_bad_cursors_and_arguments(db: Database) -> None:
    await seed(db, 10)
    async with db.read() as s:
        page = await list_page(s, true(), limit=3)
        assert page.next_cursor is not None
        with pytest.raises(CursorError):
            await list_page(s, true(), order="next", after=page.next_cursor)
        for junk in ("", "!!!", "e30", "eyJvIjoidXBkYXRlZCIsImsiOlsxLDJdfQ", "bm90IGpzb24"):
            with pytest.raises(CursorError):
                await list_page(s, true(), after=junk)
        with pytest.raises(ValueError):
            await list_page(s, true(), order="bogus")
        with pytest.raises(ValueError):
            await list_page(s, true(), limit=0)
        with pytest.raises(ValueError):
            await list_page(s, true(), after=page.next_cursor, before=page.next_cursor)
        with pytest.raises(ValueError):
            await list_page(s, true(), order="relevance")  # needs search words


async def test_relevance(db: Database) -> None:
    await seed(db, 80)
    async with db.write() as s:
        best = Ticket(number=90001, subject="alpha alpha alpha alpha beta", created_at=NOW)
        body_only = Ticket(number=90002, subject="nothing here", created_at=NOW)
        s.add_all([best, body_only])
        await s.flush()
        art = Article(
            ticket_id=body_only.id,
            kind="note",
            body_text="a long text " * 30 + "alpha",
        )
        s.add(art)
        await s.flush()
        await reindex_tickets(s, db.dialect, [best.id, body_only.id])
    ctx = QueryContext(me_agent_id=None, now=NOW, dialect=db.dialect)
    query = parse("alpha")
    where = compile_where(query, ctx)
    rank = rank_subquery(query, ctx)
    assert rank is not None and rank_subquery(parse("-alpha status:open"), ctx) is None
    async with db.read() as s:
        total = await count(s, where)
        seen: list[int] = []
        cursor = None
        pages = []
        while True:
            page = await list_page(s, where, order="relevance", rank=rank, after=cursor, limit=6)
            pages.append(page)
            seen += [r.number for r in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)) == total
        assert seen[0] == 90001 and 90002 in seen
        assert pages[0].prev_cursor is None and pages[1].prev_cursor is not None
        back = await list_page(
            s, where, order="relevance", rank=rank, before=pages[2].prev_cursor, limit=6
        )
        assert [r.number for r in back.rows] == [r.number for r in pages[1].rows]
        last = await last_page(s, where, order="relevance", rank=rank, limit=6)
        assert [r.number for r in last.rows] == seen[-6:] and last.next_cursor is None


def test_orders_are_documented() -> None:
    assert set(ORDERS) == {"updated", "created", "number", "next", "relevance"}
    assert all(len(v) > 20 for v in ORDERS.values())


@pytest.mark.parametrize("order", ["updated", "created", "number", "next"])
@pytest.mark.parametrize("budget", [1 << 17, 6])
async def test_walking_the_order_index_in_windows(
    db: Database, order: str, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite pages a large result through the order's index, a few entries at a time.

    Tiny windows (2, 4, 8 entries) make every page cross many windows and seek ranges
    (ties in every key), and a tiny budget hands the rest over to the planner mid-page:
    the pages must be exactly those of a Python sort, forward and backward.
    """
    import store.listing as listing_module

    await seed(db)
    monkeypatch.setattr(listing_module, "SMALL_RESULT", 1)
    monkeypatch.setattr(listing_module, "_walk_helps", lambda _order, _where: True)
    monkeypatch.setattr(listing_module, "FIRST_WINDOW", 2)
    monkeypatch.setattr(listing_module, "MAX_WINDOW", 8)
    monkeypatch.setattr(listing_module, "WINDOW_BUDGET", budget)
    for query, limit in (("", 7), ("status:open", 9), ("tag:urgent -tag:vip", 4)):
        where = where_for(query, db.dialect)
        expected = await expected_ids(db, where, order)
        pages = await walk_forward(db, where, order, limit)
        assert [r.id for p in pages for r in p.rows] == expected, (query, limit)
        back = await walk_backward(db, where, order, limit)
        assert [r.id for r in back[-1].rows] == expected[:limit]
        tail = [r.id for p in reversed(back[:-1]) for r in p.rows]
        assert tail == expected[len(expected) - len(tail) :]
        assert set(tail) | set(expected[:limit]) == set(expected)
