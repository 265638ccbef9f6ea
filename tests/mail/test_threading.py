"""Threading: references, verified Message-IDs, subject tags with a participant check, never subjects."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from sqlalchemy import select

from mail_sync.ingest import Ingestor, IngestResult, MailSource
from mail_sync.threading import (
    find_tag,
    mail_secret,
    make_message_id,
    strip_reply_prefixes,
    verify_message_id,
)
from store.models import Setting, Status, TicketLink
from store.service import Actor, Service


def mail(
    subject: str = "Printer broken",
    sender: str = "alice@example.com",
    body: str = "The printer does not print.",
    in_reply_to: str | None = None,
    references: str | None = None,
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = "support@help.test"
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="example.com")
    if in_reply_to:
        m["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        m["References"] = references
    m.set_content(body)
    return m.as_bytes()


async def one(service: Service, raw: bytes) -> IngestResult:
    ing = Ingestor(service)
    (res,) = await ing.ingest_batch([ing.prepare(raw, MailSource("eml", "test"))])
    return res


async def agent(service: Service) -> Actor:
    a = await service.add_agent("anna", "Anna", "anna@help.test")
    return Actor("agent", a.login, a.id)


def test_message_id_roundtrip_and_tampering() -> None:
    secret = b"s3cret"
    mid = make_message_id(1234, secret, "help.test")
    assert mid.startswith("t1234.") and mid.endswith("@help.test")
    assert len(mid.split(".", 1)[1].split("@")[0]) == 24  # same shape as t{n}.{hex}
    assert verify_message_id(mid, secret) == 1234
    assert verify_message_id(f"<{mid}>", secret) == 1234
    assert verify_message_id(mid, b"other secret") is None
    forged = mid.replace("t1234.", "t1235.", 1)
    assert verify_message_id(forged, secret) is None
    assert verify_message_id("t1234.0123456789abcdef01234567@help.test", secret) is None
    assert verify_message_id("random@example.com", secret) is None


@pytest.mark.parametrize(
    "subject",
    [
        "[#1234] Printer",
        "Re: Printer [#1234]",
        "AW: Re: Printer [#1234]",
        "VS: Printer [#1234]",
        "Отв: Printer [#1234]",
        "Fwd: Re: Printer [# 1234]",
        "RE[2]: SV: Printer [#1234]",
    ],
)
def test_tag_is_found_behind_reply_prefixes(subject: str) -> None:
    assert find_tag(subject) == 1234


def test_tag_format_is_configurable_and_no_tag_is_none() -> None:
    assert find_tag("Re: Printer (Ticket 77)", "(Ticket {number})") == 77
    assert find_tag("Re: Printer [#77]", "(Ticket {number})") is None
    assert find_tag("Printer 1234") is None
    assert strip_reply_prefixes("Re: AW: Отв: Fwd: Printer") == "Printer"


async def test_store_secret_is_created_once(service: Service) -> None:
    async with service.db.write() as s:
        first = await mail_secret(s)
    async with service.db.write() as s:
        second = await mail_secret(s)
        row = await s.get(Setting, "mail_secret")
    assert first == second and len(first) == 64
    assert row is not None and row.value == first.decode()


async def test_reply_to_our_sent_message_threads_and_reopens(service: Service) -> None:
    anna = await agent(service)
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    reply = await service.add_reply(anna, number, "Did you switch it off and on?")
    assert (await service.get_ticket(number)).status == Status.ANSWERED.value
    r2 = await one(
        service,
        mail(subject="Re: Printer broken", in_reply_to=reply.message_id, body="Yes, still broken."),
    )
    assert r2.outcome == "threaded" and r2.ticket_number == number
    assert r2.reason.startswith(f"In-Reply-To <{reply.message_id}> is a stored message")
    assert (await service.get_ticket(number)).status == Status.OPEN.value


async def test_references_to_the_customers_own_first_mail_thread(service: Service) -> None:
    first = mail()
    r1 = await one(service, first)
    first_id = first.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()
    r2 = await one(service, mail(subject="Any news?", references=f"<x@unknown.test> <{first_id}>"))
    assert r2.ticket_number == r1.ticket_number
    assert r2.reason.startswith("References")


async def test_verified_message_id_threads_even_if_not_stored(service: Service) -> None:
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    async with service.db.write() as s:
        secret = await mail_secret(s)
    ours = make_message_id(number, secret, "help.test")
    r2 = await one(service, mail(subject="Re: something", in_reply_to=ours))
    assert r2.outcome == "threaded" and r2.ticket_number == number
    assert "HMAC verified" in r2.reason


async def test_forged_ticket_message_id_is_ignored(service: Service) -> None:
    r1 = await one(service, mail())
    forged = f"t{r1.ticket_number}.0123456789abcdef01234567@help.test"
    r2 = await one(service, mail(sender="mallory@evil.test", in_reply_to=forged))
    assert r2.outcome == "created" and r2.ticket_number != r1.ticket_number
    assert "ignored unverified" in r2.reason


async def test_subject_tag_from_the_customer_threads(service: Service) -> None:
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    r2 = await one(service, mail(subject=f"AW: Printer broken [#{number}]"))
    assert r2.outcome == "threaded" and r2.ticket_number == number
    assert "is a participant" in r2.reason


async def test_subject_tag_from_the_customers_organization_threads(service: Service) -> None:
    await service.add_organization("Example", ["example.com"])
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    r2 = await one(service, mail(sender="bob@example.com", subject=f"Re: [#{number}]"))
    assert r2.ticket_number == number
    assert "organization" in r2.reason


async def test_subject_tag_from_a_stranger_opens_a_linked_ticket(service: Service) -> None:
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    r2 = await one(
        service,
        mail(sender="mallory@evil.test", subject=f"Re: Printer broken [#{number}]", body="pwned"),
    )
    assert r2.outcome == "created" and r2.ticket_number != number
    assert "not a participant" in r2.reason
    victim = await service.ticket_detail(number)
    assert len(victim.articles) == 1  # nothing injected
    assert ("followed-up-by", r2.ticket_number) in victim.links
    new = await service.get_ticket(r2.ticket_number or 0)
    assert f"[#{number}]" not in new.subject
    async with service.db.read() as s:
        links = (await s.execute(select(TicketLink))).scalars().all()
    assert len(links) == 2


async def test_tag_of_a_missing_ticket_opens_a_new_one(service: Service) -> None:
    r = await one(service, mail(subject="Re: [#99999] hello"))
    assert r.outcome == "created"
    assert "names no ticket" in r.reason


async def test_never_threads_by_subject_similarity(service: Service) -> None:
    r1 = await one(service, mail(subject="Printer broken"))
    r2 = await one(service, mail(subject="Re: Printer broken"))
    assert r2.outcome == "created" and r2.ticket_number != r1.ticket_number


async def test_reply_to_a_closed_ticket_opens_a_follow_up(service: Service) -> None:
    anna = await agent(service)
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    reply = await service.add_reply(anna, number, "Fixed.")
    await service.update_ticket(anna, number, status=Status.CLOSED)
    r2 = await one(service, mail(subject="Re: Printer broken", in_reply_to=reply.message_id))
    assert r2.outcome == "created" and r2.ticket_number != number
    assert "is closed: follow-up" in r2.reason
    assert (await service.get_ticket(number)).status == Status.CLOSED.value


async def test_reply_to_a_merged_ticket_goes_to_the_target(service: Service) -> None:
    anna = await agent(service)
    a = await one(service, mail(subject="first"))
    b = await one(service, mail(subject="second"))
    reply = await service.add_reply(anna, a.ticket_number or 0, "Looking into it.")
    await service.merge(anna, a.ticket_number or 0, b.ticket_number or 0)
    r = await one(service, mail(subject="Re: first", in_reply_to=reply.message_id))
    assert r.outcome == "threaded" and r.ticket_number == b.ticket_number
    # A tag naming the merged ticket follows the merge too, and says so.
    r = await one(service, mail(subject=f"Re: first [#{a.ticket_number}]"))
    assert r.outcome == "threaded" and r.ticket_number == b.ticket_number
    assert f"#{a.ticket_number} was merged into #{b.ticket_number}" in r.reason


async def test_auto_reply_to_our_mail_does_not_reopen(service: Service) -> None:
    anna = await agent(service)
    r1 = await one(service, mail())
    number = r1.ticket_number or 0
    reply = await service.add_reply(anna, number, "Please send the model number.")
    ooo = mail(subject="Automatic reply: Re: Printer broken", in_reply_to=reply.message_id)
    ooo = b"Auto-Submitted: auto-replied\r\n" + ooo
    r2 = await one(service, ooo)
    assert r2.outcome == "threaded" and r2.ticket_number == number
    assert "status kept" in r2.reason
    assert (await service.get_ticket(number)).status == Status.ANSWERED.value
