"""Automatic acknowledgements never start a mail loop: RFC 3834 marks, Return-Path, rate
limits, and two helpdesks acknowledging each other through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import select

from mail_sync.ingest import Ingestor, IngestResult, MailSource
from mail_sync.outbox import OutboxSender, SmtpConfig
from store.engine import Database
from store.migrate import upgrade
from store.models import Outbox, Queue
from store.service import Service
from tests.conftest import FakeClock
from tests.services.smtp import ReceivedMessage, SMTPServer

ACK = "Hello {{customer.name}}, we have your request as ticket {{ticket.number}}."


def mail(
    sender: str,
    to: str,
    subject: str = "Printer broken",
    body: str = "The printer on floor 2 does not print.",
    headers: dict[str, str] | None = None,
) -> bytes:
    m = EmailMessage()
    for k, v in (headers or {}).items():
        m[k] = v
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip(">") or "x.test")
    m.set_content(body)
    return m.as_bytes()


class Helpdesk:
    """One helpdesk store with an acknowledging queue, its sender and its inbox."""

    def __init__(self, service: Service, address: str, smtp: SMTPServer) -> None:
        self.service = service
        self.address = address
        self.cfg = SmtpConfig(
            host=smtp.host, port=smtp.port, from_address=address, from_name="Helpdesk"
        )
        self.sender = OutboxSender(service.db, self.cfg, clock=service.clock)
        self.ingestor = Ingestor(service)

    @classmethod
    async def create(cls, service: Service, address: str, smtp: SMTPServer) -> Helpdesk:
        await service.add_queue("Support", [address])
        await service.add_canned("ack", ACK)
        async with service.db.write() as s:
            q = (await s.execute(select(Queue))).scalar_one()
            q.settings = {"ack": "ack"}
        desk = cls(service, address, smtp)
        await service.set_setting("smtp", desk.cfg.to_setting())
        return desk

    async def receive(self, raw: bytes, label: str = "mail") -> IngestResult:
        [result] = await self.ingestor.ingest_batch(
            [self.ingestor.prepare(raw, MailSource("eml", label))]
        )
        return result

    async def acks(self) -> list[Outbox]:
        async with self.service.db.read() as s:
            return list(
                (await s.execute(select(Outbox).where(Outbox.kind == "ack").order_by(Outbox.id)))
                .scalars()
                .all()
            )


@pytest.fixture
async def other_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    await upgrade(db)
    yield db
    await db.dispose()


def strip_auto_headers(raw: bytes) -> bytes:
    """What a careless relay or forwarder does: drop the automatic-mail headers."""
    head, sep, body = (
        raw.partition(b"\n\n") if b"\r\n\r\n" not in raw else raw.partition(b"\r\n\r\n")
    )
    kept = re.sub(
        rb"(?im)^(auto-submitted|x-auto-response-suppress|precedence):.*(\r?\n[ \t].*)*\r?\n",
        b"",
        head + b"\n",
    )
    return kept.rstrip(b"\r\n") + sep + body


@pytest.mark.parametrize("relay_strips_marks", [False, True], ids=["marked", "marks-stripped"])
async def test_two_helpdesks_acknowledging_each_other_converge(
    service: Service,
    other_db: Database,
    clock: FakeClock,
    smtp_server: SMTPServer,
    relay_strips_marks: bool,
) -> None:
    a = await Helpdesk.create(service, "support@a.test", smtp_server)
    b = await Helpdesk.create(Service(other_db, clock=clock), "help@b.test", smtp_server)
    by_address = {a.address: a, b.address: b}
    # Someone at B writes to A from B's own helpdesk address (plain, human mail).
    first = await a.receive(mail("Help Desk B <help@b.test>", "support@a.test"), "start")
    assert first.outcome == "created"
    delivered: list[ReceivedMessage] = []
    for _round in range(10):
        before = len(smtp_server.messages)
        for desk in (a, b):
            await desk.sender.send_due()
        new = smtp_server.messages[before:]
        if not new:
            break
        for msg in new:
            delivered.append(msg)
            for rcpt in msg.rcpt_tos:
                raw = strip_auto_headers(msg.data) if relay_strips_marks else msg.data
                await by_address[rcpt].receive(raw, f"from {msg.mail_from}")
        clock.advance(minutes=1)
    else:
        pytest.fail(f"mail loop: still sending after 10 rounds ({len(delivered)} mails)")
    a_acks, b_acks = await a.acks(), await b.acks()
    assert len(a_acks) == 1 and a_acks[0].rcpt_to == ["help@b.test"]
    # B never answers A's acknowledgement while it carries its RFC 3834 marks; without them
    # it answers once, and A threads that answer into the existing ticket (no new ack).
    assert len(b_acks) == (1 if relay_strips_marks else 0)
    assert len(delivered) == len(a_acks) + len(b_acks)
    detail = await a.service.ticket_detail(first.ticket_number or 0)
    kinds = [x.kind for x in detail.articles]
    assert kinds.count("email_out") == 1
    assert kinds.count("email_in") == (2 if relay_strips_marks else 1)


async def test_no_acknowledgement_to_robots_lists_bounces_or_ourselves(
    service: Service, clock: FakeClock, smtp_server: SMTPServer
) -> None:
    desk = await Helpdesk.create(service, "support@a.test", smtp_server)
    robots = {
        "auto-reply": mail(
            "carol@customer.test", desk.address, "Out of office",
            headers={"Auto-Submitted": "auto-replied"},
        ),
        "mailing list": mail(
            "list@lists.test", desk.address, "Weekly digest",
            headers={"List-Id": "<digest.lists.test>", "Precedence": "list"},
        ),
        "bounce": (
            "Return-Path: <>\r\nFrom: Mail Delivery System <MAILER-DAEMON@mx.test>\r\n"
            f"To: {desk.address}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <b1@mx.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.test\r\n\r\nFinal-Recipient: rfc822; nobody@x.test\r\n"
            "Action: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
        ).encode(),
        "empty return path": mail(
            "dave@customer.test", desk.address, headers={"Return-Path": "<>"}
        ),
        "noreply sender": mail("no-reply@shop.test", desk.address, "Your order"),
        "our own address": mail(desk.address, desk.address, "Forwarded to ourselves"),
    }  # fmt: skip
    for label, raw in robots.items():
        await desk.receive(raw, label)
    assert await desk.acks() == []
    assert (await desk.sender.send_due())["sent"] == 0
    assert smtp_server.messages == []


async def test_acknowledgement_goes_to_the_return_path_marked_auto_replied(
    service: Service, clock: FakeClock, smtp_server: SMTPServer
) -> None:
    desk = await Helpdesk.create(service, "support@a.test", smtp_server)
    raw = mail(
        "Carol <carol@customer.test>",
        desk.address,
        headers={"Return-Path": "<bounces+carol=customer.test@mailer.test>"},
    )
    created = await desk.receive(raw)
    assert (await desk.sender.send_due())["sent"] == 1
    [got] = smtp_server.wait_for(1)
    assert got.rcpt_tos == ["bounces+carol=customer.test@mailer.test"]
    msg = got.message
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Subject"] == f"Re: Printer broken [#{created.ticket_number}]"
    assert f"ticket {created.ticket_number}" in msg.get_content()
    assert msg["In-Reply-To"] is not None and msg["In-Reply-To"].endswith("@customer.test>")


async def test_acknowledgements_are_rate_limited_per_sender(
    service: Service, clock: FakeClock, smtp_server: SMTPServer
) -> None:
    desk = await Helpdesk.create(service, "support@a.test", smtp_server)
    for i in range(5):
        await desk.receive(mail("carol@customer.test", desk.address, f"Problem {i}"), f"m{i}")
        clock.advance(minutes=5)
    await desk.receive(mail("dan@customer.test", desk.address, "Other sender"), "dan")
    acks = await desk.acks()
    assert [a.rcpt_to for a in acks] == [["carol@customer.test"]] * 3 + [["dan@customer.test"]]
    clock.advance(hours=1)
    await desk.receive(mail("carol@customer.test", desk.address, "An hour later"), "later")
    assert len(await desk.acks()) == 5
    assert (await desk.sender.send_due())["sent"] == 5
