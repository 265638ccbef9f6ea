"""The console's fast first page (stdlib sqlite3) returns exactly what `store.listing` returns."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text, update

from store import firstpage
from store.engine import Database
from store.firstpage import FIRST_VIEW_ORDER, FIRST_VIEW_QUERY, first_page, read_fast_start
from store.lifecycle import DEFAULT_LABELS
from store.listing import list_page
from store.migrate import HEAD_REVISION, upgrade
from store.models import Agent, Customer, Queue, Status, Tag, Ticket, TicketTag
from store.query import QueryContext, compile_where, parse
from store.revision import head_revision
from store.service import Service

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
STATUSES = ["new", "open", "answered", "pending", "on-hold", "postponed", "solved", "closed"]


async def seed(db: Database, n: int = 400) -> dict[str, int]:
    """`n` tickets with ties in every key of the "next" order, NULLs, tags, missing joins."""
    rng = random.Random(7)
    async with db.write() as s:
        agents = [
            Agent(login="alice", name="Alice Agent"),
            Agent(login="bob", name="Bob Agent"),
            Agent(login="idle", name="Has no tickets"),
            Agent(login="gone", name="Disabled", active=False),
        ]
        queue = Queue(name="Support")
        carol = Customer(name=None, email="carol@acme.com")
        dan = Customer(name="Dan Brown", email="dan@globex.example")
        tags = [Tag(name="vip"), Tag(name="billing"), Tag(name="Ärger")]
        s.add_all([*agents, queue, carol, dan, *tags])
        await s.flush()
        numbers = list(range(9000, 9000 + n))
        rng.shuffle(numbers)  # number order differs from id order
        due = [NOW + timedelta(hours=h) for h in (1, 2)]
        wrote = [NOW - timedelta(hours=h) for h in (3, 4)]
        rows = []
        for i in range(n):
            created = NOW - timedelta(hours=rng.randint(0, 30), microseconds=rng.randint(0, 9))
            rows.append(
                {
                    "number": numbers[i],
                    "subject": f"ticket {i} [b]x[/b]\x1b]52;c;x\x07",
                    "status": rng.choice(STATUSES),
                    "priority": rng.choice([1, 1, 2, 3, 0]),
                    "assignee_id": rng.choice([agents[0].id, agents[0].id, agents[1].id, None]),
                    "customer_id": rng.choice([None, carol.id, dan.id]),
                    "queue_id": rng.choice([None, queue.id]),
                    "created_at": created,
                    "updated_at": created + timedelta(minutes=rng.choice([0, 0, 30])),
                    "next_due_at": rng.choice([None, None, *due]),
                    "last_customer_at": rng.choice([None, *wrote]),
                    "postponed_until": rng.choice([None, NOW + timedelta(days=2)]),
                }
            )
        await s.execute(insert(Ticket), rows)
        ids = [tid for (tid,) in await s.execute(select(Ticket.id))]
        for tid in ids:
            for tag in rng.sample(tags, rng.randint(0, 3)):
                s.add(TicketTag(ticket_id=tid, tag_id=tag.id))
        # Some tickets were changed since they were created (versions differ).
        await s.execute(update(Ticket).where(Ticket.id % 7 == 0).values(version=3))
    return {a.login: a.id for a in agents}


async def listing_page(db: Database, agent_id: int, limit: int) -> list[dict[str, object]]:
    where = compile_where(parse(FIRST_VIEW_QUERY), QueryContext(agent_id, NOW, db.dialect))
    async with db.read() as session:
        page = await list_page(session, where, order=FIRST_VIEW_ORDER, limit=limit)
        versions = dict((await session.execute(select(Ticket.id, Ticket.version))).all())
    return [dataclasses.asdict(r) | {"version": versions[r.id]} for r in page.rows], page


@pytest.fixture
async def store(sqlite_url: str) -> tuple[Database, dict[str, int], Path]:
    db = Database(sqlite_url)
    await upgrade(db)
    agents = await seed(db)
    yield db, agents, Path(sqlite_url.split(":///", 1)[1])
    await db.dispose()


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@pytest.mark.parametrize("limit", [1, 7, 100, 1000])
@pytest.mark.parametrize("login", ["alice", "bob", "idle"])
async def test_first_page_is_the_listing_page(
    store: tuple[Database, dict[str, int], Path], login: str, limit: int
) -> None:
    db, agents, path = store
    want, page = await listing_page(db, agents[login], limit)
    start = read_fast_start(f"sqlite+aiosqlite:///{path}", login, limit)
    assert start is not None
    assert start.me.id == agents[login] and start.me.login == login
    assert [dataclasses.asdict(r) for r in start.page.rows] == want
    assert start.page.more == (page.next_cursor is not None)
    if login == "alice" and limit == 7:
        assert len(want) == 7 and start.page.more  # the comparison saw a real page


@pytest.mark.parametrize("plan", ["walk", "sort"])
async def test_both_plans_return_the_same_rows(
    store: tuple[Database, dict[str, int], Path], plan: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever plan the agent's ticket count picks, the page is the same."""
    db, agents, path = store
    want, _page = await listing_page(db, agents["alice"], 50)
    if plan == "sort":
        monkeypatch.setattr(firstpage, "_walk", lambda *_args: None)
    else:
        # Pretend alice owns most of a huge store, so the estimate picks the walk.
        monkeypatch.setattr(firstpage, "_MINE_SQL", "SELECT 1000000 + 0 * ?")
    with connect(path) as conn:
        page = first_page(conn, agents["alice"], 50)
        if plan == "walk":
            walked = firstpage._walk(conn, agents["alice"], 51)
            assert walked is not None and [r[0] for r in walked[:50]] == [r["id"] for r in want]
    assert [dataclasses.asdict(r) for r in page.rows] == want


async def test_an_interrupted_walk_falls_back_to_the_sort(
    store: tuple[Database, dict[str, int], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, agents, path = store
    want, _page = await listing_page(db, agents["alice"], 20)
    monkeypatch.setattr(firstpage, "_MINE_SQL", "SELECT 1000000 + 0 * ?")
    monkeypatch.setattr(firstpage, "WALK_BUDGET_S", -1.0)  # over budget at once
    monkeypatch.setattr(firstpage, "_CLOCK_STEPS", 1)
    with connect(path) as conn:
        assert firstpage._walk(conn, agents["alice"], 21) is None
        page = first_page(conn, agents["alice"], 20)
    assert [dataclasses.asdict(r) for r in page.rows] == want


async def test_refuses_what_the_normal_path_must_report(
    store: tuple[Database, dict[str, int], Path], tmp_path: Path
) -> None:
    """Unknown or disabled agents, an old schema, a missing file: None (the CLI explains)."""
    db, _agents, path = store
    url = f"sqlite+aiosqlite:///{path}"
    assert read_fast_start(url, "nobody", 10) is None
    assert read_fast_start(url, "gone", 10) is None
    assert read_fast_start(f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}", "alice", 10) is None
    assert read_fast_start("postgresql+asyncpg://u@h/db", "alice", 10) is None
    async with db.write() as s:
        await s.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    assert read_fast_start(url, "alice", 10) is None


async def test_status_labels_are_the_services(
    store: tuple[Database, dict[str, int], Path],
) -> None:
    """The list's Status column reads the same before and after the store opens."""
    db, _agents, path = store
    service = Service(db)
    with connect(path) as conn:
        assert firstpage.status_labels(conn) == await service.status_labels()
    await service.set_status_label(Status.OPEN, "In progress")
    await service.set_status_label(Status.PENDING, "Waiting", language="lv")
    with connect(path) as conn:
        labels = firstpage.status_labels(conn)
    assert labels == await service.status_labels()
    assert labels["open"] == "In progress" and labels["pending"] == "Pending"
    assert firstpage.DEFAULT_LABELS == DEFAULT_LABELS


def test_fast_start_knows_the_migrations_head() -> None:
    assert head_revision() == HEAD_REVISION


def test_fast_start_never_writes(tmp_path: Path) -> None:
    """The file is opened read-only: a store that is not ours is left as it was."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = path.read_bytes()
    assert read_fast_start(f"sqlite+aiosqlite:///{path}", "alice", 10) is None
    assert path.read_bytes() == before
