"""Fixtures for console tests: a small fixed-data store built through the Service, and apps on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from helpdesk_tui.app import HelpdeskApp
from store.config import Config
from store.engine import Database
from store.migrate import upgrade
from store.models import ArticleKind, Level, Priority, Status, Ticket
from store.service import MAIL, Actor, ArticleInput, Service
from tests.conftest import FakeClock

#: The fixed "now" of every console test (a Monday morning).
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seed:
    """One ticket of the fixed data set; `age` is how long before NOW it arrived."""

    subject: str
    customer: str
    email: str
    queue: str
    age: timedelta
    assignee: str | None = None
    status: Status | None = None
    priority: Priority | None = None
    tags: tuple[str, ...] = ()


#: The fixed tickets, oldest first (numbers 1..N in this order).
SEEDS: tuple[Seed, ...] = (
    Seed(
        "Printer jam on floor 3",
        "Carol Smith",
        "carol@acme.com",
        "Support",
        timedelta(days=9),
        "alice",
        Status.OPEN,
        Priority.NORMAL,
        ("hardware",),
    ),
    Seed(
        "Invoice shows the wrong VAT number",
        "Dan Brown",
        "dan@globex.example",
        "Billing",
        timedelta(days=6),
        "alice",
        Status.PENDING,
        Priority.NORMAL,
        ("billing",),
    ),
    Seed(
        "VPN disconnects every 10 minutes",
        "Erin Lee",
        "erin@acme.com",
        "Support",
        timedelta(days=4),
        "bob",
        Status.OPEN,
        Priority.HIGH,
    ),
    Seed(
        "Cannot log in after password reset",
        "Frank Ode",
        "frank@inbox.lv",
        "Support",
        timedelta(days=3),
        "alice",
        Status.OPEN,
        Priority.URGENT,
        ("login",),
    ),
    Seed(
        "Refund for a double charge",
        "Gina Park",
        "gina@maju.com.my",
        "Billing",
        timedelta(days=2, hours=5),
        None,
        None,
        Priority.HIGH,
        ("billing",),
    ),
    Seed(
        "Rēķinā nepareiza summa",
        "Jānis Bērziņš",
        "janis@rigasudens.lv",
        "Billing",
        timedelta(days=2),
        "alice",
        Status.ANSWERED,
        Priority.LOW,
        ("billing",),
    ),
    Seed(
        "New laptop for the new hire",
        "Hana Ito",
        "hana@acme.com",
        "Support",
        timedelta(days=1, hours=3),
        "alice",
        Status.POSTPONED,
        Priority.NORMAL,
    ),
    Seed(
        "Password manager invite",
        "Ivan Petrov",
        "ivan@mail.ru",
        "Support",
        timedelta(hours=7),
        "bob",
        Status.SOLVED,
        Priority.LOW,
    ),
    Seed(
        "Mailbox is full",
        "Kate Moss",
        "kate@globex.example",
        "Support",
        timedelta(hours=6),
        "alice",
        Status.OPEN,
        Priority.HIGH,
    ),
    Seed(
        "Shared drive is read-only",
        "Liam Neri",
        "liam@acme.com",
        "Support",
        timedelta(hours=3),
        None,
        None,
        Priority.NORMAL,
    ),
    Seed(
        "Question about the annual plan",
        "Mona Lisa",
        "mona@vtech.lt",
        "Billing",
        timedelta(hours=1),
        None,
        None,
        Priority.NORMAL,
    ),
    Seed(
        "Screen flickers",
        "Nina Simone",
        "nina@acme.com",
        "Support",
        timedelta(minutes=12),
        "alice",
        Status.OPEN,
        Priority.NORMAL,
    ),
)


async def build_store(
    url: str, clock: FakeClock, seeds: tuple[Seed, ...] = SEEDS
) -> dict[str, int]:
    """Create the fixed store through the Service (the one write path) on a fake clock.

    Returns each seed's ticket number by subject.
    """
    numbers: dict[str, int] = {}
    db = Database(url)
    try:
        await upgrade(db)
        service = Service(db, clock=clock)
        await service.add_queue("Billing", ["billing@example.com"])
        await service.add_queue("Support", ["support@example.com"])
        alice = await service.add_agent(
            "alice", "Alice Agent", "alice@example.com", queues=["Support", "Billing"]
        )
        await service.add_agent("bob", "Bob Builder", "bob@example.com", queues=["Support"])
        start = clock.now
        for seed in seeds:
            clock.now = start - seed.age
            t = await service.create_ticket(
                MAIL,
                subject=seed.subject,
                customer_email=seed.email,
                customer_name=seed.customer,
                queue=seed.queue,
                article=ArticleInput(
                    kind=ArticleKind.EMAIL_IN, body=f"About: {seed.subject}", created_at=clock.now
                ),
                impact=Level.MEDIUM,
                urgency=Level.MEDIUM,
                priority=seed.priority,
                tags=seed.tags,
            )
            numbers[seed.subject] = t.number
            clock.now += timedelta(minutes=5)
            actor = Actor("agent", seed.assignee or "alice", alice.id)
            if seed.assignee:
                await service.update_ticket(actor, t.number, assignee=seed.assignee)
            if seed.status is Status.POSTPONED:
                await service.update_ticket(
                    actor, t.number, postpone_until=start + timedelta(hours=30)
                )
            elif seed.status is not None:
                await service.update_ticket(actor, t.number, status=seed.status)
        clock.now = start
        await service.add_view("Billing backlog", "queue:Billing is:active", owner="alice")
        await service.add_view("Urgent & high", "is:active priority:>=high")
    finally:
        await db.dispose()
    return numbers


async def bulk_tickets(url: str, count: int, *, start: datetime = NOW) -> None:
    """Add `count` plain tickets fast (batched Core inserts; no articles) for scale tests."""
    db = Database(url)
    try:
        async with db.write() as s:
            first_id = int(
                (await s.execute(text("SELECT coalesce(max(id), 0) FROM tickets"))).scalar_one()
            )
            first_no = int(
                (
                    await s.execute(text("SELECT value FROM counters WHERE name='ticket'"))
                ).scalar_one()
            )
            rows = []
            for i in range(1, count + 1):
                moment = start - timedelta(minutes=count - i + 60)
                rows.append(
                    {
                        "id": first_id + i,
                        "number": first_no + i,
                        "subject": f"Bulk ticket {i}",
                        "status": "open",
                        "priority": 1,
                        "impact": 1,
                        "urgency": 1,
                        "queue_id": None,
                        "assignee_id": None,
                        "customer_id": None,
                        "organization_id": None,
                        "language": "en",
                        "channel": "email",
                        "created_at": moment,
                        "updated_at": moment,
                        "last_customer_at": moment,
                        "version": 1,
                    }
                )
            for i in range(0, len(rows), 5000):
                await s.execute(insert(Ticket), rows[i : i + 5000])
            await s.execute(
                text("UPDATE counters SET value = :v WHERE name = 'ticket'"),
                {"v": first_no + count},
            )
    finally:
        await db.dispose()


@pytest.fixture
def clock() -> FakeClock:
    """The console tests' clock: frozen at NOW unless a test moves it."""
    return FakeClock(NOW)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'helpdesk.db'}"


@pytest.fixture
async def numbers(store_url: str, clock: FakeClock) -> dict[str, int]:
    """Build the fixed store; ticket numbers by subject."""
    return await build_store(store_url, clock)


@pytest.fixture
def seeded_url(store_url: str, numbers: dict[str, int]) -> str:
    """A SQLite store with the fixed data set."""
    return store_url


AppFactory = Callable[..., Coroutine[Any, Any, HelpdeskApp]]


@pytest.fixture
async def make_app(clock: FakeClock) -> AsyncIterator[AppFactory]:
    """`await make_app(url, login="alice", **app_kwargs)`: an app on its own engine."""
    dbs: list[Database] = []

    async def factory(url: str, login: str = "alice", **kwargs: Any) -> HelpdeskApp:
        db = Database(url)
        dbs.append(db)
        service = Service(db, clock=clock)
        me = await service.agent(login)
        return HelpdeskApp(service, me, Config(db_url=url), **kwargs)

    yield factory
    for db in dbs:
        await db.dispose()


@pytest.fixture
async def other_service(seeded_url: str, clock: FakeClock) -> AsyncIterator[Service]:
    """A second writer on the same store file (another agent's console, the mail daemon)."""
    db = Database(seeded_url)
    yield Service(db, clock=clock)
    await db.dispose()


def app_sync(url: str, clock: FakeClock, login: str = "alice", **kwargs: Any) -> HelpdeskApp:
    """An app for synchronous tests (snapshots): the agent is read on a throwaway engine."""

    async def agent() -> Any:
        db = Database(url)
        try:
            return await Service(db, clock=clock).agent(login)
        finally:
            await db.dispose()

    me = asyncio.run(agent())
    service = Service(Database(url), clock=clock)
    return HelpdeskApp(service, me, Config(db_url=url), **kwargs)


async def wait_for(predicate: Callable[[], bool], pilot: Any, timeout: float = 5.0) -> None:
    """Let the app run until `predicate()` holds (fails the test after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the console")
        await pilot.pause(0.02)


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text (one line per row)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
