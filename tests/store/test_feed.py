"""The change-feed follower sees every committed change, promptly, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from store.engine import Database
from store.feed import ChangeFeed, FeedEvent
from store.models import ArticleKind, Status
from store.service import MAIL, Actor, ArticleInput, Service
from tests.conftest import FakeClock


async def _seed(service: Service) -> Actor:
    await service.add_queue("Support", ["support@example.com"])
    agent = await service.add_agent("alice", "Alice Agent", queues=["Support"])
    return Actor("agent", "alice", agent.id)


async def _new_ticket(service: Service, subject: str = "Printer jam") -> int:
    t = await service.create_ticket(
        MAIL,
        subject=subject,
        customer_email="carol@acme.com",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="It jams."),
        queue="Support",
    )
    return t.number


async def _collect(feed: ChangeFeed, want: int, timeout: float = 5.0) -> list[FeedEvent]:
    got: list[FeedEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += await feed.poll()
        if len(got) < want:
            await feed.wait(min(0.5, max(0.0, deadline - time.monotonic())))
    return got


async def test_starts_after_existing_events_and_sees_new_ones(service: Service) -> None:
    actor = await _seed(service)
    number = await _new_ticket(service)
    async with ChangeFeed(service.db.url) as feed:
        assert await feed.poll() == []  # history before opening is not replayed
        await service.update_ticket(actor, number, status=Status.OPEN)
        events = await _collect(feed, 1)
    ticket = await service.get_ticket(number)
    assert [(e.ticket_id, e.kind) for e in events] == [(ticket.id, "updated")]
    assert events[0].actor == "agent:alice"


async def test_after_replays_from_a_given_event(service: Service) -> None:
    await _seed(service)
    start = await service.last_event_id()
    await _new_ticket(service, "one")
    await _new_ticket(service, "two")
    async with ChangeFeed(service.db.url, after=start) as feed:
        events = await feed.poll()
    assert [e.kind for e in events] == ["created", "created"]
    assert feed.last_id == events[-1].id


async def test_a_second_process_writing_is_seen_within_two_seconds(
    service: Service, clock: FakeClock
) -> None:
    """Another engine (another agent's console, the mail daemon) on the same store."""
    await _seed(service)
    other_db = Database(service.db.url)
    other = Service(other_db, clock=clock)
    try:
        feed = ChangeFeed(service.db.url, poll_interval=0.3, backstop=30)
        received: list[list[FeedEvent]] = []

        async def consume() -> None:
            async for batch in feed:
                received.append(batch)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)  # the follower is now waiting
        t0 = time.monotonic()
        await _new_ticket(other, "from the daemon")
        while not received and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert received and received[0][0].kind == "created"
        assert elapsed < 2.0, f"the change took {elapsed:.2f}s to arrive"
    finally:
        await other_db.dispose()


async def test_an_id_committed_late_is_not_lost(service: Service) -> None:
    """PostgreSQL hands out ids before commit: id N+1 can become visible before id N."""
    await _seed(service)
    async with ChangeFeed(service.db.url) as feed:
        base = feed.last_id
        assert base is not None
        async with service.db.write() as s:
            await s.execute(
                text(
                    "INSERT INTO events (id, ticket_id, kind, actor, created_at) "
                    "VALUES (:id, NULL, 'late-second', 'test', :now)"
                ),
                {"id": base + 2, "now": service.clock()},
            )
        first = await _collect(feed, 1)
        async with service.db.write() as s:
            await s.execute(
                text(
                    "INSERT INTO events (id, ticket_id, kind, actor, created_at) "
                    "VALUES (:id, NULL, 'late-first', 'test', :now)"
                ),
                {"id": base + 1, "now": service.clock()},
            )
        second = await _collect(feed, 1)
    assert [e.kind for e in first] == ["late-second"]
    assert [e.kind for e in second] == ["late-first"]


async def test_many_changes_arrive_complete_and_in_order(service: Service) -> None:
    actor = await _seed(service)
    number = await _new_ticket(service)
    async with ChangeFeed(service.db.url, batch_limit=7) as feed:
        for i in range(20):
            await service.update_ticket(actor, number, tags_add=[f"t{i}"])
        events = await _collect(feed, 20)
    assert len(events) == 20
    assert [e.id for e in events] == sorted(e.id for e in events)


@pytest.mark.pg
@pytest.mark.slow
async def test_postgres_reconnects_and_catches_up(pg_server, pg_url: str, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    """The server goes away and comes back: changes made meanwhile are delivered after."""
    from store.migrate import upgrade

    db = Database(pg_url)
    await upgrade(db)
    service = Service(db, clock=clock)
    try:
        await _seed(service)
        feed = ChangeFeed(pg_url, backstop=1.0)
        received: list[FeedEvent] = []

        async def consume() -> None:
            async for batch in feed:
                received.extend(batch)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pg_server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pg_server.start)
        await db.dispose()  # the pool's connections died with the server
        await _new_ticket(service, "written after the restart")
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [e.kind for e in received] == ["created"]
    finally:
        await db.dispose()
