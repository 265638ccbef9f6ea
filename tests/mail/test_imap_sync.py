"""The sync engine against a real Dovecot: IDLE, threading, duplicates, UIDVALIDITY, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mail_sync.accounts import AccountInfo, add_account, resume_folder, update_settings
from mail_sync.cli import collect_status
from mail_sync.engine import AccountBusy, Progress, SyncEngine, SyncSettings, _AccountLock
from store.engine import Database
from store.migrate import upgrade
from store.models import Article, MailFolderState, MailHeartbeat, MailSeen, Quarantine, Ticket
from store.service import Actor, Service
from tests.services.dovecot import DovecotServer, ImapAccount

pytestmark = pytest.mark.imap

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
PASSWORD_VAR = "HELPDESK_TEST_IMAP_PASSWORD"

FAST = SyncSettings(
    batch_size=20,
    connect_timeout=3,
    read_timeout=5,
    idle_check_timeout=0.5,
    idle_renew=5,
    poll_interval=3,
    backoff_initial=0.2,
    backoff_max=1.0,
    heartbeat_interval=1,
)


def mail(
    subject: str = "Printer broken",
    sender: str = "alice@example.com",
    body: str = "The printer does not print.",
    msgid: str | None = None,
    in_reply_to: str | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = "support@help.test"
    m["Subject"] = subject
    m["Message-ID"] = f"<{msgid}>" if msgid else make_msgid(domain="example.com")
    if in_reply_to:
        m["In-Reply-To"] = f"<{in_reply_to}>"
    for k, v in (extra or {}).items():
        m[k] = v
    m.set_content(body)
    return m.as_bytes()


@pytest.fixture
async def db(sqlite_url: str) -> AsyncIterator[Database]:
    database = Database(sqlite_url)
    await upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
def make_account(
    db: Database, imap_account: ImapAccount, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., object]:
    monkeypatch.setenv(PASSWORD_VAR, imap_account.password)

    async def make(**kw: object) -> AccountInfo:
        await Service(db).add_queue("Support", ["support@help.test"])
        args: dict[str, object] = {
            "host": imap_account.host,
            "port": imap_account.port,
            "security": "plain",
            "username": imap_account.user,
            "password_env": PASSWORD_VAR,
            "folders": ["INBOX"],
            "queue": "Support",
        }
        args.update(kw)
        return await add_account(db, str(kw.pop("name", "support")), **args)  # type: ignore[arg-type]

    return make


async def n_rows(db: Database, model: type, *where: object) -> int:
    async with db.read() as s:
        return int(
            (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()
        )


async def append(acct: ImapAccount, folder: str, *raws: bytes) -> None:
    def _do() -> None:
        with acct.connect() as c:
            if folder.upper() != "INBOX" and not c.folder_exists(folder):
                c.create_folder(folder)
            if len(raws) == 1:
                c.append(folder, raws[0])
            else:
                for i in range(0, len(raws), 200):
                    c.multiappend(folder, list(raws[i : i + 200]))

    await asyncio.to_thread(_do)


async def wait_for(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll an async predicate; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if await check():  # type: ignore[misc]
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def test_sync_once_fetches_new_mail_once_and_never_marks_it_read(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account()  # type: ignore[misc]
    await append(imap_account, "INBOX", mail("one"), mail("two"), mail("three"))
    engine = SyncEngine(db, account, settings=FAST)
    report = await engine.sync_once()
    assert report.ok and report.totals()["created"] == 3
    report = await engine.sync_once()
    assert report.totals()["created"] == 0
    assert await n_rows(db, Ticket) == 3
    assert await n_rows(db, MailSeen) == 3
    async with db.read() as s:
        st = (await s.execute(select(MailFolderState))).scalar_one()
        hb = await s.get(MailHeartbeat, account.id)
    assert st.last_uid == 3 and st.uidvalidity == imap_account.uidvalidity()
    assert hb is not None and hb.last_success_at is not None and hb.backlog == 0
    assert hb.failing_since is None
    with imap_account.connect() as c:
        c.select_folder("INBOX", readonly=True)
        flags = c.get_flags(c.search("ALL"))
    assert all(b"\\Seen" not in f for f in flags.values())  # BODY.PEEK[]


async def test_new_mail_in_idle_becomes_a_ticket_within_two_seconds(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account()  # type: ignore[misc]
    idle = asyncio.Event()

    def progress(p: Progress) -> None:
        if p.event == "idle":
            idle.set()

    settings = SyncSettings(idle_check_timeout=5, idle_renew=60, poll_interval=600)
    engine = SyncEngine(db, account, on_progress=progress, settings=settings)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        await asyncio.wait_for(idle.wait(), 10)
        await asyncio.sleep(0.3)  # really inside IDLE, not just about to enter it
        for subject in ("first while idle", "second while idle"):
            t0 = time.monotonic()
            await append(imap_account, "INBOX", mail(subject))

            async def arrived(subject: str = subject) -> bool:
                async with db.read() as s:
                    return (
                        await s.execute(select(Ticket.id).where(Ticket.subject == subject))
                    ).first() is not None

            await wait_for(arrived, 10, f"ticket {subject!r}")
            elapsed = time.monotonic() - t0
            assert elapsed < 2.0, f"mail took {elapsed:.2f}s to become a ticket in IDLE"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_replies_thread_and_strangers_get_a_linked_ticket(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account()  # type: ignore[misc]
    service = Service(db)
    engine = SyncEngine(db, account, settings=FAST, service=service)
    await append(imap_account, "INBOX", mail("Printer broken", msgid="first@example.com"))
    await engine.sync_once()
    (number,) = (t.number for t in await _tickets(db))
    anna = await service.add_agent("anna", "Anna", "anna@help.test")
    reply = await service.add_reply(Actor("agent", "anna", anna.id), number, "Restart it.")
    await append(
        imap_account,
        "INBOX",
        mail("Re: Printer broken", in_reply_to=reply.message_id, body="Did not help."),
        mail(f"Re: Printer broken [#{number}]", body="Still broken (tag only)."),
        mail(f"Re: Printer broken [#{number}]", sender="mallory@evil.test", body="inject"),
    )
    report = await engine.sync_once()
    assert (report.totals()["threaded"], report.totals()["created"]) == (2, 1)
    detail = await service.ticket_detail(number)
    bodies = [a.body_text for a in detail.articles if a.kind == "email_in"]
    assert any("Did not help" in b for b in bodies)
    assert any("tag only" in b for b in bodies)
    assert not any("inject" in b for b in bodies)
    assert detail.ticket.status == "open"  # the customer's reply reopened it
    linked = [n for kind, n in detail.links if kind == "followed-up-by"]
    assert len(linked) == 1
    stranger = await service.ticket_detail(linked[0])
    assert "inject" in stranger.articles[0].body_text


async def _tickets(db: Database) -> list[Ticket]:
    async with db.read() as s:
        return list((await s.execute(select(Ticket).order_by(Ticket.id))).unique().scalars())


async def test_same_message_in_two_folders_is_one_ticket(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account(folders=["INBOX", "Sales"])  # type: ignore[misc]
    raw = mail("to both of our addresses", msgid="both@example.com")
    await append(imap_account, "INBOX", raw)
    await append(imap_account, "Sales", raw)
    report = await SyncEngine(db, account, settings=FAST).sync_once()
    assert report.totals()["created"] == 1 and report.totals()["duplicates"] == 1
    assert await n_rows(db, Ticket) == 1
    async with db.read() as s:
        seen = (await s.execute(select(MailSeen.folder, MailSeen.article_id))).all()
    assert {f for f, _ in seen} == {"INBOX", "Sales"}
    assert len({a for _, a in seen}) == 1


async def test_after_move_happens_after_commit_and_never_deletes(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account(after="move:Done")  # type: ignore[misc]
    await asyncio.to_thread(imap_account.create_folder, "Done")
    await append(imap_account, "INBOX", mail("a"), mail("b"))
    await SyncEngine(db, account, settings=FAST).sync_once()
    with imap_account.connect() as c:
        inbox = c.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"]
        done = c.folder_status("Done", [b"MESSAGES"])[b"MESSAGES"]
    assert (inbox, done) == (0, 2)
    assert await n_rows(db, Ticket) == 2


async def test_after_move_creates_a_missing_folder(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account(after="move:Processed/2026")  # type: ignore[misc]
    await append(imap_account, "INBOX", mail("a"))
    report = await SyncEngine(db, account, settings=FAST).sync_once()
    assert report.totals()["created"] == 1
    with imap_account.connect() as c:
        assert c.folder_exists("Processed/2026")
        moved = c.folder_status("Processed/2026", [b"MESSAGES"])[b"MESSAGES"]
        inbox = c.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"]
    assert (inbox, moved) == (0, 1)


async def test_after_seen_is_redone_when_a_crash_skipped_it(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account(after="seen")  # type: ignore[misc]
    await append(imap_account, "INBOX", mail("a"), mail("b"))
    engine = SyncEngine(db, account, settings=FAST)

    async def crash_before_flagging(*_a: object, **_k: object) -> None:
        raise ConnectionResetError("simulated crash after the commit")

    engine._post_process = crash_before_flagging  # type: ignore[method-assign]
    report = await engine.sync_once()
    assert not report.ok
    assert await n_rows(db, Ticket) == 2  # committed
    with imap_account.connect() as c:
        c.select_folder("INBOX", readonly=True)
        assert all(b"\\Seen" not in f for f in c.get_flags(c.search("ALL")).values())
    await SyncEngine(db, account, settings=FAST).sync_once()
    with imap_account.connect() as c:
        c.select_folder("INBOX", readonly=True)
        assert all(b"\\Seen" in f for f in c.get_flags(c.search("ALL")).values())
    assert await n_rows(db, Ticket) == 2


async def test_uidvalidity_change_imports_only_unmatched_mail(
    db: Database,
    dovecot: DovecotServer,
    imap_account: ImapAccount,
    make_account: Callable[..., object],
) -> None:
    account = await make_account()  # type: ignore[misc]
    await append(imap_account, "INBOX", *(mail(f"old {i}") for i in range(5)))
    engine = SyncEngine(db, account, settings=FAST)
    await engine.sync_once()
    old_uv = imap_account.uidvalidity()
    new_uv = await asyncio.to_thread(dovecot.reset_uidvalidity, "INBOX", user=imap_account.user)
    assert new_uv != old_uv
    await append(imap_account, "INBOX", mail("new 1"), mail("new 2"))
    report = await engine.sync_once()
    assert report.ok
    assert report.totals()["created"] == 2
    assert await n_rows(db, Ticket) == 7 and await n_rows(db, Article) == 7
    assert await n_rows(db, MailSeen, MailSeen.uidvalidity == new_uv) == 7
    async with db.read() as s:
        st = (await s.execute(select(MailFolderState))).scalar_one()
    assert st.uidvalidity == new_uv and st.stopped_reason is None


async def test_uidvalidity_change_with_foreign_mail_stops_the_folder(
    db: Database,
    dovecot: DovecotServer,
    imap_account: ImapAccount,
    make_account: Callable[..., object],
) -> None:
    account = await make_account()  # type: ignore[misc]
    await append(imap_account, "INBOX", *(mail(f"ours {i}") for i in range(3)))
    engine = SyncEngine(db, account, settings=FAST)
    await engine.sync_once()

    def replace_mailbox() -> None:
        with imap_account.connect() as c:
            c.select_folder("INBOX")
            c.delete_messages(c.search("ALL"))
            c.expunge()

    await asyncio.to_thread(replace_mailbox)
    await append(imap_account, "INBOX", *(mail(f"someone else's {i}") for i in range(30)))
    await asyncio.to_thread(dovecot.reset_uidvalidity, "INBOX", user=imap_account.user)
    report = await engine.sync_once()
    assert not report.ok
    (folder,) = report.folders
    assert folder.stopped and "only 0 of 30 messages match" in folder.stopped
    assert await n_rows(db, Ticket) == 3  # nothing guessed
    rows = await collect_status(db)
    assert rows[0]["state"] == "failing"
    assert "UIDVALIDITY" in (rows[0]["folders"][0]["stopped"] or "")
    # An admin looked at the mailbox and resumes: now the mail is imported, once.
    assert await resume_folder(db, account.name) == ["INBOX"]
    report = await engine.sync_once()
    assert report.ok and report.totals()["created"] == 30
    assert await n_rows(db, Ticket) == 33


async def test_message_over_the_size_limit_is_ingested_header_only(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    await make_account()  # type: ignore[misc]
    # as `helpdesk mail account limits support --max-message-mb ...` stores it
    account = await update_settings(db, "support", {"max_message_bytes": 10_000})
    await append(imap_account, "INBOX", mail("huge", body="x" * 50_000), mail("small"))
    report = await SyncEngine(db, account).sync_once()
    assert report.totals()["created"] == 2
    async with db.read() as s:
        (t,) = (await s.execute(select(Ticket).where(Ticket.subject == "huge"))).unique().scalars()
        notes = (
            (
                await s.execute(
                    select(Article.body_text).where(
                        Article.ticket_id == t.id, Article.kind == "note"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(notes) == 1 and "only its header was fetched" in notes[0]
    assert "UID 1" in notes[0]


async def test_dovecot_outage_mid_sync_recovers_by_itself(
    db: Database,
    dovecot: DovecotServer,
    imap_account: ImapAccount,
    make_account: Callable[..., object],
) -> None:
    account = await make_account()  # type: ignore[misc]
    total = 150
    await append(imap_account, "INBOX", *(mail(f"outage {i}") for i in range(total)))
    errors: list[str] = []

    def progress(p: Progress) -> None:
        if p.event == "error":
            errors.append(p.detail)

    engine = SyncEngine(
        db, account, on_progress=progress, settings=dataclasses.replace(FAST, batch_size=10)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:

        async def some() -> bool:
            return await n_rows(db, Ticket) >= 10

        await wait_for(some, 30, "the first batches")
        assert await n_rows(db, Ticket) < total, "too fast to interrupt: raise `total`"
        await asyncio.to_thread(dovecot.stop)
        await asyncio.sleep(1.5)
        # Started from the main thread on purpose: the server gets a parent-death signal
        # (PR_SET_PDEATHSIG), which fires when the *thread* that started it exits.
        dovecot.start()

        async def everything() -> bool:
            return await n_rows(db, Ticket) >= total

        await wait_for(everything, 90, "all mail after the outage", interval=0.2)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert errors, "the outage was not noticed"
    assert await n_rows(db, Ticket) == total
    assert await n_rows(db, Article) == total
    async with db.read() as s:
        hb = await s.get(MailHeartbeat, account.id)
    assert hb is not None and hb.failing_since is None and hb.last_error_at is not None


async def test_wrong_password_is_reported_without_the_password(
    db: Database,
    imap_account: ImapAccount,
    make_account: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = await make_account()  # type: ignore[misc]
    secret = "hunter2-wrong-secret"
    monkeypatch.setenv(PASSWORD_VAR, secret)
    caplog.set_level(logging.DEBUG)
    report = await SyncEngine(db, account, settings=FAST).sync_once()
    assert not report.ok
    async with db.read() as s:
        hb = await s.get(MailHeartbeat, account.id)
        stored = " ".join(str(v) for v in (await s.execute(select(MailHeartbeat))).scalars().all())
    assert hb is not None and hb.failing_since is not None
    assert "LoginError" in (hb.last_error or "") or "auth" in (hb.last_error or "").lower()
    assert secret not in caplog.text
    assert secret not in (hb.last_error or "") + stored
    rows = await collect_status(db)
    assert rows[0]["state"] == "retrying"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_second_process_cannot_sync_the_same_account(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    imap_account: ImapAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'lock.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    database = Database(url)
    await upgrade(database)
    monkeypatch.setenv(PASSWORD_VAR, imap_account.password)
    try:
        account = await add_account(
            database,
            "locked",
            host=imap_account.host,
            port=imap_account.port,
            security="plain",
            username=imap_account.user,
            password_env=PASSWORD_VAR,
        )
        other = _AccountLock(Database(url), account.id)  # "another daemon"
        assert await other.acquire()
        try:
            with pytest.raises(AccountBusy):
                await SyncEngine(database, account, settings=FAST).sync_once()
        finally:
            await other.release()
            await other.db.dispose()
        await append(imap_account, "INBOX", mail("after the other daemon stopped"))
        report = await SyncEngine(database, account, settings=FAST).sync_once()
        assert report.totals()["created"] == 1
    finally:
        await database.dispose()


async def test_every_corpus_file_appended_becomes_a_ticket_or_quarantine(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    files = sorted(CORPUS.rglob("*.eml"))
    assert len(files) >= 160, f"corpus missing at {CORPUS}"
    account = await make_account()  # type: ignore[misc]
    appended = 0

    def _append_all() -> int:
        n = 0
        with imap_account.connect() as c:
            for f in files:
                try:
                    c.append("INBOX", f.read_bytes())
                    n += 1
                except Exception:  # noqa: BLE001 - a message the server refuses is not ours
                    continue
        return n

    appended = await asyncio.to_thread(_append_all)
    assert appended >= len(files) - 5
    report = await SyncEngine(db, account, settings=FAST).sync_once()
    assert report.ok
    t = report.totals()
    assert t["created"] + t["threaded"] + t["duplicates"] + t["quarantined"] == appended
    assert await n_rows(db, MailSeen) == appended
    assert (
        await n_rows(db, MailSeen, MailSeen.article_id.is_(None), MailSeen.quarantine_id.is_(None))
        == 0
    )
    assert await n_rows(db, Quarantine) == t["quarantined"]


async def test_daemon_runs_accounts_and_the_minute_tick_and_stops_cleanly(
    db: Database,
    imap_account: ImapAccount,
    make_account: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mail_sync.daemon import run_daemon

    await make_account()  # type: ignore[misc]
    ticks: list[float] = []
    real_tick = Service.tick

    async def counting_tick(self: Service, now: object = None) -> dict[str, list[int]]:
        ticks.append(time.monotonic())
        return await real_tick(self)

    monkeypatch.setattr(Service, "tick", counting_tick)
    await append(imap_account, "INBOX", mail("before the daemon"))
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_daemon(db, None, stop, settings=FAST, tick_interval=0.5, refresh_interval=1)
    )
    try:

        async def first() -> bool:
            return await n_rows(db, Ticket) == 1

        await wait_for(first, 15, "the daemon's first ticket")
        await append(imap_account, "INBOX", mail("while the daemon runs"))

        async def second() -> bool:
            return await n_rows(db, Ticket) == 2

        await wait_for(second, 15, "a ticket from IDLE")
        await asyncio.sleep(1.2)
    finally:
        stop.set()
        t0 = time.monotonic()
        await asyncio.wait_for(task, 20)
    assert time.monotonic() - t0 < 10
    assert len(ticks) >= 2


async def test_auto_replies_and_bounces_over_imap_never_reopen_or_open_tickets(
    db: Database, imap_account: ImapAccount, make_account: Callable[..., object]
) -> None:
    account = await make_account()  # type: ignore[misc]
    service = Service(db)
    engine = SyncEngine(db, account, settings=FAST, service=service)
    await append(imap_account, "INBOX", mail("VPN broken"))
    await engine.sync_once()
    (ticket,) = await _tickets(db)
    anna = await service.add_agent("anna", "Anna", "anna@help.test")
    reply = await service.add_reply(Actor("agent", "anna", anna.id), ticket.number, "Try again.")
    ooo = mail(
        "Automatic reply: Re: VPN broken",
        in_reply_to=reply.message_id,
        extra={"Auto-Submitted": "auto-replied"},
    )
    bounce = (
        "From: MAILER-DAEMON@mx.example.com\r\nTo: support@help.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@mx.example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
        'boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; alice@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{reply.message_id}>\r\nSubject: Re: VPN broken\r\n--B--\r\n"
    ).encode()
    newsletter = mail("Our newsletter", sender="news@vendor.test", extra={"Precedence": "bulk"})
    await append(imap_account, "INBOX", ooo, bounce, newsletter)
    report = await engine.sync_once()
    assert (report.totals()["threaded"], report.totals()["created"]) == (2, 1)
    detail = await service.ticket_detail(ticket.number)
    assert detail.ticket.status == "answered"  # neither the auto-reply nor the bounce reopened it
    autos = [a.meta.get("reason") for a in detail.articles if a.kind == "email_in"][1:]
    assert autos == ["Auto-Submitted: auto-replied", "delivery status notification (bounce)"]
    news = [t for t in await _tickets(db) if t.subject == "Our newsletter"]
    assert len(news) == 1
