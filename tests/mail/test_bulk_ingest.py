"""Bulk ingest: a batch of mails written in a few statements gives the store the same tickets,
articles, audit lines and change-feed events as ingesting them one by one.

Runs on SQLite and on a real PostgreSQL (`db_url`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from mail_sync.ingest import IncomingMail, Ingestor, IngestResult, MailSource
from store import bulk_ingest, sla
from store.engine import Database
from store.migrate import upgrade
from store.models import (
    Article,
    AuditEvent,
    Event,
    MailAccount,
    MailSeen,
    Outbox,
    Quarantine,
    Queue,
    Setting,
    Ticket,
)
from store.msgid import mail_secret, verify_message_id
from store.service import Service
from tests.conftest import FakeClock
from tests.services.postgres import PostgresServer


def mail(
    subject: str,
    body: str,
    *,
    sender: str = "Alice Customer <alice@example.com>",
    msgid: str | None = None,
    in_reply_to: str | None = None,
    to: str = "support@help.test",
    headers: dict[str, str] | None = None,
    html: str | None = None,
    attachment: bytes | None = None,
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    if msgid:
        m["Message-ID"] = f"<{msgid}>"
    if in_reply_to:
        m["In-Reply-To"] = f"<{in_reply_to}>"
        m["References"] = f"<{in_reply_to}>"
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    if html:
        m.add_alternative(html, subtype="html")
    if attachment is not None:
        m.add_attachment(attachment, maintype="application", subtype="pdf", filename="scan.pdf")
    return m.as_bytes()


@pytest.fixture
async def other_service(
    db_url: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[Service]:
    """A second empty store on the same backend as `service` (same clock)."""
    if db_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("pg_server")
        url = server.create_database(server.unique_name("bulk"))
    db = Database(url)
    await upgrade(db)
    yield Service(db, clock=clock)
    await db.dispose()


async def setup_store(service: Service) -> int:
    await service.add_queue("Support", ["support@help.test"])
    await service.add_queue("Billing", ["billing@help.test"])
    await service.add_organization("Acme", ["acme.lv"])
    async with service.db.write() as s:
        acct = MailAccount(name="imap", host="h", port=1, username="desk@help.test")
        s.add(acct)
        await s.flush()
        return acct.id


def items_for(ing: Ingestor, account_id: int, raws: Sequence[bytes | None]) -> list[IncomingMail]:
    """IMAP-sourced items (UIDs 1..n); None stands for a mail the parser refused."""
    out = []
    for uid, raw in enumerate(raws, start=1):
        src = MailSource("imap", f"imap INBOX UID {uid}", account_id, "INBOX", 7, uid)
        if raw is None:
            out.append(IncomingMail(b"\x00garbage", src, error="parse error: refused"))
        else:
            out.append(ing.prepare(raw, src))
    return out


async def snapshot(service: Service) -> dict[str, Any]:
    """Everything the console and `mail explain` show, in a comparable form."""
    async with service.db.read() as s:
        tickets = (await s.execute(select(Ticket).order_by(Ticket.number))).unique().scalars()
        ticket_rows = [
            (
                t.number,
                t.subject,
                t.status,
                t.version,
                t.priority,
                t.language,
                t.queue.name if t.queue else None,
                t.customer.email if t.customer else None,
                t.organization.name if t.organization else None,
                t.updated_at,
                t.last_customer_at,
                t.next_due_at,
            )
            for t in tickets
        ]
        articles = (await s.execute(select(Article).order_by(Article.id))).unique().scalars()
        article_rows = [
            (
                a.id,
                a.ticket_id,
                a.kind,
                a.author_customer_id,
                a.from_addr,
                a.to_addrs,
                a.subject,
                a.message_id,
                a.in_reply_to,
                a.references,
                a.content_hash,
                a.body_text,
                a.quoted_text,
                a.body_html,
                a.language,
                a.raw_blob,
                a.meta,
                a.created_at,
                [(x.filename, x.mime_type, x.size, x.sha256) for x in a.attachments],
            )
            for a in articles
        ]
        audit = [
            (r.ticket_id, r.actor, r.action, r.field, r.old_value, r.new_value)
            for r in (await s.execute(select(AuditEvent).order_by(AuditEvent.id))).scalars()
        ]
        events = [
            (e.ticket_id, e.kind, e.actor)
            for e in (await s.execute(select(Event).order_by(Event.id))).scalars()
            if e.ticket_id is not None
        ]
        seen = [
            (m.uid, m.article_id, m.quarantine_id)
            for m in (await s.execute(select(MailSeen).order_by(MailSeen.uid))).scalars()
        ]
        quarantined = [
            (q.uid, q.error, q.raw)
            for q in (await s.execute(select(Quarantine).order_by(Quarantine.id))).scalars()
        ]
    return {
        "tickets": ticket_rows,
        "articles": article_rows,
        "audit": audit,
        "events": events,
        "seen": seen,
        "quarantine": quarantined,
    }


def summary(results: Sequence[IngestResult]) -> list[tuple[str, str, int | None, int | None]]:
    return [(r.outcome, r.reason, r.ticket_number, r.article_id) for r in results]


def mixed_batch() -> list[bytes | None]:
    return [
        mail("Printer broken", "The printer on floor 2 prints nothing.", msgid="a1@x"),
        mail(
            "Rēķins par oktobri",
            "Labdien! Mēs vēl neesam saņēmuši rēķinu par oktobri, lūdzu atsūtiet.",
            sender="Anna Bērziņa <anna@acme.lv>",
            msgid="b1@x",
            to="billing@help.test",
            attachment=b"%PDF-1.4 fake" * 50,
        ),
        # a reply to the first mail, in the same batch: threads and reopens (new -> open)
        mail(
            "Re: Printer broken",
            "Still broken after the restart.",
            msgid="a2@x",
            in_reply_to="a1@x",
        ),
        None,  # quarantined in the middle: its neighbours are not lost
        # the same mail delivered twice (two of our addresses): one article
        mail("Login", "I cannot log in since Monday.", msgid="c1@x", sender="bob@example.com"),
        mail("Login", "I cannot log in since Monday.", msgid="c1@x", sender="bob@example.com"),
        # an auto-reply to the reply above: attached quietly (status kept)
        mail(
            "Out of office",
            "I am away until Monday.",
            msgid="a3@x",
            in_reply_to="a2@x",
            headers={"Auto-Submitted": "auto-replied"},
        ),
        # no Message-ID, twice: one article (content hash)
        mail("No id", "Hello without a Message-ID, same bytes twice.", sender="n@example.com"),
        mail("No id", "Hello without a Message-ID, same bytes twice.", sender="n@example.com"),
        # a subject tag naming no ticket: the one-by-one path (a segment break) ...
        mail("Question [#999]", "Is this ticket 999?", msgid="t1@x", sender="t@example.com"),
        # ... and a reply to a mail of the first segment, after the break, still threads
        mail(
            "Re: Rēķins",
            "Any news on the invoice? We still have not received it, and our "
            "accounting department needs it before the end of the month.",
            msgid="b2@x",
            in_reply_to="b1@x",
            sender="Anna Bērziņa <anna@acme.lv>",
            html="<p>Any news on the <b>invoice</b>?</p>",
        ),
        # and a reply to the mail the one-by-one path just created
        mail(
            "Re: Question [#999]",
            "Also: the 998 one.",
            msgid="t2@x",
            in_reply_to="t1@x",
            sender="t@example.com",
        ),
    ]


@pytest.mark.parametrize("with_sla", [False, True], ids=["no-sla", "sla"])
async def test_bulk_batch_equals_one_by_one(
    service: Service, other_service: Service, with_sla: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk_acct = await setup_store(service)
    single_acct = await setup_store(other_service)
    if with_sla:
        for svc in (service, other_service):
            await sla.add_calendar(svc.db, "office", timezone="UTC", hours="mon-fri 09:00-17:00")
            await sla.add_policy(
                svc.db,
                "billing",
                calendar="office",
                condition="queue:Billing",
                targets=sla.parse_targets(first_response="2h", resolution="24h"),
            )
    raws = mixed_batch()

    # the batch's inserts as a large batch makes them (PostgreSQL: COPY), the single mails'
    # as SQLAlchemy's INSERT: the rows must not differ
    monkeypatch.setattr(bulk_ingest, "COPY_MIN_ROWS", 1)
    bulk = Ingestor(service, default_queue="Support")
    bulk_results = await bulk.ingest_batch(items_for(bulk, bulk_acct, raws))

    monkeypatch.setattr(bulk_ingest, "COPY_MIN_ROWS", 10**9)
    single = Ingestor(other_service, default_queue="Support")
    single_results: list[IngestResult] = []
    for item in items_for(single, single_acct, raws):
        single_results += await single.ingest_batch([item])  # one mail per transaction

    assert [r.outcome for r in bulk_results] == [
        "created", "created", "threaded", "quarantined", "created", "duplicate", "threaded",
        "created", "duplicate", "created", "threaded", "threaded",
    ]  # fmt: skip
    assert summary(bulk_results) == summary(single_results)
    got, want = await snapshot(service), await snapshot(other_service)
    for key in want:
        assert got[key] == want[key], key
    if with_sla:  # the SLA clock runs on the Billing ticket, as the service would set it
        assert [t[11] is not None for t in got["tickets"]] == [False, True, False, False, False]

    # What a user sees: the reply in the same batch threaded and reopened the ticket ...
    detail = await service.ticket_detail(bulk_results[0].ticket_number or 0)
    assert [a.message_id for a in detail.articles] == ["a1@x", "a2@x", "a3@x"]
    assert detail.ticket.status == "open"
    assert [a.action for a in detail.audit] == [
        "created",
        "status",
        "customer-replied",
        "mail-attached",
    ]
    assert detail.articles[1].meta["threading"] == (
        f"In-Reply-To <a1@x> is a stored message of ticket #{detail.ticket.number}"
    )
    # ... a reply in another language moves the ticket's language ...
    invoice = await service.get_ticket(bulk_results[1].ticket_number or 0)
    assert invoice.language == "en" and invoice.queue is not None
    assert invoice.queue.name == "Billing" and invoice.organization is not None
    # ... the duplicate delivery is recorded on the one article ...
    dup = await service.ticket_detail(bulk_results[4].ticket_number or 0)
    (art,) = dup.articles
    assert [d["why"] for d in art.meta["duplicates"]] == ["same Message-ID <c1@x>, same bytes"]
    assert bulk_results[5].article_id == art.id
    # ... and the quarantined mail kept its raw bytes and its server key.
    async with service.db.read() as s:
        (q,) = (await s.execute(select(Quarantine))).scalars().all()
        assert q.raw == b"\x00garbage" and q.uid == 4
        n_seen = (await s.execute(select(func.count()).select_from(MailSeen))).scalar_one()
    assert n_seen == len(raws)


async def test_second_run_of_the_same_batch_is_all_seen(service: Service) -> None:
    acct = await setup_store(service)
    ing = Ingestor(service, default_queue="Support")
    raws = mixed_batch()
    first = await ing.ingest_batch(items_for(ing, acct, raws))
    before = await snapshot(service)
    again = await ing.ingest_batch(items_for(ing, acct, raws))
    assert [r.outcome for r in again] == ["seen"] * len(raws)
    assert [r.article_id for r in again] == [r.article_id for r in first]
    assert await snapshot(service) == before


async def test_reimport_without_server_keys_finds_every_duplicate(service: Service) -> None:
    await setup_store(service)
    ing = Ingestor(service, default_queue="Support")
    raws = [r for r in mixed_batch() if r is not None]
    items = [ing.prepare(r, MailSource("mbox", f"mbox #{i}")) for i, r in enumerate(raws)]
    await ing.ingest_batch(items)
    async with service.db.read() as s:
        n_articles = (await s.execute(select(func.count()).select_from(Article))).scalar_one()
    items = [ing.prepare(r, MailSource("mbox", f"again #{i}")) for i, r in enumerate(raws)]
    again = await ing.ingest_batch(items)
    assert {r.outcome for r in again} == {"duplicate"}
    async with service.db.read() as s:
        assert (await s.execute(select(func.count()).select_from(Article))).scalar_one() == (
            n_articles
        )


async def test_time_budget_commits_a_prefix_and_the_rest_follows(service: Service) -> None:
    acct = await setup_store(service)
    ing = Ingestor(service, default_queue="Support")
    raws = [mail(f"Mail {i}", f"Body number {i} of many.", msgid=f"m{i}@x") for i in range(30)]
    raws += [mail("Re: Mail 0", "A reply at the end.", msgid="r@x", in_reply_to="m0@x")]
    items = items_for(ing, acct, raws)
    done: list[IngestResult] = []
    while items:
        results = await ing.ingest_batch(items, max_seconds=0.0)  # at least one per call
        assert results
        done += results
        items = items[len(results) :]
    assert [r.outcome for r in done] == ["created"] * 30 + ["threaded"]
    assert done[-1].ticket_number == done[0].ticket_number
    numbers = [r.ticket_number for r in done[:30]]
    assert numbers == list(range(numbers[0] or 0, (numbers[0] or 0) + 30))  # no gaps


async def test_a_bug_while_planning_loses_no_mail(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mail_sync.ingest as ingest_mod

    real = ingest_mod.auto_reason

    def broken(parsed: Any, own: set[str], *rest: Any) -> tuple[str | None, bool]:
        if parsed.subject == "explode":
            raise KeyError("planner bug")
        return real(parsed, own, *rest)

    monkeypatch.setattr(ingest_mod, "auto_reason", broken)
    acct = await setup_store(service)
    ing = Ingestor(service, default_queue="Support")
    raws = [
        mail("one", "First mail of the batch.", msgid="p1@x"),
        mail("explode", "This one trips the planner.", msgid="p2@x"),
        mail("two", "Third mail, a reply to the first.", msgid="p3@x", in_reply_to="p1@x"),
    ]
    results = await ing.ingest_batch(items_for(ing, acct, raws))
    assert [r.outcome for r in results] == ["created", "quarantined", "threaded"]
    assert "KeyError" in results[1].reason
    assert results[2].ticket_number == results[0].ticket_number


ACK = (
    "Hello {{customer.name}} ({{customer.email}}, {{organization.name}}): ticket "
    "{{ticket.number}} ({{ticket.subject}}) is with {{agent.name}}."
)


async def setup_acks(service: Service) -> int:
    """`setup_store` with acknowledgements on both queues (Billing: one per hour)."""
    acct = await setup_store(service)
    await service.add_canned("ack", ACK)
    async with service.db.write() as s:
        for q in (await s.execute(select(Queue))).scalars():
            q.settings = {"ack": "ack"} | ({"ack_limit_per_hour": 1} if q.name == "Billing" else {})
    return acct


def ack_batch() -> list[bytes | None]:
    alice = "Alice Customer <alice@example.com>"
    anna = "Anna Bērziņa <anna@acme.lv>"
    return [
        mail("Printer broken", "The printer prints nothing.", msgid="k1@x", sender=alice),
        mail("Re: Printer broken", "Still broken.", msgid="k2@x", in_reply_to="k1@x"),
        mail("Scanner too", "And the scanner.", msgid="k3@x", sender=alice),
        mail("Away", "Out of office.", msgid="k4@x", sender="bot@example.com",
             headers={"Auto-Submitted": "auto-replied"}),
        mail("Notice", "Do not reply.", msgid="k5@x", sender="noreply@example.com"),
        mail("Bounce-ish", "Null sender.", msgid="k6@x", sender="carl@example.com",
             headers={"Return-Path": "<>"}),
        mail("Invoice", "Where is it?", msgid="k7@x", sender=anna, to="billing@help.test"),
        mail("Invoice 2", "And the next one?", msgid="k8@x", sender=anna, to="billing@help.test"),
        mail("Mouse", "The mouse is gone.", msgid="k9@x", sender=alice),
        mail("Keyboard", "Keys stick.", msgid="k10@x", sender=alice),  # 4th in an hour
        mail("Monitor", "Flickers.", msgid="k11@x", sender="Dora <dora@example.com>",
             headers={"Return-Path": "<bounces+dora@lists.example.com>"}),
    ]  # fmt: skip


async def outbox_rows(service: Service) -> list[tuple[Any, ...]]:
    async with service.db.read() as s:
        secret = await mail_secret(s)
        rows = (await s.execute(select(Outbox).order_by(Outbox.id))).scalars().all()
        return [
            (
                o.article_id,
                o.ticket_id,
                verify_message_id(o.message_id, secret),
                o.rcpt_to,
                o.rcpt_to_key,
                o.kind,
                o.status,
                o.next_attempt_at,
                o.created_at,
            )
            for o in rows
        ]


def mask_our_ids(snap: dict[str, Any], secret: bytes) -> None:
    """Our outgoing Message-IDs carry a random nonce: compare the ticket they verify for."""
    snap["articles"] = [
        (*a[:7], ("ours", verify_message_id(a[7], secret)) if a[2] == "email_out" else a[7], *a[8:])
        for a in snap["articles"]
    ]


async def test_acknowledgements_in_bulk_equal_one_by_one(
    service: Service, other_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk_acct = await setup_acks(service)
    single_acct = await setup_acks(other_service)
    raws = ack_batch()

    one_by_one: list[str] = []
    real_one = Ingestor.ingest_one

    async def counting(self: Ingestor, session: Any, ctx: Any, item: IncomingMail) -> Any:
        one_by_one.append(item.source.label)
        return await real_one(self, session, ctx, item)

    monkeypatch.setattr(Ingestor, "ingest_one", counting)
    bulk = Ingestor(service, default_queue="Support")
    bulk_results = await bulk.ingest_batch(items_for(bulk, bulk_acct, raws))
    assert one_by_one == []  # acknowledging queues no longer leave the bulk path
    monkeypatch.setattr(Ingestor, "ingest_one", real_one)

    single = Ingestor(other_service, default_queue="Support")
    single_results: list[IngestResult] = []
    for item in items_for(single, single_acct, raws):
        single_results += await single.ingest_batch([item])

    assert summary(bulk_results) == summary(single_results)
    got, want = await snapshot(service), await snapshot(other_service)
    async with service.db.read() as s:
        mask_our_ids(got, await mail_secret(s))
    async with other_service.db.read() as s:
        mask_our_ids(want, await mail_secret(s))
    for key in want:
        for g, w in zip(got[key], want[key], strict=True):
            assert g == w, key
    assert await outbox_rows(service) == await outbox_rows(other_service)

    # What a user sees: who got an acknowledgement, and why the others did not.
    outcomes = {
        a[7]: a[16].get("ack") for a in got["articles"] if a[2] == "email_in" and a[16].get("ack")
    }
    assert outcomes == {
        "k1@x": "acknowledgement queued",
        "k3@x": "acknowledgement queued",
        "k4@x": "acknowledgement suppressed: sender mail is automatic "
        "(Auto-Submitted / auto-reply headers)",
        "k5@x": "acknowledgement suppressed: sender noreply@example.com does not take replies",
        "k6@x": "acknowledgement suppressed: the mail's Return-Path is <> (automatic mail)",
        "k7@x": "acknowledgement queued",
        "k8@x": "acknowledgement suppressed: 1 already sent to anna@acme.lv in the last hour "
        "(limit 1)",
        "k9@x": "acknowledgement queued",
        "k10@x": "acknowledgement suppressed: 3 already sent to alice@example.com in the last "
        "hour (limit 3)",
        "k11@x": "acknowledgement queued",
    }
    outbox = await outbox_rows(service)
    assert [o[4] for o in outbox] == [
        "alice@example.com",
        "alice@example.com",
        "anna@acme.lv",
        "alice@example.com",
        "bounces+dora@lists.example.com",  # RFC 3834: to the Return-Path
    ]
    invoice = await service.ticket_detail(bulk_results[6].ticket_number or 0)
    ack = invoice.articles[-1]
    assert ack.kind == "email_out" and ack.delivery_status == "queued"
    assert ack.subject == "Re: Invoice" and ack.in_reply_to == "k7@x"
    assert ack.body_text == (
        f"Hello Anna Bērziņa (anna@acme.lv, Acme): ticket {invoice.ticket.number} (Invoice) "
        "is with Billing."
    )


async def test_our_message_ids_and_subject_tags_thread_in_bulk(
    service: Service, other_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from store.msgid import make_message_id

    alice = "Alice Customer <alice@example.com>"
    first = [
        mail("Printer broken", "The printer prints nothing.", msgid="h1@x", sender=alice),
        mail("Invoice", "Where is it?", msgid="h2@x", sender="anna@acme.lv"),
    ]

    async def second(svc: Service, numbers: list[int]) -> list[bytes | None]:
        """Mails naming the first batch's tickets by our Message-ID or by subject tag."""
        async with svc.db.read() as s:
            ours = make_message_id(numbers[0], await mail_secret(s), "help.test")
        printer, invoice = (f"[#{n}]" for n in numbers)
        return [
            mail("Re: Printer broken", "Reply to your mail.", msgid="h3@x", in_reply_to=ours),
            mail("Re: x", "Guessed id.", msgid="h4@x", in_reply_to="t1.deadbeef0123456789abcdef@x"),
            mail(f"AW: {printer} Printer", "By tag.", msgid="h5@x", sender=alice),
            mail(f"Re: {invoice}", "Colleague.", msgid="h6@x", sender="Bo <bo@acme.lv>"),
            mail(f"{printer} hi", "Stranger.", msgid="h7@x", sender="eve@evil.test"),
            mail("Question [#99999]", "No such ticket.", msgid="h8@x", sender=alice),
            mail(f"Re: {printer}", "Away.", msgid="h9@x", sender=alice,
                 headers={"Auto-Submitted": "auto-replied"}),
            mail(f"Re: {printer}", "After the break.", msgid="h10@x", sender=alice),
        ]  # fmt: skip

    one_by_one: list[str] = []
    real_one = Ingestor.ingest_one

    async def counting(self: Ingestor, session: Any, ctx: Any, item: IncomingMail) -> Any:
        one_by_one.append(item.source.label)
        return await real_one(self, session, ctx, item)

    bulk_acct, single_acct = await setup_store(service), await setup_store(other_service)
    bulk, single = Ingestor(service, default_queue="Support"), Ingestor(other_service)
    single.default_queue = "Support"
    firsts = await bulk.ingest_batch(items_for(bulk, bulk_acct, first))
    for item in items_for(single, single_acct, first):
        await single.ingest_batch([item])
    numbers = [r.ticket_number or 0 for r in firsts]
    async with service.db.read() as s:  # one secret: the same HMAC-signed mail for both
        secret = (await mail_secret(s)).decode()
    async with other_service.db.write() as s:
        row = await s.get(Setting, "mail_secret")
        assert row is not None
        row.value = secret

    def later(ing: Ingestor, acct: int, raws: list[bytes | None]) -> list[IncomingMail]:
        return items_for(ing, acct, [None, None, *raws])[2:]  # UIDs after the first batch

    raws = await second(service, numbers)
    monkeypatch.setattr(Ingestor, "ingest_one", counting)
    bulk_results = await bulk.ingest_batch(later(bulk, bulk_acct, raws))
    monkeypatch.setattr(Ingestor, "ingest_one", real_one)
    single_results: list[IngestResult] = []
    for item in later(single, single_acct, raws):
        single_results += await single.ingest_batch([item])

    # Only a tag from a stranger (a linked ticket) and a tag naming no ticket go one by one.
    assert one_by_one == ["imap INBOX UID 7", "imap INBOX UID 8"]
    assert summary(bulk_results) == summary(single_results)
    got, want = await snapshot(service), await snapshot(other_service)
    for key in want:
        assert got[key] == want[key], key
    reasons = [r.reason for r in bulk_results]
    printer, invoice = numbers
    assert [r.outcome for r in bulk_results] == [
        "threaded", "created", "threaded", "threaded", "created", "created", "threaded", "threaded",
    ]  # fmt: skip
    assert [bulk_results[i].ticket_number for i in (0, 2, 3)] == [printer, printer, invoice]
    assert reasons[0].endswith(f"(HMAC verified) for ticket #{printer}")
    assert "ignored unverified ticket Message-ID" in reasons[1]
    assert reasons[2].startswith(f"subject tag [#{printer}]; sender alice@example.com")
    assert reasons[3].startswith(f"subject tag [#{invoice}]; sender domain acme.lv")
    assert "not a participant" in reasons[4] and bulk_results[4].outcome == "created"
    assert reasons[6].endswith("status kept") and bulk_results[6].ticket_number == printer
    assert bulk_results[7].ticket_number == printer


async def test_a_database_failure_in_the_bulk_write_is_raised_not_quarantined(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store itself fails mid-write (here a trigger on mail_seen that cannot run),
    the batch fails as a database error and rolls back: no mail is blamed for it (also when
    the failing insert is the driver's own: aiosqlite's executemany, PostgreSQL's COPY)."""
    monkeypatch.setattr(bulk_ingest, "COPY_MIN_ROWS", 1)
    acct = await setup_store(service)
    ing = Ingestor(service, default_queue="Support")
    items = items_for(
        ing, acct, [mail("one", "First.", msgid="f1@x"), mail("two", "2", msgid="f2@x")]
    )
    async with service.db.write() as s:
        if service.db.dialect == "sqlite":
            await s.execute(
                text(
                    "CREATE TRIGGER broken BEFORE INSERT ON mail_seen "
                    "BEGIN INSERT INTO no_such_table VALUES (1); END"
                )
            )
        else:
            await s.execute(
                text(
                    "CREATE FUNCTION broken() RETURNS trigger AS "
                    "$$ BEGIN INSERT INTO no_such_table VALUES (1); RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            await s.execute(
                text(
                    "CREATE TRIGGER broken BEFORE INSERT ON mail_seen "
                    "FOR EACH ROW EXECUTE FUNCTION broken()"
                )
            )
    with pytest.raises(DBAPIError):
        await ing.ingest_batch(items)
    async with service.db.read() as s:
        assert (await s.execute(select(func.count()).select_from(Quarantine))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Ticket))).scalar_one() == 0
