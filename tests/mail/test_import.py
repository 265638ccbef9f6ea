"""`helpdesk import` and the mail CLI: the same pipeline from mbox/Maildir/.eml files."""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from mail_sync.cli import register
from mail_sync.importer import eml_messages, import_mail, maildir_messages, mbox_messages
from store.engine import Database
from store.migrate import upgrade
from store.models import Article, Outbox, Quarantine, Queue, Ticket
from store.service import Service

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def mail(subject: str, body: str = "Hello, the VPN does not connect.", **headers: str) -> bytes:
    m = EmailMessage()
    m["From"] = headers.pop("sender", "carol@example.org")
    m["To"] = "support@help.test"
    m["Subject"] = subject
    m["Message-ID"] = headers.pop("msgid", None) or make_msgid(domain="example.org")
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body)
    return m.as_bytes()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    u = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"

    async def setup() -> None:
        db = Database(u)
        await upgrade(db)
        await Service(db).add_queue("Support", ["support@help.test"])
        await db.dispose()

    asyncio.run(setup())
    yield u


def count(url: str, model: type) -> int:
    async def q() -> int:
        db = Database(url)
        try:
            async with db.read() as s:
                return int((await s.execute(select(func.count()).select_from(model))).scalar_one())
        finally:
            await db.dispose()

    return asyncio.run(q())


@pytest.fixture
def cli(url: str) -> CliRunner:
    return CliRunner()


def flat(res: object) -> str:
    """Command output with terminal wrapping undone."""
    return " ".join(str(getattr(res, "output", "")).split())


@pytest.fixture(autouse=True)
def _restore_cli_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """`register(app, ...)` below points the mail commands at a test store: undo it afterwards,
    or later tests driving the real `helpdesk` app would open this test's store."""
    import mail_sync.cli

    monkeypatch.setattr(mail_sync.cli, "_db_factory", list(mail_sync.cli._db_factory))


def app_for(url: str) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """helpdesk (test)"""

    register(app, lambda: Database(url))
    return app


def test_every_corpus_file_becomes_a_ticket_or_quarantine_and_counts_add_up(url: str) -> None:
    files = sorted(CORPUS.rglob("*.eml"))
    assert len(files) >= 160, f"corpus missing at {CORPUS}"

    async def run() -> None:
        db = Database(url)
        try:
            summary = await import_mail(db, eml_messages(files), kind="eml", keep_results=True)
            assert summary.total == len(files)
            assert (
                summary.created + summary.threaded + summary.duplicates + summary.quarantined
                == len(files)
            )
            for r in summary.results:
                assert r.ticket_number is not None or r.quarantine_id is not None, r
            async with db.read() as s:
                n_in = (
                    await s.execute(
                        select(func.count()).select_from(Article).where(Article.kind == "email_in")
                    )
                ).scalar_one()
                n_q = (await s.execute(select(func.count()).select_from(Quarantine))).scalar_one()
            assert n_in == summary.created + summary.threaded
            assert n_q == summary.quarantined
            again = await import_mail(db, eml_messages(files), kind="eml")
            assert again.created == again.threaded == 0
            assert again.duplicates + again.quarantined == len(files)
            async with db.read() as s:
                assert (
                    await s.execute(select(func.count()).select_from(Quarantine))
                ).scalar_one() == n_q
        finally:
            await db.dispose()

    asyncio.run(run())


def test_import_mbox_with_thread_and_summary(url: str, cli: CliRunner, tmp_path: Path) -> None:
    box = mailbox.mbox(str(tmp_path / "old.mbox"))
    first = mail("VPN down", msgid="<vpn-1@example.org>")
    box.add(first)
    box.add(mail("Re: VPN down", body="Still down.", In_Reply_To="<vpn-1@example.org>"))
    box.add(mail("Printer", sender="dave@example.org"))
    box.add(first)  # the same mail twice in the archive
    box.flush()
    res = cli.invoke(app_for(url), ["import", "mbox", str(tmp_path / "old.mbox")])
    assert res.exit_code == 0, res.output
    assert "Imported 4 mails: 2 tickets created, 1 threaded, 1 duplicates, 0 quarantined" in flat(
        res
    )
    assert count(url, Ticket) == 2
    res = cli.invoke(app_for(url), ["import", "mbox", str(tmp_path / "old.mbox"), "--json"])
    assert res.exit_code == 0
    assert '"duplicates": 4' in res.output


def test_imported_mail_keeps_its_date_and_is_never_acknowledged(url: str, tmp_path: Path) -> None:
    """Importing an archive: tickets and articles carry the mails' own dates (a date in the
    future is not believed), and no acknowledgement goes to customers for old mail."""
    box = mailbox.mbox(str(tmp_path / "2019.mbox"))
    box.add(
        mail("Old VPN issue", msgid="<old-1@example.org>", Date="Tue, 05 Mar 2019 09:15:00 +0100")
    )
    box.add(
        mail(
            "Re: Old VPN issue",
            body="Works again, thanks.",
            In_Reply_To="<old-1@example.org>",
            Date="Wed, 06 Mar 2019 17:40:00 +0100",
        )
    )
    box.add(mail("Wrong clock", sender="dave@example.org", Date="Mon, 01 Jan 2191 10:00:00 +0000"))
    box.flush()

    async def run() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, object]], int]:
        db = Database(url)
        service = Service(db)
        try:
            await service.add_canned("ack", "We got your mail about {{ ticket.subject }}.")
            async with db.write() as s:
                queue = (await s.execute(select(Queue))).scalar_one()
                queue.settings = {"ack": "ack"}
            await import_mail(db, mbox_messages(tmp_path / "2019.mbox"), kind="mbox")
            async with db.read() as s:
                tickets = [
                    (t.subject, t.created_at.isoformat(), t.updated_at.isoformat())
                    for t in (await s.execute(select(Ticket).order_by(Ticket.id))).scalars()
                ]
                articles = [
                    (a.subject or "", a.created_at.isoformat(), (a.meta or {}).get("ack"))
                    for a in (await s.execute(select(Article).order_by(Article.id))).scalars()
                ]
                outbox = int(
                    (await s.execute(select(func.count()).select_from(Outbox))).scalar_one()
                )
            return tickets, articles, outbox
        finally:
            await db.dispose()

    tickets, articles, outbox = asyncio.run(run())
    assert tickets[0] == (
        "Old VPN issue",
        "2019-03-05T08:15:00+00:00",
        "2019-03-06T16:40:00+00:00",
    ), "opened at the first mail's date, last updated by the reply"
    assert articles[0][:2] == ("Old VPN issue", "2019-03-05T08:15:00+00:00")
    assert articles[1][:2] == ("Re: Old VPN issue", "2019-03-06T16:40:00+00:00")
    wrong_clock = tickets[1]
    assert wrong_clock[0] == "Wrong clock" and wrong_clock[1].startswith("20")
    assert wrong_clock[1] < "2100", "a date in the future is replaced by the time of import"
    assert outbox == 0, "no acknowledgement for imported mail"
    assert articles[0][2] == articles[2][2] == "acknowledgement not sent: imported mail"


def test_import_an_archive_as_closed_tickets(url: str, cli: CliRunner, tmp_path: Path) -> None:
    """`--status closed`: an archive of finished conversations does not land in the queues
    as new work; a bad value is refused before anything is imported."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    box.add(mail("Old VPN issue", msgid="<arch-1@example.org>"))
    box.add(mail("Re: Old VPN issue", body="Fixed, thanks.", In_Reply_To="<arch-1@example.org>"))
    box.add(mail("Old printer issue", sender="dave@example.org"))
    box.flush()
    res = cli.invoke(
        app_for(url), ["import", "mbox", str(tmp_path / "archive.mbox"), "--status", "open"]
    )
    assert res.exit_code == 2 and "solved or closed" in flat(res)
    assert count(url, Ticket) == 0

    res = cli.invoke(
        app_for(url), ["import", "mbox", str(tmp_path / "archive.mbox"), "--status", "closed"]
    )
    assert res.exit_code == 0, res.output
    assert "2 tickets created, 1 threaded" in flat(res) and "2 tickets set to closed" in flat(res)

    async def statuses() -> list[str]:
        db = Database(url)
        try:
            async with db.read() as s:
                return [t.status for t in (await s.execute(select(Ticket))).scalars()]
        finally:
            await db.dispose()

    assert asyncio.run(statuses()) == ["closed", "closed"]


def test_import_maildir_and_eml(url: str, tmp_path: Path) -> None:
    md = mailbox.Maildir(str(tmp_path / "Maildir"))
    for i in range(3):
        md.add(mail(f"maildir {i}"))
    eml = tmp_path / "one.eml"
    eml.write_bytes(mail("from a file"))

    async def run() -> tuple[int, int]:
        db = Database(url)
        try:
            a = await import_mail(db, maildir_messages(tmp_path / "Maildir"), kind="maildir")
            b = await import_mail(db, eml_messages([eml]), kind="eml", queue="support")
            return a.created, b.created
        finally:
            await db.dispose()

    assert asyncio.run(run()) == (3, 1)


def test_import_errors_are_one_line(url: str, cli: CliRunner, tmp_path: Path) -> None:
    app = app_for(url)
    res = cli.invoke(app, ["import", "maildir", str(tmp_path)])
    assert res.exit_code == 3
    assert "is not a Maildir" in flat(res) and "Traceback" not in flat(res)
    res = cli.invoke(app, ["import", "eml", str(tmp_path / "missing.eml")])
    assert res.exit_code == 3 and "no file" in flat(res)
    f = tmp_path / "x.eml"
    f.write_bytes(mail("x"))
    res = cli.invoke(app, ["import", "eml", str(f), "--queue", "Nope"])
    assert res.exit_code == 3 and "no queue 'Nope'" in flat(res)
    assert mbox_messages  # imported for the public API


def test_quarantine_list_show_retry_release_and_explain(
    url: str, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mail_sync.prepare as prepare_mod
    from mail_sync.parse import ParseError

    real = prepare_mod.parse_mail
    broken = {"on": True}

    def flaky(raw: bytes, **kw: object) -> object:
        if broken["on"] and b"POISON" in raw:
            raise ParseError("MIME part limit exceeded")
        return real(raw, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare_mod, "parse_mail", flaky)
    app = app_for(url)
    for name, subject in (("a.eml", "POISON one"), ("b.eml", "POISON two"), ("ok.eml", "fine")):
        (tmp_path / name).write_bytes(mail(subject, msgid=f"<{name}@example.org>"))
    res = cli.invoke(
        app, ["import", "eml", *(str(tmp_path / n) for n in ("a.eml", "b.eml", "ok.eml"))]
    )
    assert res.exit_code == 0, res.output
    assert "2 quarantined" in flat(res)

    res = cli.invoke(app, ["mail", "quarantine", "list", "--json"])
    assert res.exit_code == 0
    ids = sorted(r["id"] for r in __import__("json").loads(res.output))
    assert len(ids) == 2
    res = cli.invoke(app, ["mail", "quarantine", "show", str(ids[0])])
    assert res.exit_code == 0 and "MIME part limit exceeded" in flat(res)
    assert "Subject: POISON one" in flat(res)
    raw = cli.invoke(app, ["mail", "quarantine", "show", str(ids[0]), "--raw"])
    assert "POISON one" in raw.output

    # Still broken: retry fails with one line and the entry stays held.
    res = cli.invoke(app, ["mail", "quarantine", "retry", str(ids[0])])
    assert res.exit_code == 1 and "still fails" in flat(res) and "Traceback" not in flat(res)
    # Release forces a ticket from the raw text.
    res = cli.invoke(app, ["mail", "quarantine", "release", str(ids[0])])
    assert res.exit_code == 0, res.output
    assert "released: created on ticket #" in flat(res)
    # After a parser fix, retry works.
    broken["on"] = False
    res = cli.invoke(app, ["mail", "quarantine", "retry", str(ids[1])])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["mail", "quarantine", "retry", str(ids[1])])
    assert res.exit_code == 1 and "already retried (ticket #1003)" in flat(res)
    res = cli.invoke(app, ["mail", "quarantine", "list"])
    assert "Quarantine is empty" in flat(res)
    assert count(url, Ticket) == 3

    res = cli.invoke(app, ["mail", "explain", "<a.eml@example.org>"])
    assert res.exit_code == 0, res.output
    text = flat(res)
    assert "released from quarantine" in text and "MIME part limit exceeded" in text
    res = cli.invoke(app, ["mail", "explain", "#1003"])
    assert res.exit_code == 0, res.output
    assert "threading: no known reference" in flat(res)
    res = cli.invoke(app, ["mail", "explain", "nothing@nowhere"])
    assert res.exit_code == 3 and "was ingested or quarantined" in flat(res)


def test_account_commands_never_show_secrets(url: str, cli: CliRunner) -> None:
    app = app_for(url)
    res = cli.invoke(
        app,
        [
            "mail", "account", "add", "support", "--host", "imap.example.com", "--user",
            "support@help.test", "--password-env", "SUPPORT_PW", "--folder", "INBOX",
            "--folder", "Escalations", "--queue", "Support", "--after", "move:Done",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["mail", "account", "list", "--json"])
    (acct,) = __import__("json").loads(res.output)
    assert acct["folders"] == ["INBOX", "Escalations"] and acct["port"] == 993
    assert acct["secret"] == "environment variable SUPPORT_PW"
    res = cli.invoke(app, ["mail", "account", "add", "bad", "--host", "h", "--user", "u"])
    assert res.exit_code == 5 and "say where the secret comes from" in flat(res)
    res = cli.invoke(
        app,
        ["mail", "account", "add", "x", "--host", "h", "--user", "u", "--password-env", "V",
         "--after", "delete"],
    )  # fmt: skip
    assert res.exit_code == 5 and "--after must be" in flat(res)
    res = cli.invoke(app, ["mail", "account", "test", "nope"])
    assert res.exit_code == 3
    assert acct["max_message_bytes"] == 50 * 1024 * 1024
    res = cli.invoke(app, ["mail", "account", "limits", "support", "--max-attachment-mb", "5"])
    assert res.exit_code == 0 and "attachments up to 5.0 MB" in flat(res), res.output
    res = cli.invoke(app, ["mail", "account", "list", "--json"])
    (acct,) = __import__("json").loads(res.output)
    assert acct["max_attachment_bytes"] == 5 * 1024 * 1024
    assert acct["max_message_bytes"] == 50 * 1024 * 1024
    res = cli.invoke(app, ["mail", "status"])
    assert res.exit_code == 0 and "never-synced" in flat(res)
    res = cli.invoke(app, ["mail", "account", "remove", "support"], input="n\n")
    assert res.exit_code == 1
    res = cli.invoke(app, ["mail", "account", "remove", "support", "--yes"])
    assert res.exit_code == 0
    res = cli.invoke(app, ["mail", "account", "list"])
    assert "No mail accounts" in flat(res)


def test_password_command_runs_without_a_shell(tmp_path: Path) -> None:
    from mail_sync.accounts import AccountInfo, SecretError, get_password

    marker = tmp_path / "pwned"
    acct = AccountInfo(
        1, "a", "h", 993, "tls", "u", password_command=f"echo 's3cret; touch {marker}'"
    )
    assert get_password(acct) == f"s3cret; touch {marker}"
    assert not marker.exists()
    bad = AccountInfo(1, "a", "h", 993, "tls", "u", password_command="false")
    with pytest.raises(SecretError, match="exit code 1"):
        get_password(bad)
    leaky = AccountInfo(
        1, "a", "h", 993, "tls", "u", password_command="sh -c 'echo s3cret; exit 3'"
    )
    with pytest.raises(SecretError) as exc:
        get_password(leaky)
    assert "s3cret" not in str(exc.value)
