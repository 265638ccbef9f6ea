"""Mail out: the outbox delivers over real SMTP (aiosmtpd), retries, and never injects headers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mail_sync.outbox import OutboxSender, SmtpConfig
from store.models import ArticleKind, Outbox
from store.service import Actor, ArticleInput, AttachmentInput, Service
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


# --------------------------------------------------------------------------- headers
async def test_headers_queue_from_reply_to_tag_once_utf8_and_attachments(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    actor, n = await _ticket(service, f"Re: [#{1001}] Drucker druckt nicht – bitte helfen")
    await service.add_reply(
        actor,
        n,
        "Grüße aus Rīga — der Drucker 🖨 läuft wieder.\n",
        cc_addrs="Boss <boss@acme.com>",
        attachments=[AttachmentInput("bericht ä.pdf", b"%PDF-1.4 fake", "application/pdf")],
    )
    await _sender(service, smtp_server, clock).send_due()
    [got] = smtp_server.wait_for(1)
    msg = got.message
    assert msg["From"] == "Alice Agent via Acme Support <support@example.com>"
    assert msg["Reply-To"] == "support@example.com"
    assert got.mail_from == "support@example.com"
    assert sorted(got.rcpt_tos) == ["boss@acme.com", "carol@acme.com"]
    assert msg["Cc"] == "Boss <boss@acme.com>"
    # the ticket tag appears once, even though the customer's subject already carried it
    assert msg["Subject"] == f"Re: [#{n}] Drucker druckt nicht – bitte helfen"
    assert msg["Subject"].count(f"[#{n}]") == 1
    assert msg["Message-ID"].startswith(f"<t{n}.") and msg["Message-ID"].endswith("@example.com>")
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "Grüße aus Rīga — der Drucker 🖨" in body.get_content()
    assert body.get_content_charset() == "utf-8"
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "bericht ä.pdf" and att.get_content() == b"%PDF-1.4 fake"


async def test_queue_without_address_uses_the_configured_from_and_names_can_be_off(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    agent = await service.add_agent("bob", "Bob Builder", "bob@example.com")
    t = await service.create_ticket(
        Actor("mail", "sync"),
        subject="No queue",
        customer_email="dan@globex.example",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="hi", message_id="q@globex"),
    )
    await service.add_reply(Actor("agent", "bob", agent.id), t.number, "hello")
    cfg = SmtpConfig(
        host=smtp_server.host,
        port=smtp_server.port,
        from_address="help@acme.test",
        from_name="Acme",
        agent_names=False,
    )
    await OutboxSender(service.db, cfg, clock=clock).send_due()
    [got] = smtp_server.wait_for(1)
    assert got.message["From"] == "Acme <help@acme.test>"
    assert got.message["Reply-To"] == "help@acme.test" and got.mail_from == "help@acme.test"


async def test_hostile_names_and_cc_cannot_add_headers_or_recipients(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    await service.add_queue("Support", ["support@example.com"])
    agent = await service.add_agent("eve", "Eve\r\nBcc: spy@evil.example", "eve@example.com")
    t = await service.create_ticket(
        Actor("mail", "sync"),
        subject="Hi\nX-Injected: 1",
        customer_email="carol@acme.com",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="x", message_id="h@acme"),
        queue="Support",
    )
    actor = Actor("agent", "eve", agent.id)
    await service.add_reply(actor, t.number, "first")
    await service.add_reply(
        actor, t.number, "second", cc_addrs="x@y.example\r\nBcc: z@evil.example"
    )
    counts = await _sender(service, smtp_server, clock).send_due()
    assert counts == {"sent": 1, "retry": 0, "failed": 1}
    [got] = smtp_server.wait_for(1)
    raw = got.data.decode("utf-8", "replace")
    head = raw.split("\r\n\r\n", 1)[0].lower()
    assert "\nbcc:" not in head and "\nx-injected:" not in head
    assert head.count("\nfrom:") + head.startswith("from:") == 1
    assert got.rcpt_tos == ["carol@acme.com"]
    # the name is kept as one quoted display name, never a header or an address of its own
    assert (
        got.message["From"] == '"Eve Bcc: spy@evil.example via Acme Support" <support@example.com>'
    )
    assert got.message["From"].addresses[0].addr_spec == "support@example.com"
    failed = (await _outbox(service))[-1]
    assert failed.status == "failed" and "control characters" in (failed.last_error or "")
    detail = await service.ticket_detail(t.number)
    assert [a.delivery_status for a in detail.articles if a.kind == "email_out"] == [
        "sent",
        "failed",
    ]


async def test_automatic_mail_carries_rfc3834_marks_and_human_replies_do_not(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    from store.models import Article, Ticket

    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "human")
    async with service.db.write() as s:
        t = (await s.execute(select(Ticket).where(Ticket.number == n))).unique().scalar_one()
        for i, kind in enumerate(("ack", "notification")):
            art = Article(
                ticket_id=t.id,
                kind=ArticleKind.EMAIL_OUT.value,
                to_addrs="carol@acme.com",
                subject="Re: Printer jam",
                body_text=f"automatic {kind}",
                created_at=clock(),
            )
            s.add(art)
            await s.flush()
            s.add(
                Outbox(
                    article_id=art.id,
                    ticket_id=t.id,
                    message_id=f"auto{i}@helpdesk.invalid",
                    rcpt_to=["carol@acme.com"],
                    kind=kind,
                    next_attempt_at=clock(),
                    created_at=clock(),
                )
            )
    await _sender(service, smtp_server, clock).send_due()
    got = {m.message.get_content().strip(): m.message for m in smtp_server.wait_for(3)}
    assert got["human"]["Auto-Submitted"] is None
    assert got["automatic ack"]["Auto-Submitted"] == "auto-replied"
    assert got["automatic notification"]["Auto-Submitted"] == "auto-generated"
    for kind in ("ack", "notification"):
        m = got[f"automatic {kind}"]
        assert m["X-Auto-Response-Suppress"] == "All"
        assert m["From"] == "Acme Support <support@example.com>"  # no agent name on robots
        assert m["Message-ID"].endswith("@example.com>")


# --------------------------------------------------------------------------- Sent folder
async def _sent_folder_setup(
    service: Service, imap_account: Any, smtp: Any, clock: FakeClock, monkeypatch: Any
) -> OutboxSender:
    from mail_sync.accounts import add_account

    monkeypatch.setenv("HELPDESK_TEST_SENT_PW", imap_account.password)
    await add_account(
        service.db,
        "support",
        host=imap_account.host,
        port=imap_account.port,
        security="plain",
        username=imap_account.user,
        password_env="HELPDESK_TEST_SENT_PW",
    )
    cfg = SmtpConfig(
        host=smtp.host,
        port=smtp.port,
        from_address="support@example.com",
        from_name="Acme Support",
        sent_folder="Sent",
        sent_account="support",
    )
    return OutboxSender(service.db, cfg, clock=clock)


def _sent_copies(imap_account: Any) -> list[tuple[bytes, tuple[bytes, ...]]]:
    with imap_account.connect() as c:
        if not c.folder_exists("Sent"):
            return []
        c.select_folder("Sent", readonly=True)
        uids = c.search("ALL")
        data = c.fetch(uids, ["BODY.PEEK[]", "FLAGS"]) if uids else {}
        return [(d[b"BODY[]"], tuple(d[b"FLAGS"])) for d in data.values()]


async def test_sent_mail_is_appended_to_the_sent_folder(
    service: Service, smtp_server: Any, clock: FakeClock, imap_account: Any, monkeypatch: Any
) -> None:
    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "A copy of me goes to Sent.")
    sender = await _sent_folder_setup(service, imap_account, smtp_server, clock, monkeypatch)
    assert (await sender.send_due())["sent"] == 1
    [got] = smtp_server.wait_for(1)
    [(raw, flags)] = _sent_copies(imap_account)
    assert raw.replace(b"\r\n", b"\n").rstrip() == got.data.replace(b"\r\n", b"\n").rstrip()
    assert b"\\Seen" in flags
    [ob] = await _outbox(service)
    assert ob.status == "sent" and ob.last_error is None
    assert (await sender.send_due())["sent"] == 0 and len(_sent_copies(imap_account)) == 1


async def test_a_failed_sent_copy_is_retried_and_never_resends_the_mail(
    service: Service,
    smtp_server: Any,
    clock: FakeClock,
    imap_account: Any,
    dovecot: Any,
    monkeypatch: Any,
) -> None:
    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "Sent while the IMAP server is down.")
    sender = await _sent_folder_setup(service, imap_account, smtp_server, clock, monkeypatch)
    dovecot.stop()
    try:
        assert (await sender.send_due()) == {"sent": 1, "retry": 0, "failed": 0}
    finally:
        dovecot.start()
    [ob] = await _outbox(service)
    assert ob.status == "sent" and "copy to Sent failed" in (ob.last_error or "")
    detail = await service.ticket_detail(n)
    assert detail.articles[-1].delivery_status == "sent"  # the customer got it: that is what counts
    assert _sent_copies(imap_account) == []
    assert (await sender.send_due())["sent"] == 0  # not due yet (backoff)
    assert _sent_copies(imap_account) == []
    clock.advance(minutes=10)
    assert (await sender.send_due())["sent"] == 0
    assert len(_sent_copies(imap_account)) == 1
    [ob] = await _outbox(service)
    assert ob.status == "sent" and ob.last_error is None
    assert len(smtp_server.messages) == 1  # delivered exactly once


async def test_the_daemon_delivers_queued_replies_by_itself(
    service: Service, smtp_server: Any, clock: FakeClock
) -> None:
    import asyncio

    from mail_sync.daemon import run_daemon

    actor, n = await _ticket(service)
    await service.add_reply(actor, n, "sent by the daemon")
    stop = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon(service.db, [], stop, tick_interval=3600, outbox_interval=0.2)
    )
    try:
        await asyncio.sleep(0.5)
        assert smtp_server.messages == []  # no SMTP configured yet: nothing goes anywhere
        cfg = SmtpConfig(host=smtp_server.host, port=smtp_server.port, from_address="s@example.com")
        await service.set_setting("smtp", cfg.to_setting())  # picked up without a restart
        [got] = await asyncio.to_thread(smtp_server.wait_for, 1)
        assert got.message.get_content().strip() == "sent by the daemon"
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 10)
    [ob] = await _outbox(service)
    assert ob.status == "sent"


class _XOAuth2Handler:
    """An SMTP server that only knows XOAUTH2 (as Gmail / Microsoft 365 submission)."""

    def __init__(self, token: str) -> None:
        self.expected = f"user=bot@acme.test\x01auth=Bearer {token}\x01\x01"
        self.seen: list[str] = []
        self.messages: list[bytes] = []

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        import base64

        from aiosmtpd.smtp import AuthResult

        blob = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        self.seen.append(blob)
        return AuthResult(success=blob == self.expected, handled=False, auth_data=blob)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        self.messages.append(envelope.content)
        return "250 OK"


async def test_xoauth2_login_uses_a_fresh_token_and_a_bad_one_keeps_mail_queued(
    service: Service, clock: FakeClock, tmp_path: Any
) -> None:
    import sys

    from aiosmtpd.controller import Controller

    from tests.services import free_port

    handler = _XOAuth2Handler("tok-123")
    port = free_port("127.0.0.1")
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN", "PLAIN"],
    )
    controller.start()
    try:
        actor, n = await _ticket(service)
        await service.add_reply(actor, n, "via oauth")
        token_file = tmp_path / "token"
        token_file.write_text("expired-token\n")
        cfg = SmtpConfig(
            host="127.0.0.1",
            port=port,
            username="bot@acme.test",
            oauth2_token_command=f"{sys.executable} -c \"print(open('{token_file}').read().strip())\"",
            from_address="support@example.com",
        )
        sender = OutboxSender(service.db, cfg, clock=clock)
        assert await sender.send_due() == {"sent": 0, "retry": 1, "failed": 0}
        [ob] = await _outbox(service)
        assert ob.status == "queued" and "SMTP authentication failed" in (ob.last_error or "")
        assert "expired-token" not in (ob.last_error or "")
        assert handler.messages == []
        token_file.write_text("tok-123\n")  # the token command now prints a fresh token
        clock.advance(minutes=5)
        assert (await sender.send_due())["sent"] == 1
        assert len(handler.messages) == 1 and handler.seen[-1] == handler.expected
    finally:
        controller.stop()
