"""The whole mail round trip with real servers: a customer mail in Dovecot becomes a ticket
(`helpdesk sync --once`), an agent answers from the console and from `helpdesk ticket reply`,
`helpdesk mail send-queued` delivers both to the SMTP server (aiosmtpd) with the right headers
(and copies them to the Sent folder), and the customer's answer, built from the captured mail,
comes back into the same ticket and reopens it."""

from __future__ import annotations

import asyncio
import email.policy
import json
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpdesk_tui.app import HelpdeskApp
from helpdesk_tui.screens.compose import ReviewScreen
from mail_sync.accounts import get_account
from mail_sync.engine import SyncEngine
from store.config import Config
from store.engine import Database
from store.models import Ticket, utcnow
from store.msgid import mail_secret, verify_message_id
from store.service import Service
from tests.services.dovecot import ImapAccount
from tests.services.smtp import ReceivedMessage, SMTPServer
from tests.tui.ticket_fixtures import open_ticket, until

pytestmark = pytest.mark.imap

SUPPORT = "support@help.test"
CAROL = "carol@customer.test"


class Helpdesk:
    """The `helpdesk` command in-process (typer CliRunner) on one store, as agent `login`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        import cli as cli_module
        import mail_sync.cli as mail_cli
        import store.config

        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local/share"))
        monkeypatch.setenv("HELPDESK_CONFIG", str(tmp_path / "config.toml"))
        monkeypatch.setattr(store.config, "SYSTEM_CONFIG", tmp_path / "no-system-config.toml")
        for var in ("HELPDESK_DB", "HELPDESK_AGENT", "FORCE_COLOR", "COLUMNS"):
            monkeypatch.delenv(var, raising=False)
        for console in (cli_module.out, mail_cli.out, mail_cli.err):
            monkeypatch.setattr(console, "_width", 250)
        self.app = cli_module.app
        self.path = tmp_path / "store.db"
        self.url = f"sqlite:///{self.path}"
        self.async_url = f"sqlite+aiosqlite:///{self.path}"

    def __call__(self, *args: str) -> str:
        res = CliRunner().invoke(self.app, list(args))
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        text = " ".join((res.stdout + " " + res.stderr).split())
        assert res.exit_code == 0, f"helpdesk {' '.join(args)} -> {res.exit_code}: {text}"
        return text

    async def run(self, *args: str) -> str:
        """The command in a thread (it runs its own event loop), as a user would in a shell."""
        return await asyncio.to_thread(self, *args)


def customer_mail(subject: str, body: str) -> tuple[bytes, str]:
    m = EmailMessage()
    m["From"] = f"Carol Customer <{CAROL}>"
    m["To"] = f"Help Desk <{SUPPORT}>"
    m["Subject"] = subject
    msgid = make_msgid(domain="customer.test")
    m["Message-ID"] = msgid
    m["Date"] = format_datetime(utcnow())
    m.set_content(body)
    return m.as_bytes(), msgid.strip("<>")


def answer_to(captured: ReceivedMessage, text: str) -> bytes:
    """What Carol's mail client sends when she answers a captured mail: `Re:`, In-Reply-To,
    References, her text above the quoted original."""
    original = captured.message
    quoted = "\n".join(f"> {line}" for line in original.get_content().splitlines())
    m = EmailMessage()
    m["From"] = f"Carol Customer <{CAROL}>"
    m["To"] = str(original["Reply-To"] or original["From"])
    m["Subject"] = f"Re: {original['Subject']}"
    m["Message-ID"] = make_msgid(domain="customer.test")
    m["In-Reply-To"] = original["Message-ID"]
    m["References"] = f"{original['References'] or ''} {original['Message-ID']}".strip()
    m["Date"] = format_datetime(utcnow())
    m.set_content(f"{text}\n\nOn Monday, {original['From']} wrote:\n{quoted}\n")
    return m.as_bytes()


async def reply_from_console(url: str, number: int, text: str) -> None:
    """Alice opens the ticket in the console, presses r, types, and sends after the review."""
    db = Database(url)
    try:
        service = Service(db)
        me = await service.agent("alice")
        app = HelpdeskApp(
            service, me, Config(db_url=url), follow_changes=False, presence_interval=0
        )
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_ticket(app, pilot, number)
            await pilot.press("r")
            await until(pilot, lambda: screen.composing and screen.composer.text_area.has_focus)
            keys = {" ": "space", ".": "full_stop", ",": "comma", "!": "exclamation_mark"}
            await pilot.press(*(keys.get(ch, ch) for ch in text))
            await until(pilot, lambda: screen.composer.text == text)
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
            await pilot.pause()
            await pilot.press("ctrl+s")  # send
            await until(pilot, lambda: not screen.composing)
            await until(
                pilot,
                lambda: screen.header_info is not None and screen.header_info.status == "answered",
            )
    finally:
        await db.dispose()


def sent_folder(account: ImapAccount) -> list[bytes]:
    with account.connect() as c:
        if not c.folder_exists("Sent"):
            return []
        c.select_folder("Sent", readonly=True)
        uids = c.search("ALL")
        return [d[b"BODY[]"] for d in c.fetch(uids, ["BODY.PEEK[]"]).values()] if uids else []


async def test_customer_mail_agent_replies_and_customer_answer_round_trip(
    imap_account: ImapAccount,
    smtp_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    hd = Helpdesk(monkeypatch, tmp_path)
    monkeypatch.setenv("HELPDESK_TEST_IMAP_PW", imap_account.password)
    await hd.run("init", "--db", hd.url)
    monkeypatch.setenv("HELPDESK_DB", hd.url)
    await hd.run("queue", "add", "Support", "--address", SUPPORT)
    await hd.run("agent", "add", "alice", "--name", "Alice Agent", "--email", "alice@help.test")
    await hd.run("agent", "add", "bob", "--name", "Bob Builder", "--email", "bob@help.test")
    await hd.run(
        "mail", "account", "add", "support", "--host", imap_account.host,
        "--port", str(imap_account.port), "--plain", "--user", imap_account.user,
        "--password-env", "HELPDESK_TEST_IMAP_PW", "--folder", "INBOX", "--queue", "Support",
    )  # fmt: skip
    await hd.run(
        "mail", "smtp", "set", "--host", smtp_server.host, "--port", str(smtp_server.port),
        "--from", SUPPORT, "--from-name", "Help Desk", "--sent-folder", "Sent",
        "--sent-account", "support",
    )  # fmt: skip

    # 1. Carol writes; `helpdesk sync --once` makes the ticket.
    raw, first_id = customer_mail("Printer prints blank pages", "Every page comes out blank.")
    imap_account.append("INBOX", raw)
    assert "support: 1 created" in await hd.run("sync", "--once")
    listed = json.loads(await hd.run("ticket", "list", "--json"))
    [ticket] = listed if isinstance(listed, list) else listed["tickets"]
    number = int(ticket["number"])

    # 2. Alice answers from the console; Bob from the command line (and marks it solved).
    await reply_from_console(hd.async_url, number, "Hi Carol, please check the toner.")
    monkeypatch.setenv("HELPDESK_AGENT", "bob")
    assert f"Reply to #{number} queued" in await hd.run(
        "ticket", "reply", str(number), "--body", "Toner ordered; solved for now.",
        "--status", "solved",
    )  # fmt: skip

    # 3. The sender delivers both, with the headers a mail client threads by.
    assert "sent 2, to retry 0, failed 0" in await hd.run("mail", "send-queued")
    got = {m.message.get_content().strip(): m for m in smtp_server.wait_for(2)}
    console_mail = got["Hi Carol, please check the toner."]
    cli_mail = got["Toner ordered; solved for now."]
    db = Database(hd.async_url)
    try:
        async with db.read() as s:
            secret = await mail_secret(s)
        for captured, agent in ((console_mail, "Alice Agent"), (cli_mail, "Bob Builder")):
            msg = captured.message
            assert captured.rcpt_tos == [CAROL] and captured.mail_from == SUPPORT
            assert msg["From"] == f"{agent} via Help Desk <{SUPPORT}>"
            assert msg["Reply-To"] == SUPPORT and msg["To"] == CAROL
            assert msg["Subject"] == f"Re: Printer prints blank pages [#{number}]"
            assert msg["In-Reply-To"] is not None and msg["References"] is not None
            assert f"<{first_id}>" in msg["References"]
            assert msg["Auto-Submitted"] is None
            assert verify_message_id(msg["Message-ID"], secret) == number
            assert msg["Message-ID"].endswith("@help.test>")
        assert console_mail.message["In-Reply-To"] == f"<{first_id}>"
        # Bob's reply threads under Alice's, which went out first in the ticket's history.
        assert cli_mail.message["In-Reply-To"] == console_mail.message["Message-ID"]
        assert len(sent_folder(imap_account)) == 2

        service = Service(db)
        assert (await service.get_ticket(number)).status == "solved"

        # 4. Carol answers Bob's mail from her mail client; the next sync threads it.
        imap_account.append("INBOX", answer_to(cli_mail, "Thanks, new toner works!"))
        account = await get_account(db, "support")
        report = await SyncEngine(db, account).sync_once()
        assert report.totals().get("threaded") == 1 and not report.totals().get("created")
        t = await service.get_ticket(number)
        assert t.status == "open"  # solved -> open: the customer answered
        detail = await service.ticket_detail(number)
        last = detail.articles[-1]
        assert last.kind == "email_in" and last.body_text.strip() == "Thanks, new toner works!"
        assert "please check the toner" not in last.body_text  # the quote is folded away
        assert last.in_reply_to == cli_mail.message["Message-ID"].strip("<>")
        async with db.read() as s:
            assert (await s.execute(select(func.count()).select_from(Ticket))).scalar_one() == 1
        out = [a.delivery_status for a in detail.articles if a.kind == "email_out"]
        assert out == ["sent", "sent"]
    finally:
        await db.dispose()
    assert len(smtp_server.messages) == 2  # nothing sent twice
    parsed = [
        email.message_from_bytes(r, policy=email.policy.default) for r in sent_folder(imap_account)
    ]
    assert sorted(str(m["Message-ID"]) for m in parsed) == sorted(
        str(m.message["Message-ID"]) for m in (console_mail, cli_mail)
    )
