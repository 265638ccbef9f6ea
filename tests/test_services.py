"""The test-service fixtures themselves: real PostgreSQL, Dovecot and SMTP on loopback."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from email.message import EmailMessage

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.services.dovecot import DovecotServer, ImapAccount
from tests.services.postgres import PostgresServer
from tests.services.smtp import SMTPServer


def _raw(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (
        f"From: Customer <customer@example.com>\r\n"
        f"To: help@example.com\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.com>\r\n"
        f"\r\n{body}"
    ).encode()


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.pg
async def test_pg_url_is_a_working_empty_database(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    engine = create_async_engine(pg_url)
    try:
        async with engine.begin() as conn:
            tables = await conn.scalar(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
            )
            assert tables == 0
            await conn.execute(text("CREATE TABLE ticket (id serial PRIMARY KEY, subject text)"))
            await conn.execute(
                text("INSERT INTO ticket (subject) VALUES (:a), (:b)"), {"a": "one", "b": "two"}
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, subject FROM ticket ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
    finally:
        await engine.dispose()


@pytest.mark.pg
def test_pg_databases_are_separate(pg_server: PostgresServer) -> None:
    a = pg_server.create_database()
    b = pg_server.create_database()
    assert a != b
    names = pg_server.psql("SELECT datname FROM pg_database").split()
    for url in (a, b):
        name = url.rsplit("/", 1)[1]
        assert name in names
        pg_server.drop_database(name)
    assert not {a, b} & set(pg_server.psql("SELECT datname FROM pg_database").split())


@pytest.mark.pg
async def test_pg_listens_on_loopback_only(pg_server: PostgresServer) -> None:
    assert pg_server.host == "127.0.0.1"
    out = pg_server.psql("SHOW listen_addresses").strip()
    assert out == "127.0.0.1"


@pytest.mark.pg
async def test_pg_stop_and_start_keeps_data(pg_server: PostgresServer) -> None:
    url = pg_server.create_database()
    name = url.rsplit("/", 1)[1]
    pg_server.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)", name)
    pg_server.stop()
    with pytest.raises(OSError), socket.create_connection((pg_server.host, pg_server.port), 1):
        pass
    pg_server.start()
    assert pg_server.psql("SELECT x FROM t", name).strip() == "42"


# --- Dovecot ------------------------------------------------------------------------------


@pytest.mark.imap
def test_dovecot_append_and_fetch(dovecot: DovecotServer, imap_account: ImapAccount) -> None:
    host, port, user, password = imap_account
    assert (host, port) == (dovecot.host, dovecot.port)
    uid1 = imap_account.append("INBOX", _raw("first"))
    uid2 = imap_account.append("INBOX", _raw("second"), flags=[b"\\Seen"])
    assert (uid1, uid2) == (1, 2)

    client = IMAPClient(host, port, ssl=False, timeout=10)
    try:
        client.login(user, password)
        info = client.select_folder("INBOX", readonly=True)
        assert info[b"EXISTS"] == 2
        assert int(info[b"UIDVALIDITY"]) > 0
        uids = client.search("ALL")
        assert uids == [1, 2]
        data = client.fetch(uids, ["UID", "FLAGS", "BODY.PEEK[]"])
        assert data[1][b"BODY[]"] == _raw("first")
        assert data[2][b"BODY[]"] == _raw("second")
        assert b"\\Seen" not in data[1][b"FLAGS"]
        assert b"\\Seen" in data[2][b"FLAGS"]
    finally:
        client.logout()


@pytest.mark.imap
def test_dovecot_default_user_and_folders(dovecot: DovecotServer) -> None:
    assert (dovecot.user, dovecot.password) == ("alice", "secret")
    dovecot.create_folder("Support")
    dovecot.append("Support", _raw("in a folder"))
    with dovecot.account().connect() as c:
        assert c.folder_exists("Support")
        c.select_folder("Support", readonly=True)
        assert len(c.search("ALL")) >= 1


@pytest.mark.imap
def test_imap_accounts_are_isolated(dovecot: DovecotServer) -> None:
    a = dovecot.add_user()
    b = dovecot.add_user()
    assert a.user != b.user
    a.append("INBOX", _raw("only for a"))
    with b.connect() as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
        assert [f[2] for f in c.list_folders()] == ["INBOX"]
    with pytest.raises(LoginError):
        a._replace(password="wrong").client()


@pytest.mark.imap
def test_dovecot_idle_sees_append_from_other_connection(imap_account: ImapAccount) -> None:
    with imap_account.connect() as watcher:
        watcher.select_folder("INBOX")
        watcher.idle()
        try:
            appender = threading.Thread(target=imap_account.append, args=("INBOX", _raw("pushed")))
            started = time.monotonic()
            appender.start()
            appender.join(10)
            responses: list[tuple[object, ...]] = []
            while time.monotonic() - started < 10 and not any(r[1] == b"EXISTS" for r in responses):
                responses += watcher.idle_check(timeout=1)
        finally:
            watcher.idle_done()
        assert (1, b"EXISTS") in [tuple(r[:2]) for r in responses]
        assert time.monotonic() - started < 5


@pytest.mark.imap
def test_dovecot_stop_and_start(dovecot: DovecotServer, imap_account: ImapAccount) -> None:
    imap_account.append("INBOX", _raw("before outage"))
    client = imap_account.client()
    client.select_folder("INBOX")
    dovecot.stop()
    assert not dovecot.running
    with pytest.raises((OSError, IMAPClient.AbortError)):
        client.noop()
    with pytest.raises(OSError):
        imap_account.client(timeout=2)
    dovecot.start()
    assert imap_account.append("INBOX", _raw("after outage")) == 2
    with imap_account.connect() as c:
        c.select_folder("INBOX", readonly=True)
        assert c.search("ALL") == [1, 2]


@pytest.mark.imap
def test_dovecot_stopped_by_a_test_is_back_for_the_next(dovecot: DovecotServer) -> None:
    # test_dovecot_stop_and_start ran before and left it running; stop it here and
    # leave it stopped: the plugin's autouse fixture must bring it back.
    dovecot.stop()


@pytest.mark.imap
def test_dovecot_is_running_again(dovecot: DovecotServer) -> None:
    assert dovecot.running
    with dovecot.account().connect() as c:
        c.noop()


@pytest.mark.imap
def test_dovecot_reset_uidvalidity(dovecot: DovecotServer, imap_account: ImapAccount) -> None:
    imap_account.append("INBOX", _raw("one"))
    imap_account.create_folder("Archive")
    imap_account.append("Archive", _raw("archived"))
    before = imap_account.uidvalidity("INBOX")
    archive_before = imap_account.uidvalidity("Archive")
    selected = imap_account.client()
    selected.select_folder("INBOX")
    new = dovecot.reset_uidvalidity("INBOX", user=imap_account.user)
    assert new != before
    # A session that had the folder selected is thrown out by Dovecot.
    with pytest.raises((OSError, IMAPClient.AbortError)):
        selected.noop()
        selected.noop()
    assert imap_account.uidvalidity("INBOX") == new
    assert imap_account.uidvalidity("Archive") == archive_before
    with imap_account.connect() as c:
        info = c.select_folder("INBOX", readonly=True)
        assert int(info[b"UIDVALIDITY"]) == new
        assert info[b"EXISTS"] == 1


# --- SMTP ---------------------------------------------------------------------------------


def _message(subject: str = "Re: your ticket") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "help@example.com"
    msg["To"] = "customer@example.com"
    msg["Subject"] = subject
    msg.set_content("We fixed it.\n")
    return msg


def test_smtp_records_messages(smtp_server: SMTPServer) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        refused = smtp.send_message(_message())
    assert refused == {}
    [got] = smtp_server.wait_for(1)
    assert got.mail_from == "help@example.com"
    assert got.rcpt_tos == ["customer@example.com"]
    assert b"We fixed it." in got.data
    assert got.message["Subject"] == "Re: your ticket"
    assert got.auth_login is None


def test_smtp_auth_is_accepted_and_recorded(smtp_server: SMTPServer) -> None:
    smtp_server.user, smtp_server.password = "agent", "pw"
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        smtp.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("agent", "wrong")
        smtp.login("agent", "pw")
        smtp.send_message(_message())
    assert smtp_server.messages[0].auth_login == "agent"
    assert smtp_server.auth_logins == ["agent"]


def test_smtp_temporary_failure_on_data(smtp_server: SMTPServer) -> None:
    smtp_server.fail_with(451)
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.send_message(_message())
        assert err.value.smtp_code == 451
        smtp_server.fail_with(None)
        smtp.send_message(_message())
    assert len(smtp_server.messages) == 1


def test_smtp_permanent_failure_on_rcpt(smtp_server: SMTPServer) -> None:
    smtp_server.fail_with(550, stage="rcpt", message="No such user")
    with (
        smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused) as err,
    ):
        smtp.send_message(_message())
    code, reply = err.value.recipients["customer@example.com"]
    assert code == 550
    assert b"No such user" in reply
    assert smtp_server.messages == []


def test_smtp_failure_for_a_number_of_attempts(smtp_server: SMTPServer) -> None:
    smtp_server.fail_with(421, times=2)
    codes = []
    for _ in range(3):
        with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
            try:
                smtp.send_message(_message())
                codes.append(250)
            except smtplib.SMTPResponseException as exc:
                codes.append(exc.smtp_code)
    assert codes == [421, 421, 250]
    assert len(smtp_server.messages) == 1


def test_smtp_stop_and_start(smtp_server: SMTPServer) -> None:
    smtp_server.stop()
    with pytest.raises(OSError):
        smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=2)
    smtp_server.start()
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        smtp.send_message(_message())
    assert len(smtp_server.wait_for(1)) == 1
