"""Mail out: the outbox delivers over real SMTP (aiosmtpd), retries, and never injects headers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mail_sync.outbox import OutboxSender, SmtpConfig
from store.models import ArticleKind, Outbox
from store.service import Actor, ArticleInput, Service
from tests.conftest import FakeClock


async def _ticket(service: Service, subject: str = "Printer jam") -> tuple[Actor, int]:
    await service.add_queue("Support", ["support@example.com"])
    agent = await service.add_agent("alice", "Alice Agent", "alice@example.com")
    t = await service.create_ticket(
        Actor("mail", "sync"),
        subject=subject,
        customer_email="carol@acme.com",
        customer_name="Carol",
        article=ArticleInput(
            kind=ArticleKind.EMAIL_IN, body="It jams.", message_id="orig-1@acme.com"
        ),
        queue="Support",
    )
    return Actor("agent", "alice", agent.id), t.number


def _sender(service: Service, smtp: Any, clock: FakeClock) -> OutboxSender:
    cfg = SmtpConfig(
        host=smtp.host, port=smtp.port, from_address="support@example.com", from_name="Acme Support"
    )
    return OutboxSender(service.db, cfg, clock=clock)


async def _outbox(service: Service) -> list[Outbox]:
    async with service.db.read() as s:
        return list((await s.execute(select(Outbox).order_by(Outbox.id))).scalars())


async def test_reply_is_delivered_with_threading_headers(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "Hello Carol,\n\nplease try again.\n")
    counts = await _sender(service, smtp_server, clock).send_due()
    assert counts == {"sent": 1, "retry": 0, "failed": 0}
    [got] = smtp_server.wait_for(1)
    msg = got.message
    assert got.rcpt_tos == ["carol@acme.com"]
    assert msg["To"] == "carol@acme.com"
    assert msg["From"] == "Alice Agent via Acme Support <support@example.com>"
    assert msg["Subject"] == f"Re: Printer jam [#{n}]"
    assert msg["In-Reply-To"] == "<orig-1@acme.com>"
    assert "<orig-1@acme.com>" in msg["References"]
    assert msg["Auto-Submitted"] is None  # a human reply
    assert "please try again" in msg.get_content()
    [ob] = await _outbox(service)
    assert ob.status == "sent" and msg["Message-ID"] == f"<{ob.message_id}>"
    detail = await service.ticket_detail(n)
    assert detail.articles[-1].delivery_status == "sent"


async def test_header_injection_in_subject_is_folded(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    actor, n = await _ticket(service, "Help\r\nBcc: x@evil.example")
    await service.add_reply(actor, n, "ok")
    await _sender(service, smtp_server, clock).send_due()
    [got] = smtp_server.wait_for(1)
    raw = got.data.decode("utf-8", "replace")
    assert raw.lower().count("\nsubject:") + raw.lower().startswith("subject:") == 1
    assert "\nBcc:" not in raw and got.rcpt_tos == ["carol@acme.com"]


async def test_smtp_down_then_back_delivers_exactly_once(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    actor, n = await _ticket(service)
    for i in range(3):
        await service.add_reply(actor, n, f"reply {i}")
    smtp_server.stop()
    sender = _sender(service, smtp_server, clock)
    assert (await sender.send_due())["retry"] == 3
    assert all(o.status == "queued" and o.last_error for o in await _outbox(service))
    assert (await sender.send_due())["retry"] == 0  # not due yet: backoff
    smtp_server.start()
    clock.advance(minutes=5)
    assert (await sender.send_due())["sent"] == 3
    clock.advance(hours=3)
    assert (await sender.send_due())["sent"] == 0
    got = smtp_server.wait_for(3)
    assert sorted(m.message.get_content().strip() for m in got) == ["reply 0", "reply 1", "reply 2"]


async def test_4xx_retries_and_5xx_fails_visibly(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "first")
    sender = _sender(service, smtp_server, clock)
    smtp_server.fail_with(451, times=1)
    assert (await sender.send_due())["retry"] == 1
    clock.advance(minutes=5)
    assert (await sender.send_due())["sent"] == 1
    await service.add_reply(actor, n, "second")
    smtp_server.fail_with(550, stage="rcpt")
    assert (await sender.send_due())["failed"] == 1
    failed = (await _outbox(service))[-1]
    assert failed.status == "failed" and failed.last_error and "550" in failed.last_error
    detail = await service.ticket_detail(n)
    assert detail.articles[-1].delivery_status == "failed"


async def test_crash_while_sending_does_not_resend_within_window(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "once")
    sender = _sender(service, smtp_server, clock)
    await sender._claim()  # the process dies right after claiming (state: sending)
    clock.advance(minutes=10)
    assert (await sender.send_due())["sent"] == 0
    clock.advance(minutes=25)
    assert (await sender.send_due())["sent"] == 1
    assert len(smtp_server.wait_for(1)) == 1
