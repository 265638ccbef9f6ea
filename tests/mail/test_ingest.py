"""Ingest pipeline: raw mail -> tickets, deduplication, quarantine, loops and bounces.

Runs on SQLite and on a real PostgreSQL (the `service` fixture is parametrised by `db_url`).
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from sqlalchemy import func, select

import mail_sync.prepare as prepare_mod
from mail_sync.ingest import Ingestor, IngestResult, MailSource
from mail_sync.parse import ParseError
from store.bulk_ingest import MailBatchWriter
from store.models import (
    Article,
    ArticleKind,
    Attachment,
    Blob,
    MailAccount,
    MailSeen,
    Outbox,
    Quarantine,
    Queue,
    Ticket,
)
from store.service import SYSTEM, Actor, Service


def mail(
    subject: str = "Printer broken",
    sender: str = "Alice Customer <alice@example.com>",
    to: str = "support@help.test",
    body: str = "The printer on floor 2 does not print anything since this morning.",
    msgid: str | None = "auto",
    headers: dict[str, str] | None = None,
    attachments: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    if msgid == "auto":
        m["Message-ID"] = make_msgid(domain="example.com")
    elif msgid is not None:
        m["Message-ID"] = f"<{msgid}>"
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    for name, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes()


async def ingest(
    service: Service, *raws: bytes, ingestor: Ingestor | None = None, label: str = "test"
) -> list[IngestResult]:
    ing = ingestor or Ingestor(service)
    items = [ing.prepare(r, MailSource("eml", f"{label} #{i}")) for i, r in enumerate(raws)]
    return await ing.ingest_batch(items)


async def count(service: Service, model: type, *where: object) -> int:
    async with service.db.read() as s:
        return int(
            (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()
        )


async def articles(service: Service, number: int) -> list[Article]:
    return (await service.ticket_detail(number)).articles


async def test_new_mail_becomes_a_ticket_with_raw_blob_and_reason(service: Service) -> None:
    raw = mail(
        body="Labdien! Printeris nedrukā, lūdzu palīdziet. Paldies par palīdzību jau iepriekš."
    )
    (res,) = await ingest(service, raw)
    assert res.outcome == "created" and res.ticket_number is not None
    t = await service.get_ticket(res.ticket_number)
    assert t.subject == "Printer broken"
    assert t.customer is not None and t.customer.email == "alice@example.com"
    (art,) = await articles(service, t.number)
    assert art.kind == ArticleKind.EMAIL_IN.value
    assert "nedrukā" in art.body_text
    assert art.language == "lv" and t.language == "lv"
    assert art.meta["threading"].startswith("no known reference")
    assert art.meta["source"] == "test #0"
    assert "auto" not in art.meta
    assert art.raw_blob is not None
    assert await service.blob(art.raw_blob) == raw


async def test_queue_by_to_or_cc_address_else_default(service: Service) -> None:
    await service.add_queue("Billing", ["billing@help.test"])
    await service.add_queue("Support", ["support@help.test"])
    ing = Ingestor(service, default_queue="Support")
    r1, r2, r3 = await ingest(
        service,
        mail(to="someone@else.test", headers={"Cc": "Billing@Help.test"}),
        mail(to="nobody@help.test"),
        mail(to="x@y.test", headers={"Delivered-To": "billing@help.test"}),
        ingestor=ing,
    )
    t1, t2, t3 = [await service.get_ticket(r.ticket_number or 0) for r in (r1, r2, r3)]
    assert t1.queue is not None and t1.queue.name == "Billing"
    assert t2.queue is not None and t2.queue.name == "Support"
    assert t3.queue is not None and t3.queue.name == "Billing"
    (a1,) = await articles(service, t1.number)
    assert a1.meta["queue"] == "queue Billing: Cc billing@help.test"


async def test_same_message_twice_is_one_article(service: Service) -> None:
    raw = mail(msgid="once@example.com")
    (first,) = await ingest(service, raw)
    (again,) = await ingest(service, raw, label="second folder")
    assert again.outcome == "duplicate"
    assert again.ticket_number == first.ticket_number
    assert await count(service, Article) == 1
    (art,) = await articles(service, first.ticket_number or 0)
    assert art.meta["duplicates"][0]["source"] == "second folder #0"


async def test_same_mail_to_two_of_our_addresses_is_one_ticket(service: Service) -> None:
    await service.add_queue("Support", ["support@help.test"])
    await service.add_queue("Sales", ["sales@help.test"])
    base = mail(to="support@help.test, sales@help.test", msgid="both@example.com")
    copy1 = b"Delivered-To: support@help.test\r\n" + base
    copy2 = b"Delivered-To: sales@help.test\r\n" + base
    # In one transaction (one batch) and across transactions.
    r1, r2 = await ingest(service, copy1, copy2)
    (r3,) = await ingest(service, copy2)
    assert [r1.outcome, r2.outcome, r3.outcome] == ["created", "duplicate", "duplicate"]
    assert await count(service, Ticket) == 1


async def test_no_message_id_dedupes_by_content(service: Service) -> None:
    raw = mail(msgid=None)
    (r1,) = await ingest(service, raw)
    (r2,) = await ingest(service, raw.replace(b"\n", b"\r\n"))  # same mail, CRLF on disk
    (r3,) = await ingest(service, mail(msgid=None, body="A different mail without an id."))
    assert r1.outcome == "created"
    assert r2.outcome == "duplicate" and r2.ticket_number == r1.ticket_number
    assert r3.outcome == "created"


async def test_parse_failure_is_quarantined_and_blocks_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = prepare_mod.parse_mail

    def flaky(raw: bytes, **kw: object) -> object:
        if b"POISON" in raw:
            raise ParseError("time limit of 10s exceeded during MIME parsing")
        return real(raw, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare_mod, "parse_mail", flaky)
    poison = mail(subject="POISON", msgid="poison@example.com")
    results = await ingest(service, mail(subject="before"), poison, mail(subject="after"))
    assert [r.outcome for r in results] == ["created", "quarantined", "created"]
    async with service.db.read() as s:
        (q,) = (await s.execute(select(Quarantine))).scalars().all()
    assert q.raw == poison
    assert "time limit" in q.error
    assert q.status == "held"
    assert q.source == "test #1"


async def test_ingest_failure_rolls_back_only_that_mail(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Service.create_ticket

    async def broken(self: Service, actor: Actor, **kw: object) -> Ticket:
        if kw.get("subject") == "explode":
            await real(self, actor, **kw)  # type: ignore[arg-type]  # writes, then fails
            raise RuntimeError("boom")
        return await real(self, actor, **kw)  # type: ignore[arg-type]

    real_write = MailBatchWriter.write

    async def broken_write(self: MailBatchWriter) -> None:
        await real_write(self)  # writes the whole segment, then fails
        if any(a.data.subject == "explode" for a in self.articles):
            raise RuntimeError("bulk boom")

    monkeypatch.setattr(Service, "create_ticket", broken)
    monkeypatch.setattr(MailBatchWriter, "write", broken_write)
    results = await ingest(
        service, mail(subject="one"), mail(subject="explode"), mail(subject="two")
    )
    # The bulk write of all three failed and was rolled back; one by one, only "explode" fails.
    assert [r.outcome for r in results] == ["created", "quarantined", "created"]
    assert "RuntimeError: boom" in results[1].reason
    assert await count(service, Ticket) == 2  # the half-written tickets were rolled back
    assert await count(service, Article) == 2
    assert await count(service, Quarantine) == 1
    numbers = sorted(r.ticket_number or 0 for r in results if r.ticket_number)
    assert numbers == [numbers[0], numbers[0] + 1]  # no number burnt by the rolled-back write


async def test_imap_source_records_mail_seen_and_skips_on_second_run(service: Service) -> None:
    await service.add_queue("Support")
    async with service.db.write() as s:
        acct = MailAccount(name="a", host="h", port=1, username="u", folders=["INBOX"])
        s.add(acct)
        await s.flush()
        acct_id = acct.id
    ing = Ingestor(service)
    src = MailSource("imap", "imap a/INBOX UID 7", acct_id, "INBOX", 42, 7)
    bad = MailSource("imap", "imap a/INBOX UID 8", acct_id, "INBOX", 42, 8)
    item = ing.prepare(mail(), src)
    broken = ing.prepare(b"", bad)
    broken.parsed, broken.error = None, "parse error: test"
    r1, r2 = await ing.ingest_batch([item, broken])
    assert (r1.outcome, r2.outcome) == ("created", "quarantined")
    r3, r4 = await ing.ingest_batch([item, broken])
    assert (r3.outcome, r4.outcome) == ("seen", "seen")
    async with service.db.read() as s:
        seen = {
            (m.uid, m.article_id, m.quarantine_id)
            for m in (await s.execute(select(MailSeen))).scalars()
        }
    assert seen == {(7, r1.article_id, None), (8, None, r2.quarantine_id)}


async def test_auto_reply_new_mail_is_stored_flagged_and_never_acknowledged(
    service: Service,
) -> None:
    await service.add_queue("Support", ["support@help.test"])
    await service.add_canned("ack", "Hello {{customer.name}}, we got ticket {{ticket.number}}.")
    async with service.db.write() as s:
        q = (await s.execute(select(Queue))).scalar_one()
        q.settings = {"ack": "ack"}
    human, robot, listmail, ours = await ingest(
        service,
        mail(subject="Need help"),
        mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}),
        mail(subject="Newsletter", headers={"Precedence": "bulk", "List-Id": "<news.example.com>"}),
        mail(sender="support@help.test", subject="Loop"),
    )
    assert [r.outcome for r in (human, robot, listmail, ours)] == ["created"] * 4
    metas = {}
    for r in (human, robot, listmail, ours):
        (art,) = [a for a in await articles(service, r.ticket_number or 0) if a.kind == "email_in"]
        metas[r.ticket_number] = art.meta
    assert "auto" not in metas[human.ticket_number]
    assert metas[robot.ticket_number]["auto"] is True
    assert metas[robot.ticket_number]["reason"] == "Auto-Submitted: auto-replied"
    assert metas[listmail.ticket_number]["reason"].startswith("Precedence: bulk")
    assert "own addresses" in metas[ours.ticket_number]["reason"]
    async with service.db.read() as s:
        acks = (await s.execute(select(Outbox))).scalars().all()
    assert [a.ticket_id for a in acks] == [(await service.get_ticket(human.ticket_number or 0)).id]
    assert metas[robot.ticket_number]["ack"].startswith("acknowledgement suppressed")


def bounce_for(original_msgid: str, to: str = "support@help.test") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce-1@mx.example.com>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BND"\r\n'
        "\r\n"
        "--BND\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        "--BND\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        "Final-Recipient: rfc822; alice@example.com\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
        "--BND\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        "From: support@help.test\r\n"
        "To: alice@example.com\r\n"
        "Subject: Re: Printer broken [#1]\r\n"
        f"Message-ID: <{original_msgid}>\r\n"
        "--BND--\r\n"
    ).encode()


async def test_bounce_is_attached_to_the_original_ticket_without_reopening(
    service: Service,
) -> None:
    (r,) = await ingest(service, mail())
    number = r.ticket_number or 0
    await service.add_agent("anna", "Anna")
    anna = Actor("agent", "anna", (await service.agent("anna")).id)
    reply = await service.add_reply(anna, number, "Please restart the printer.")
    assert reply.message_id
    (b,) = await ingest(service, bounce_for(reply.message_id))
    assert b.outcome == "threaded" and b.ticket_number == number
    assert "bounce of" in b.reason
    t = await service.get_ticket(number)
    assert t.status == "answered"  # not reopened
    arts = await articles(service, number)
    assert arts[-1].kind == "email_in"
    assert arts[-1].meta["auto"] is True
    assert await count(service, Ticket) == 1


async def test_bounce_of_unknown_mail_still_becomes_a_ticket(service: Service) -> None:
    (b,) = await ingest(service, bounce_for("never-sent@help.test"))
    assert b.outcome == "created"
    assert b.reason.startswith("bounce whose original message is unknown")


async def test_attachment_over_limit_is_left_out_with_a_note(service: Service) -> None:
    ing = Ingestor(service, max_attachment_bytes=1000)
    raw = mail(attachments=[("small.txt", b"x" * 100), ("huge.bin", b"y" * 5000)])
    (r,) = await ingest(service, raw, ingestor=ing)
    arts = await articles(service, r.ticket_number or 0)
    email_in = [a for a in arts if a.kind == "email_in"][0]
    assert [a.filename for a in email_in.attachments] == ["small.txt"]
    notes = [a for a in arts if a.kind == ArticleKind.NOTE.value]
    assert len(notes) == 1 and "huge.bin" in notes[0].body_text
    assert await count(service, Attachment) == 1


async def test_message_over_size_limit_keeps_its_header(service: Service) -> None:
    ing = Ingestor(service, max_message_bytes=2000)
    raw = mail(subject="Big one", body="z" * 10_000)
    (r,) = await ingest(service, raw, ingestor=ing)
    assert r.outcome == "created"
    t = await service.get_ticket(r.ticket_number or 0)
    assert t.subject == "Big one"
    arts = await articles(service, t.number)
    assert "over the" in [a for a in arts if a.kind == "note"][0].body_text
    async with service.db.read() as s:
        sizes = (await s.execute(select(Blob.size))).scalars().all()
    assert max(sizes) < 2000


async def test_attachments_are_deduplicated_by_hash(service: Service) -> None:
    data = b"%PDF-1.4 same file" * 50
    await ingest(
        service,
        mail(attachments=[("a.pdf", data)]),
        mail(subject="other", attachments=[("b.pdf", data)]),
    )
    async with service.db.read() as s:
        shas = (await s.execute(select(Attachment.sha256))).scalars().all()
    assert len(shas) == 2 and len(set(shas)) == 1


async def test_audit_trail_names_the_mail_daemon(service: Service) -> None:
    # The mail path writes as the MAIL actor: the audit trail says who did it.
    (r,) = await ingest(service, mail())
    detail = await service.ticket_detail(r.ticket_number or 0)
    assert {a.actor for a in detail.audit} == {"mail:sync"}
    assert str(SYSTEM) not in {a.actor for a in detail.audit}


async def test_reused_message_id_with_other_content_is_not_dropped(service: Service) -> None:
    # Broken mailers reuse one Message-ID for every mail: a different mail must not vanish.
    r1, r2 = await ingest(
        service,
        mail(subject="Invoice 1", msgid="xxx@broken.example"),
        mail(subject="Invoice 2", body="Another one.", msgid="xxx@broken.example"),
    )
    assert (r1.outcome, r2.outcome) == ("created", "created")
    (art,) = await articles(service, r2.ticket_number or 0)
    assert "different content" in art.meta["message_id_collision"]
