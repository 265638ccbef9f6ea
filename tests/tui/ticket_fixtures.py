"""Fixed data for ticket-screen tests: a rich thread on the printer ticket, canned responses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from store.engine import Database
from store.models import ArticleKind, Priority
from store.service import MAIL, Actor, ArticleInput, AttachmentInput, Service
from tests.conftest import FakeClock
from tests.tui.conftest import NOW, build_store, wait_for

PRINTER = "Printer jam on floor 3"
VPN = "VPN disconnects every 10 minutes"

CANNED = {
    "Printer: restart steps": (
        "Hi {{customer.first_name}},\n\nplease switch the printer off and on again; "
        "ticket #{{ticket.number}} stays open until it works.\n\nBest,\n{{agent.name}}"
    ),
    "Refund approved": "Hello {{customer.name}}, your refund is on its way. {{agent.first_name}}",
    "Escalation (needs a manager)": "Hi {{customer.first_name}}, {{manager.name}} will call you.",
}


@dataclass(frozen=True)
class Rich:
    """Numbers and ids of the enriched data."""

    printer: int
    vpn: int
    ticket_id: int
    note_id: int
    last_article_id: int


async def enrich(url: str, clock: FakeClock, numbers: dict[str, int]) -> Rich:
    """Give the printer ticket an organization, a reply, a note, quotes, HTML and attachments."""
    db = Database(url)
    try:
        service = Service(db, clock=clock)
        alice = await service.agent("alice")
        bob = await service.agent("bob")
        as_alice = Actor("agent", "alice", alice.id)
        as_bob = Actor("agent", "bob", bob.id)
        number = numbers[PRINTER]
        org = await service.add_organization("ACME Corp", ["acme.com"], tier="vip")
        async with db.write() as session:
            await session.execute(
                text(
                    "UPDATE customers SET organization_id = :o, phone = '+1 555 0100' "
                    "WHERE email LIKE '%@acme.com'"
                ),
                {"o": org.id},
            )
            await session.execute(
                text(
                    "UPDATE tickets SET organization_id = :o WHERE customer_id IN "
                    "(SELECT id FROM customers WHERE organization_id = :o)"
                ),
                {"o": org.id},
            )
        start = clock.now
        clock.now = NOW - timedelta(days=8)
        await service.add_reply(
            as_alice, number, "Hi Carol,\n\nwhich printer model is it?\n\nAlice"
        )
        clock.now = NOW - timedelta(days=7)
        await service.add_customer_message(
            MAIL,
            number,
            ArticleInput(
                kind=ArticleKind.EMAIL_IN,
                from_addr="Carol Smith <carol@acme.com>",
                body="It is the HP LaserJet 4200 by the kitchen.\nPhoto attached.",
                quoted_text="Hi Carol,\n\nwhich printer model is it?\n\nAlice",
                attachments=[
                    AttachmentInput("jam.jpg", b"\xff\xd8\xff fake jpeg" * 100, "image/jpeg"),
                    AttachmentInput("../../escape.txt", b"not outside", "text/plain"),
                ],
                created_at=clock.now,
            ),
        )
        clock.now = NOW - timedelta(days=6)
        note = await service.add_note(
            as_bob,
            number,
            "Spare fuser unit is in room 3.12 — do NOT tell the customer about the cost.",
        )
        clock.now = NOW - timedelta(days=5)
        await service.add_customer_message(
            MAIL,
            number,
            ArticleInput(
                kind=ArticleKind.EMAIL_IN,
                from_addr="Carol Smith <carol@acme.com>",
                body="Our mail client only sends HTML; this text came from it.",
                body_html="<p>Our mail client only sends <b>HTML</b>; this text came from it.</p>",
                created_at=clock.now,
            ),
        )
        clock.now = NOW - timedelta(days=4)
        await service.update_ticket(as_alice, number, priority=Priority.HIGH, tags_add=["printer"])
        clock.now = start
        for name, body in CANNED.items():
            await service.add_canned(name, body)
        detail = await service.ticket_detail(number)
        return Rich(
            printer=number,
            vpn=numbers[VPN],
            ticket_id=detail.ticket.id,
            note_id=note.id,
            last_article_id=max(a.id for a in detail.articles),
        )
    finally:
        await db.dispose()


def build_rich_store_sync(url: str, clock: FakeClock) -> Rich:
    """Build the fixed store and enrich it, for synchronous (snapshot) tests."""

    async def build() -> Rich:
        numbers = await build_store(url, clock)
        return await enrich(url, clock, numbers)

    return asyncio.run(build())


async def open_ticket(app: Any, pilot: Any, number: int) -> Any:
    """Push the ticket screen over the queue and wait until its first load is shown."""
    from helpdesk_tui.screens.ticket import TicketScreen

    await wait_for(lambda: type(app.screen).__name__ == "QueueScreen", pilot)
    screen = TicketScreen(number)
    await app.push_screen(screen)
    await wait_for(lambda: screen.loaded.is_set() and screen.header_info is not None, pilot)
    await pilot.pause()
    return screen


def notifications(app: Any) -> str:
    """Every notification still shown (pilot runs do not draw toasts), title and text."""
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


async def until(pilot: Any, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """`wait_for` under a shorter name."""
    await wait_for(predicate, pilot, timeout)
