"""`helpdesk mail smtp ...`, `mail send-queued` and `mail outbox ...` as an admin uses them,
against a real SMTP server (aiosmtpd) and a SQLite store made with `helpdesk init`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.services.smtp import SMTPServer

SECRET = "hunter2-very-secret"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr with terminal wrapping undone."""
        return " ".join((self.out + " " + self.err).split())

    def ok(self) -> Result:
        assert self.code == 0, self.text
        assert "Traceback" not in self.text
        return self

    def failed(self, code: int) -> Result:
        assert self.code == code, f"expected exit {code}, got {self.code}: {self.text}"
        assert "Traceback" not in self.text
        assert "helpdesk:" in self.err, self.err
        return self


Hd = Callable[..., Result]


@pytest.fixture
def hd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hd]:
    """The real `helpdesk` app in-process, on a fresh store, acting as agent anna."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in [("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share")]:
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HELPDESK_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("SMTP_PW", SECRET)
    for var in ("HELPDESK_DB", "HELPDESK_AGENT", "FORCE_COLOR", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    import store.config

    monkeypatch.setattr(store.config, "SYSTEM_CONFIG", tmp_path / "no-system-config.toml")
    import cli as cli_module
    import mail_sync.cli as mail_cli

    monkeypatch.setattr(cli_module.out, "_width", 250)
    monkeypatch.setattr(mail_cli.out, "_width", 250)
    monkeypatch.setattr(mail_cli.err, "_width", 250)
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        res = runner.invoke(cli_module.app, list(args), input=input)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        return Result(res.exit_code, res.stdout, res.stderr)

    url = f"sqlite:///{tmp_path / 'store.db'}"
    run("init", "--db", url).ok()
    monkeypatch.setenv("HELPDESK_DB", url)
    monkeypatch.setenv("HELPDESK_AGENT", "anna")
    run("queue", "add", "Support", "--address", "support@acme.test").ok()
    run("agent", "add", "anna", "--name", "Anna Admin", "--email", "anna@acme.test", "--admin").ok()
    yield run


def smtp_set(hd: Hd, smtp: SMTPServer, *extra: str) -> Result:
    return hd(
        "mail", "smtp", "set", "--host", smtp.host, "--port", str(smtp.port),
        "--from", "help@acme.test", "--from-name", "Acme Help", *extra,
    )  # fmt: skip


def new_ticket(hd: Hd, subject: str = "Printer jam") -> int:
    res = hd(
        "ticket", "create", "--subject", subject, "--from", "carol@customer.test",
        "--body", "It jams.", "--queue", "Support", "--json",
    ).ok()  # fmt: skip
    return int(json.loads(res.out)["number"])


def outbox(hd: Hd, *status: str) -> list[dict[str, Any]]:
    args = [a for s in status for a in ("--status", s)]
    data: list[dict[str, Any]] = json.loads(hd("mail", "outbox", "list", *args, "--json").ok().out)
    return data


def delivery(hd: Hd, number: int) -> list[str | None]:
    data = json.loads(hd("ticket", "show", str(number), "--json").ok().out)
    return [a["delivery_status"] for a in data["articles"] if a["kind"] == "email_out"]


def test_smtp_set_show_and_test_never_reveal_the_password(
    hd: Hd, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    res = smtp_set(hd, smtp_server, "--user", "bot", "--password-env", "SMTP_PW").ok()
    assert "secret from environment variable SMTP_PW" in res.text
    shown = hd("mail", "smtp", "show").ok()
    assert f"{smtp_server.host}:{smtp_server.port} (plain)" in shown.text
    assert "environment variable SMTP_PW (set)" in shown.text
    assert "Acme Help <help@acme.test>" in shown.text
    data = json.loads(hd("mail", "smtp", "show", "--json").ok().out)
    assert data["password_env"] == "SMTP_PW" and data["username"] == "bot"
    assert SECRET not in shown.text + json.dumps(data)
    with sqlite3.connect(tmp_path / "store.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert SECRET not in dump and "SMTP_PW" in dump

    tested = hd("mail", "smtp", "test").ok()
    assert "connected, logged in as bot" in tested.text and "AUTH" in tested.text
    assert smtp_server.auth_logins == ["bot"]
    assert smtp_server.messages == []  # a test sends nothing

    smtp_server.user, smtp_server.password = "bot", "another password"
    bad = hd("mail", "smtp", "test").failed(1)
    assert "SMTP test failed: SMTP authentication failed: SMTP 535" in bad.text
    assert SECRET not in bad.text and len(bad.err.strip().splitlines()) == 1

    smtp_server.stop()
    down = hd("mail", "smtp", "test").failed(1)
    assert f"cannot reach the SMTP server {smtp_server.host}:{smtp_server.port}" in down.text


def test_smtp_set_refuses_inconsistent_options(hd: Hd, smtp_server: SMTPServer) -> None:
    assert (
        "give only one of --tls, --starttls"
        in smtp_set(hd, smtp_server, "--tls", "--starttls").failed(5).text
    )
    assert (
        "say where the password comes from"
        in smtp_set(hd, smtp_server, "--user", "bot").failed(5).text
    )
    assert (
        "--from must be a plain address"
        in hd("mail", "smtp", "set", "--host", "h", "--from", "x@y\r\nBcc: evil@x").failed(5).text
    )
    assert (
        "--sent-folder needs a mail account"
        in smtp_set(hd, smtp_server, "--sent-folder", "Sent").failed(5).text
    )
    assert "no SMTP server is configured" in hd("mail", "smtp", "show").failed(1).text
    assert "no SMTP server is configured" in hd("mail", "send-queued").failed(1).text


def test_send_queued_outbox_list_retry_and_cancel(hd: Hd, smtp_server: SMTPServer) -> None:
    smtp_set(hd, smtp_server).ok()
    n = new_ticket(hd)
    hd("ticket", "reply", str(n), "--body", "Please restart it.").ok()

    smtp_server.fail_with(550, stage="rcpt", message="No such user")
    res = hd("mail", "send-queued")
    assert res.code == 1 and "sent 0, to retry 0, failed 1" in res.text
    assert "FAILED: carol@customer.test refused: SMTP 550" in res.text
    (row,) = outbox(hd)
    assert row["ticket"] == n and row["status"] == "failed" and row["to"] == ["carol@customer.test"]
    assert row["subject"] == "Re: Printer jam" and row["attempts"] == 1
    assert "550" in row["last_error"] and "No such user" in row["last_error"]
    table = hd("mail", "outbox", "list").ok().text
    assert f"#{n}" in table and "failed" in table and "No such user" in table
    assert delivery(hd, n) == ["failed"]

    smtp_server.fail_with(None)
    assert hd("mail", "outbox", "retry", str(row["id"])).ok().text == f"Queued again: {row['id']}."
    assert delivery(hd, n) == ["queued"]
    assert "sent 1, to retry 0, failed 0" in hd("mail", "send-queued").ok().text
    (got,) = smtp_server.wait_for(1)
    assert got.rcpt_tos == ["carol@customer.test"]
    assert got.message["From"] == "Anna Admin via Acme Help <support@acme.test>"
    assert got.message["Subject"] == f"Re: Printer jam [#{n}]"
    # The Message-ID carries the queue's domain, and the ticket keeps the ID that went out.
    msgid = got.message["Message-ID"]
    assert msgid.startswith(f"<t{n}.") and msgid.endswith("@acme.test>")
    shown = json.loads(hd("ticket", "show", str(n), "--json").ok().out)
    assert [a["message_id"] for a in shown["articles"] if a["kind"] == "email_out"] == [
        msgid.strip("<>")
    ]
    assert outbox(hd) == [] and [r["id"] for r in outbox(hd, "sent")] == [row["id"]]
    assert delivery(hd, n) == ["sent"]

    # A second reply is cancelled before the sender runs: never sent, shown as cancelled.
    hd("ticket", "reply", str(n), "--body", "Oops, wrong ticket.").ok()
    (queued,) = outbox(hd, "queued")
    hd("mail", "outbox", "cancel", str(queued["id"])).ok()
    assert "sent 0, to retry 0, failed 0" in hd("mail", "send-queued", "--now").ok().text
    assert len(smtp_server.messages) == 1
    assert delivery(hd, n) == ["sent", "cancelled"]
    (cancelled,) = outbox(hd, "cancelled")
    assert cancelled["last_error"].startswith("cancelled by ")

    assert (
        "is sent; it cannot be cancelled"
        in hd("mail", "outbox", "cancel", str(row["id"])).failed(4).text
    )
    assert (
        "only failed mail can be retried"
        in hd("mail", "outbox", "retry", str(queued["id"])).failed(4).text
    )
    assert "no outbox entry 999" in hd("mail", "outbox", "retry", "999").failed(3).text
    assert hd("mail", "outbox", "retry", "--all-failed").ok().text == "No failed mail to retry."
    assert "give outbox ids or --all-failed" in hd("mail", "outbox", "retry").failed(5).text
    assert (
        "unknown status 'lost'" in hd("mail", "outbox", "list", "--status", "lost").failed(5).text
    )


def test_send_queued_while_smtp_is_down_keeps_everything_then_sends_once(
    hd: Hd, smtp_server: SMTPServer
) -> None:
    smtp_set(hd, smtp_server).ok()
    n = new_ticket(hd)
    for i in range(3):
        hd("ticket", "reply", str(n), "--body", f"Reply number {i}.").ok()
    smtp_server.stop()
    res = hd("mail", "send-queued")
    assert res.code == 1 and "sent 0, to retry 3, failed 0" in res.text
    assert res.text.count("will be retried: cannot reach the SMTP server") == 3
    rows = outbox(hd)
    assert [r["status"] for r in rows] == ["queued"] * 3
    assert all(r["next_attempt"] and "cannot reach" in r["last_error"] for r in rows)
    smtp_server.start()
    # Without --now the backoff is respected; with it, everything goes out at once.
    assert "sent 0" in hd("mail", "send-queued").ok().text
    assert "sent 3, to retry 0, failed 0" in hd("mail", "send-queued", "--now").ok().text
    assert "sent 0" in hd("mail", "send-queued", "--now").ok().text
    got = smtp_server.wait_for(3)
    assert sorted(m.message.get_content().strip() for m in got) == [
        "Reply number 0.",
        "Reply number 1.",
        "Reply number 2.",
    ]
    assert len({m.message["Message-ID"] for m in got}) == 3
