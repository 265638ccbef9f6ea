"""The service keeps SLA clocks current on every write: create, reply, pending pause, customer reply."""

from __future__ import annotations

from datetime import UTC, datetime

from store import sla
from store.models import ArticleKind, Status
from store.service import Actor, ArticleInput, Service
from tests.conftest import FakeClock


async def test_clocks_follow_the_ticket_through_the_service(
    service: Service, clock: FakeClock
) -> None:
    clock.now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC
    await sla.add_calendar(service.db, "office", timezone="UTC", hours="mon-fri 09:00-17:00")
    await sla.add_policy(
        service.db,
        "default",
        calendar="office",
        targets=sla.parse_targets(first_response="2h", resolution="16h"),
    )
    agent = await service.add_agent("alice", "Alice")
    actor = Actor("agent", "alice", agent.id)
    t = await service.create_ticket(
        Actor("mail", "sync"),
        subject="VPN down",
        customer_email="c@x.com",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="help"),
    )
    # nearest clock: first response, 2 business hours after creation
    assert t.next_due_at == datetime(2026, 11, 2, 11, 0, tzinfo=UTC)
    clock.advance(hours=1)
    await service.add_reply(actor, t.number, "Looking into it", status=Status.PENDING)
    t = await service.get_ticket(t.number)
    assert t.next_due_at is None  # first response met; pending pauses resolution
    clock.advance(hours=3)  # 13:00: paused for 3 business hours
    await service.add_customer_message(
        Actor("mail", "sync"), t.number, ArticleInput(kind=ArticleKind.EMAIL_IN, body="still down")
    )
    t = await service.get_ticket(t.number)
    # resolution: 16 business hours from Monday 09:00 = Tuesday 17:00, plus the 3 paused hours
    assert t.status == "open"
    assert t.next_due_at == datetime(2026, 11, 4, 12, 0, tzinfo=UTC)  # Wed 12:00
    lines = "\n".join(await sla.explain(service.db, t.number, clock.now))
    assert "default" in lines
