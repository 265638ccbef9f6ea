"""The mail commands (`helpdesk mail ...`, `helpdesk sync`, `helpdesk import ...`): thin typer
wrappers over accounts, the sync engine, the daemon, the importer and the quarantine."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mail_sync import accounts as acc
from store.config import ConfigError, load_config
from store.engine import Database, StoreError
from store.sanitize import clean_line, clean_text
from store.service import NotFoundError, ValidationError

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_INVALID = 5
EXIT_DATABASE = 6

#: An account failing for longer than this is shown as FAILING (and fails `status --check`).
FAILING_AFTER = timedelta(minutes=15)
#: No sync attempt for this long while enabled: the daemon is probably not running.
STALE_AFTER = timedelta(minutes=10)

mail_app = typer.Typer(
    help="Mail in and out: IMAP accounts, sync status, quarantine, explain, SMTP, outbox.",
    no_args_is_help=True,
)
account_app = typer.Typer(help="IMAP accounts that feed queues.", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Mail that could not become a ticket (raw bytes kept).", no_args_is_help=True
)
import_app = typer.Typer(
    help="Import existing mail (mbox, Maildir, .eml) through the mail pipeline.",
    no_args_is_help=True,
)
smtp_app = typer.Typer(
    help="Mail out: the SMTP server replies are delivered through.", no_args_is_help=True
)
outbox_app = typer.Typer(
    help="Outbound mail waiting, failed or sent: list, retry, cancel.", no_args_is_help=True
)
mail_app.add_typer(account_app, name="account")
mail_app.add_typer(quarantine_app, name="quarantine")
mail_app.add_typer(smtp_app, name="smtp")
mail_app.add_typer(outbox_app, name="outbox")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_db_factory: list[Callable[[], Database]] = []

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Machine-readable output with stable field names.")
]
QueueOpt = Annotated[
    str | None, typer.Option("--queue", help="Queue for mail no queue address matches.")
]
MaxMessageOpt = Annotated[
    float | None,
    typer.Option(min=0.001, help="Mail over this many MB keeps only its header (default 50)."),
]
MaxAttachmentOpt = Annotated[
    float | None,
    typer.Option(min=0.001, help="Attachments over this many MB are left out (default 25)."),
]
# Where an IMAP or SMTP secret comes from (never the database); `mail account add` and
# `mail smtp set` take the same four options.
PasswordEnvOpt = Annotated[
    str | None, typer.Option(help="Read the password from this environment variable.")
]
PasswordCommandOpt = Annotated[
    str | None, typer.Option(help="Run this command (no shell) and use its first output line.")
]
KeyringOpt = Annotated[
    bool, typer.Option("--keyring", help="Keep the password in the system keyring.")
]
OAuth2TokenOpt = Annotated[
    str | None,
    typer.Option(help="XOAUTH2: a command printing a fresh access token (Gmail, M365)."),
]


class ConnectionProblem(Exception):
    """The server could not be reached or refused us (reported as one line, exit 1)."""


def register(app: typer.Typer, get_db: Callable[[], Database]) -> None:
    """Mount `mail`, `sync` and `import` on the main app; `get_db` opens the store."""
    _db_factory[:] = [get_db]
    app.add_typer(mail_app, name="mail")
    from mail_sync.csat_cli import register_csat

    register_csat(mail_app, _open_db)
    app.command("sync")(sync_command)
    app.add_typer(import_app, name="import")


# --------------------------------------------------------------------------- plumbing
def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One clear line on stderr and a meaningful exit code; never a traceback."""
    err.print(Text(f"helpdesk: {clean_line(message)}", style="red"))
    raise typer.Exit(code)


def _open_db() -> Database:
    if _db_factory:
        return _db_factory[0]()
    try:
        return Database(load_config().db_url)
    except ConfigError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), EXIT_DATABASE)


def run(body: Callable[[Database], Awaitable[T]]) -> T:
    """Open the store, check its schema, run `body`; errors become one line + exit code."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from mail_sync.engine import AccountBusy
    from mail_sync.importer import MailboxNotFound
    from mail_sync.ingest import QuarantineError
    from mail_sync.outbox import OutboxStateError, SmtpConfigError
    from store.migrate import current_revision, head_revision

    database = _open_db()

    async def main() -> T:
        try:
            rev = await current_revision(database)
            if rev is None:
                raise StoreError("the store has no schema; run `helpdesk init`")
            if rev != head_revision():
                raise StoreError(
                    f"the store schema is at {rev}, this helpdesk needs {head_revision()}; "
                    "run `helpdesk db upgrade`"
                )
            return await body(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except (acc.AccountNotFound, NotFoundError, MailboxNotFound) as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except AccountBusy as exc:
        fail(str(exc), EXIT_CONFLICT)
    except (acc.SecretError, QuarantineError, ConnectionProblem, SmtpConfigError) as exc:
        fail(str(exc), EXIT_ERROR)
    except OutboxStateError as exc:
        fail(str(exc), EXIT_CONFLICT)
    except LookupError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except (acc.AccountError, ValidationError, ValueError) as exc:
        fail(str(exc), EXIT_INVALID)
    except StoreError as exc:
        fail(str(exc), EXIT_DATABASE)
    except (OperationalError, DBAPIError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"cannot use the database: {detail}", EXIT_DATABASE)
    except OSError as exc:
        fail(f"{exc.strerror or exc}", EXIT_ERROR)
    except Exception as exc:
        if os.environ.get("HELPDESK_DEBUG"):
            raise
        from mail_sync.engine import describe

        fail(f"unexpected error: {describe(exc)} (HELPDESK_DEBUG=1 shows where)", EXIT_ERROR)


def _keyring_password(prompt: str) -> str:
    """The password to put in the keyring: asked for on a terminal, else the first stdin line."""
    if sys.stdin.isatty():
        password = str(typer.prompt(prompt, hide_input=True))
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        fail("no password given for the keyring", EXIT_INVALID)
    return password


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "never"
    secs = int(((now or datetime.now(UTC)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{max(secs, 0)}s ago"


# --------------------------------------------------------------------------- accounts
@account_app.command("add")
def account_add(
    name: Annotated[str, typer.Argument(help="A short name for the account.")],
    host: Annotated[str, typer.Option(help="IMAP server host name.")],
    user: Annotated[str, typer.Option(help="Login name.")],
    port: Annotated[int | None, typer.Option(help="Port (default 993 with TLS, else 143).")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Implicit TLS (the default).")] = False,
    starttls: Annotated[bool, typer.Option("--starttls", help="STARTTLS on port 143.")] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="No encryption (only for local test servers).")
    ] = False,
    password_env: PasswordEnvOpt = None,
    password_command: PasswordCommandOpt = None,
    keyring: KeyringOpt = False,
    oauth2_token_command: OAuth2TokenOpt = None,
    folder: Annotated[
        list[str] | None, typer.Option("--folder", help="Folder to sync (repeatable).")
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="Queue for mail no queue address matches.")
    ] = None,
    after: Annotated[
        str, typer.Option(help="After ingesting: leave (default), seen, or move:FOLDER.")
    ] = "leave",
    max_message_mb: MaxMessageOpt = None,
    max_attachment_mb: MaxAttachmentOpt = None,
) -> None:
    """Add an IMAP account. The secret itself is never stored in the database."""
    modes = [m for m, on in (("tls", tls), ("starttls", starttls), ("plain", plain)) if on]
    if len(modes) > 1:
        fail("give only one of --tls, --starttls, --plain", EXIT_INVALID)
    password = _keyring_password(f"Password for {user}@{host}") if keyring else None

    async def body(db: Database) -> acc.AccountInfo:
        info = await acc.add_account(
            db,
            name,
            host=host,
            port=port,
            security=modes[0] if modes else "tls",
            username=user,
            password_env=password_env,
            password_command=password_command,
            use_keyring=keyring,
            oauth2_token_command=oauth2_token_command,
            folders=folder or ["INBOX"],
            queue=queue,
            after=after,
            settings=_size_limits(max_message_mb, max_attachment_mb),
        )
        if password is not None:
            try:
                acc.keyring_set(info.name, password)
            except acc.SecretError:
                await acc.remove_account(db, info.name)
                raise
        return info

    info = run(body)
    out.print(
        Text(
            f"Account {info.name}: {info.username} on {info.host}:{info.port} ({info.security}), "
            f"folders {', '.join(info.folders)}, queue {info.queue_name or '-'}, "
            f"secret from {info.secret_source}. Check it with `helpdesk mail account test {info.name}`."
        )
    )


def _size_limits(max_message_mb: float | None, max_attachment_mb: float | None) -> dict[str, int]:
    """Account settings for the size limits given in MB (None: keep the default)."""
    from mail_sync.prepare import MB

    limits = {"max_message_bytes": max_message_mb, "max_attachment_bytes": max_attachment_mb}
    return {k: int(v * MB) for k, v in limits.items() if v is not None}


def _limits_text(a: acc.AccountInfo) -> str:
    from mail_sync.engine import SyncSettings
    from mail_sync.prepare import human_size

    limits = SyncSettings.for_account(a)
    return (
        f"mail up to {human_size(limits.max_message_bytes)} "
        f"(larger: header only), attachments up to {human_size(limits.max_attachment_bytes)}"
    )


@account_app.command("limits")
def account_limits(
    name: Annotated[str, typer.Argument(help="Account name.")],
    max_message_mb: MaxMessageOpt = None,
    max_attachment_mb: MaxAttachmentOpt = None,
) -> None:
    """Show or change an account's size limits (mail over them still becomes a ticket)."""
    values = _size_limits(max_message_mb, max_attachment_mb)
    if values:
        info = run(lambda db: acc.update_settings(db, name, values))
    else:
        info = run(lambda db: acc.get_account(db, name))
    out.print(Text(f"Account {info.name}: {_limits_text(info)}."))


def _account_dict(a: acc.AccountInfo) -> dict[str, Any]:
    from mail_sync.engine import SyncSettings

    limits = SyncSettings.for_account(a)
    return {
        "name": a.name,
        "host": a.host,
        "port": a.port,
        "security": a.security,
        "user": a.username,
        "folders": list(a.folders),
        "queue": a.queue_name,
        "after": a.after,
        "enabled": a.enabled,
        "secret": a.secret_source,
        "max_message_bytes": limits.max_message_bytes,
        "max_attachment_bytes": limits.max_attachment_bytes,
    }


@account_app.command("list")
def account_list(json_: JsonOpt = False) -> None:
    """List the accounts (where their secrets come from, never the secrets)."""
    accounts = run(lambda db: acc.list_accounts(db))
    if json_:
        print_json([_account_dict(a) for a in accounts])
        return
    if not accounts:
        out.print("No mail accounts. Add one with `helpdesk mail account add NAME --host ...`.")
        return
    table = Table("name", "server", "user", "folders", "queue", "after", "secret from")
    for a in accounts:
        table.add_row(
            Text(a.name),
            Text(f"{a.host}:{a.port} ({a.security})"),
            Text(a.username),
            Text(", ".join(a.folders)),
            Text(a.queue_name or "-"),
            Text(a.after),
            Text(a.secret_source),
        )
    out.print(table)


@account_app.command("test")
def account_test(name: Annotated[str, typer.Argument(help="Account name.")]) -> None:
    """Connect, log in and look at every folder; nothing is fetched or changed."""
    from mail_sync.engine import SyncEngine, describe

    async def body(db: Database) -> dict[str, Any]:
        account = await acc.get_account(db, name)
        try:
            return await SyncEngine(db, account).probe()
        except acc.SecretError:
            raise
        except Exception as exc:  # noqa: BLE001 - report any connection problem as one line
            raise ConnectionProblem(f"{name}: {describe(exc)}") from None

    result = run(body)
    out.print(Text(f"{name}: logged in; server offers {', '.join(result['capabilities'])}"))
    bad = False
    for f in result["folders"]:
        if f.get("error"):
            bad = True
            out.print(Text(f"  {f['folder']}: {f['error']}", style="red"))
        else:
            out.print(
                Text(
                    f"  {f['folder']}: {f['messages']} messages, UIDVALIDITY {f['uidvalidity']}, "
                    f"next UID {f['uidnext']}"
                )
            )
    if not result["idle"]:
        out.print(Text("  no IDLE: new mail is found by polling", style="yellow"))
    if bad:
        raise typer.Exit(EXIT_ERROR)


@account_app.command("remove")
def account_remove(
    name: Annotated[str, typer.Argument(help="Account name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove an account and its sync state; tickets and quarantined mail stay."""
    if not yes and not typer.confirm(f"Remove mail account {name!r}?", default=False):
        raise typer.Exit(EXIT_ERROR)
    run(lambda db: acc.remove_account(db, name))
    out.print(Text(f"Account {name} removed."))


@account_app.command("resume")
def account_resume(
    name: Annotated[str, typer.Argument(help="Account name.")],
    folder: Annotated[str | None, typer.Option(help="Only this folder.")] = None,
) -> None:
    """Resume a stopped folder (e.g. after a UIDVALIDITY change): it is re-read, and mail
    already in the store is recognised by Message-ID, not imported again."""
    folders = run(lambda db: acc.resume_folder(db, name, folder))
    if not folders:
        fail(f"no stopped folder{f' {folder}' if folder else ''} on account {name}", EXIT_NOT_FOUND)
    out.print(Text(f"Resumed {', '.join(folders)}; the next sync re-reads them."))


# --------------------------------------------------------------------------- status
async def collect_status(db: Database, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per account: last success, last error, backlog, folders, quarantine, loud flags."""
    from sqlalchemy import func, select

    from store.models import MailFolderState, MailHeartbeat, Quarantine

    now = now or datetime.now(UTC)
    accounts = await acc.list_accounts(db)
    rows: list[dict[str, Any]] = []
    async with db.read() as session:
        held = dict(
            (
                await session.execute(
                    select(Quarantine.account_id, func.count())
                    .where(Quarantine.status == "held")
                    .group_by(Quarantine.account_id)
                )
            ).all()
        )
        for a in accounts:
            hb = await session.get(MailHeartbeat, a.id)
            folders = (
                (
                    await session.execute(
                        select(MailFolderState).where(MailFolderState.account_id == a.id)
                    )
                )
                .scalars()
                .all()
            )
            failing = (
                now - hb.failing_since if hb is not None and hb.failing_since is not None else None
            )
            stopped = [f for f in folders if f.stopped_reason]
            state = "ok"
            if not a.enabled:
                state = "disabled"
            elif hb is None or hb.last_attempt_at is None:
                state = "never-synced"
            elif stopped or (failing is not None and failing >= FAILING_AFTER):
                state = "failing"
            elif failing is not None:
                state = "retrying"
            elif now - hb.last_attempt_at > STALE_AFTER:
                state = "stale"
            rows.append(
                {
                    "account": a.name,
                    "state": state,
                    "last_attempt": hb.last_attempt_at if hb else None,
                    "last_success": hb.last_success_at if hb else None,
                    "last_error": hb.last_error if hb else None,
                    "last_error_at": hb.last_error_at if hb else None,
                    "failing_since": hb.failing_since if hb else None,
                    "backlog": hb.backlog if hb else None,
                    "quarantine_held": int(held.get(a.id, 0)),
                    "folders": [
                        {
                            "folder": f.folder,
                            "uidvalidity": f.uidvalidity,
                            "last_uid": f.last_uid,
                            "stopped": f.stopped_reason,
                        }
                        for f in folders
                    ],
                }
            )
        unassigned = int(held.get(None, 0))
        if unassigned:
            rows.append({"account": None, "state": "import", "quarantine_held": unassigned})
    return rows


@mail_app.command("status")
def mail_status(
    json_: JsonOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if an account is failing (for monitoring).")
    ] = False,
) -> None:
    """Each account's last success, last error, backlog and stopped folders."""
    rows = run(collect_status)
    bad = any(r["state"] in ("failing", "stale") for r in rows)
    if json_:
        print_json(rows)
    elif not rows:
        out.print("No mail accounts.")
    else:
        now = datetime.now(UTC)
        for r in rows:
            if r["account"] is None:
                out.print(Text(f"imports: {r['quarantine_held']} mails in quarantine"))
                continue
            head = Text(f"{r['account']}: ", style="bold")
            state = r["state"]
            if state == "failing":
                since = r["failing_since"]
                head.append(
                    f"FAILING{' for ' + ago(since, now).removesuffix(' ago') if since else ''}",
                    style="bold white on red",
                )
                if r["last_error"]:
                    head.append(" " + clean_line(r["last_error"]), style="red")
            elif state == "stale":
                head.append(
                    f"NO SYNC for {ago(r['last_attempt'], now).removesuffix(' ago')} "
                    "(is `helpdesk sync` running?)",
                    style="bold white on red",
                )
            elif state == "retrying":
                head.append(f"retrying: {clean_line(r['last_error'] or '')}", style="yellow")
            else:
                head.append(state, style="green" if state == "ok" else "yellow")
            out.print(head)
            out.print(
                Text(
                    f"  last success {ago(r['last_success'], now)}, "
                    f"last error {ago(r['last_error_at'], now)}, backlog {r['backlog'] or 0}, "
                    f"quarantine {r['quarantine_held']}"
                )
            )
            for f in r["folders"]:
                line = Text(
                    f"  {f['folder']}: UIDVALIDITY {f['uidvalidity']}, last UID {f['last_uid']}"
                )
                if f["stopped"]:
                    line.append(f" STOPPED: {clean_line(f['stopped'])}", style="bold red")
                out.print(line)
    if check and bad:
        raise typer.Exit(EXIT_ERROR)


# --------------------------------------------------------------------------- quarantine
@quarantine_app.command("list")
def quarantine_list(
    all_: Annotated[
        bool, typer.Option("--all", help="Also entries already retried or released.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Mail held in quarantine, newest first."""
    from sqlalchemy import select

    from store.models import Quarantine

    async def body(db: Database) -> list[dict[str, Any]]:
        async with db.read() as session:
            stmt = select(Quarantine).order_by(Quarantine.id.desc()).limit(1000)
            if not all_:
                stmt = stmt.where(Quarantine.status == "held")
            return [
                {
                    "id": q.id,
                    "status": q.status,
                    "since": q.created_at,
                    "source": q.source,
                    "error": q.error,
                    "size": len(q.raw or b""),
                    "ticket_id": q.ticket_id,
                }
                for q in (await session.execute(stmt)).scalars()
            ]

    rows = run(body)
    if json_:
        print_json(rows)
        return
    if not rows:
        out.print("Quarantine is empty.")
        return
    table = Table("id", "status", "since", "source", "error")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["status"],
            ago(r["since"]),
            Text(clean_line(r["source"])[:60]),
            Text(clean_line(r["error"])[:100]),
        )
    out.print(table)


@quarantine_app.command("show")
def quarantine_show(
    qid: Annotated[int, typer.Argument(help="Quarantine entry id.")],
    raw: Annotated[bool, typer.Option("--raw", help="Write the raw mail to stdout.")] = False,
) -> None:
    """One quarantined mail: where it came from, the error, its header."""
    from store.models import Quarantine

    async def body(db: Database) -> Quarantine:
        async with db.read() as session:
            q = await session.get(Quarantine, qid)
            if q is None:
                raise NotFoundError(f"no quarantine entry {qid}")
            return q

    q = run(body)
    if raw:
        sys.stdout.buffer.write(q.raw)
        sys.stdout.buffer.flush()
        return
    from mail_sync.prepare import split_header

    out.print(
        Text(f"Quarantine entry {q.id} ({q.status}), since {q.created_at:%Y-%m-%d %H:%M} UTC")
    )
    out.print(Text(f"Source: {clean_line(q.source)}"))
    out.print(Text(f"Size:   {len(q.raw)} bytes"))
    out.print(Text(f"Error:  {clean_line(q.error)}", style="red"))
    header = split_header(q.raw)[:8192].decode("utf-8", "replace")
    out.print(Text("\n" + clean_text(header).rstrip()))
    out.print(
        Text(
            f"\n`helpdesk mail quarantine retry {q.id}` runs it through the pipeline again; "
            f"`release {q.id}` makes a ticket from the raw text even if parsing still fails."
        )
    )


def _resolve(qid: int, force: bool) -> None:
    from mail_sync.ingest import Ingestor, resolve_quarantined
    from store.service import Service

    async def body(db: Database) -> Any:
        cfg = load_config()
        return await resolve_quarantined(
            Ingestor(Service(db), languages=cfg.languages), qid, force=force
        )

    result = run(body)
    verb = "released" if force else "retried"
    out.print(
        Text(
            f"Quarantine entry {qid} {verb}: {result.outcome} on ticket #{result.ticket_number} "
            f"({clean_line(result.reason)})"
        )
    )


@quarantine_app.command("retry")
def quarantine_retry(qid: Annotated[int, typer.Argument(help="Quarantine entry id.")]) -> None:
    """Run a quarantined mail through the pipeline again (e.g. after an upgrade)."""
    _resolve(qid, force=False)


@quarantine_app.command("release")
def quarantine_release(qid: Annotated[int, typer.Argument(help="Quarantine entry id.")]) -> None:
    """Make a ticket from a quarantined mail even if it still cannot be parsed."""
    _resolve(qid, force=True)


# --------------------------------------------------------------------------- explain
@mail_app.command("explain")
def mail_explain(
    what: Annotated[str, typer.Argument(help="A ticket number (1234 or #1234) or a Message-ID.")],
    json_: JsonOpt = False,
) -> None:
    """Say which rule threaded each mail, and why mail was quarantined, suppressed or deduplicated."""
    from mail_sync.ingest import explain

    data = run(lambda db: explain(db, what))
    if json_:
        print_json(data)
        return
    if "ticket" in data and "mails" in data and "message_id" not in data:
        out.print(
            Text(f"Ticket #{data['ticket']} ({data['status']}): {clean_line(data['subject'])}")
        )
        for link in data["links"]:
            out.print(Text(f"  {link['kind']} #{link['ticket']}"))
    else:
        out.print(Text(f"Message-ID <{clean_line(data['message_id'])}>"))
    if not data["mails"] and not data["quarantine"]:
        out.print("  No mail came in on this ticket.")
    for m in data["mails"]:
        out.print(
            Text(
                f"\nMail {clean_line(m['message_id'] or '(no Message-ID)')} from "
                f"{clean_line(m['from'])} ({m['received']}) -> ticket #{m['ticket']}",
                style="bold",
            )
        )
        rows = [
            ("source", m["source"]),
            ("threading", m["threading"]),
            ("queue", m["queue"]),
            ("automatic", m["auto"] and f"{m['auto']}: never answered automatically"),
            ("acknowledgement", m["acknowledgement"]),
            ("quarantine", m["quarantine"]),
        ]
        for label, value in rows:
            if value:
                out.print(Text(f"  {label}: {clean_line(str(value))}"))
        for x in m["left_out"]:
            out.print(Text(f"  left out: {clean_line(x)}"))
        for d in m["duplicates"]:
            out.print(Text(f"  duplicate suppressed: {clean_line(d['source'])} ({d['why']})"))
        for c in m["server_copies"]:
            out.print(Text(f"  on the server: {clean_line(c)}"))
    for q in data["quarantine"]:
        out.print(
            Text(
                f"\nQuarantine entry {q['id']} ({q['status']}) from {clean_line(q['source'])}: "
                f"{clean_line(q['error'])}",
                style="red",
            )
        )


# --------------------------------------------------------------------------- mail out
@smtp_app.command("set")
def smtp_set(
    host: Annotated[str, typer.Option(help="SMTP server host name.")],
    from_: Annotated[
        str,
        typer.Option(
            "--from", help="From address when a ticket's queue has none (e.g. support@acme.com)."
        ),
    ],
    port: Annotated[
        int | None,
        typer.Option(help="Port (default 465 with --tls, 587 with --starttls, else 25)."),
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Implicit TLS (port 465).")] = False,
    starttls: Annotated[bool, typer.Option("--starttls", help="STARTTLS (port 587).")] = False,
    user: Annotated[str | None, typer.Option(help="Login name (none: no AUTH).")] = None,
    password_env: PasswordEnvOpt = None,
    password_command: PasswordCommandOpt = None,
    keyring: KeyringOpt = False,
    oauth2_token_command: OAuth2TokenOpt = None,
    from_name: Annotated[
        str, typer.Option(help="Display name in From (an agent's reply: 'Alice via NAME').")
    ] = "Support",
    agent_names: Annotated[
        bool,
        typer.Option(
            "--agent-names/--no-agent-names", help="Put the replying agent's name in From."
        ),
    ] = True,
    sent_folder: Annotated[
        str | None,
        typer.Option(help="APPEND a copy of every sent mail to this IMAP folder (e.g. Sent)."),
    ] = None,
    sent_account: Annotated[
        str | None,
        typer.Option(help="The mail account whose IMAP server keeps --sent-folder."),
    ] = None,
) -> None:
    """Configure the SMTP server (replaces the previous configuration). No secret is stored
    in the database: only where it comes from."""
    from mail_sync.outbox import SETTING_KEY, SmtpConfig, is_safe_address, keyring_set
    from store.service import Service

    if tls and starttls:
        fail("give only one of --tls, --starttls", EXIT_INVALID)
    security = "tls" if tls else "starttls" if starttls else "plain"
    sources = [bool(password_env), bool(password_command), keyring]
    if sum(sources) > 1:
        fail("give only one of --password-env, --password-command, --keyring", EXIT_INVALID)
    if (any(sources) or oauth2_token_command) and not user:
        fail("a password or token needs --user", EXIT_INVALID)
    if user and not any(sources) and not oauth2_token_command:
        fail(
            "say where the password comes from: --password-env VAR, --password-command CMD, "
            "--keyring or --oauth2-token-command CMD",
            EXIT_INVALID,
        )
    if not is_safe_address(from_.strip()):
        fail(f"--from must be a plain address like support@acme.com, not {from_!r}", EXIT_INVALID)
    if sent_account and not sent_folder:
        fail("--sent-account needs --sent-folder", EXIT_INVALID)
    password = _keyring_password(f"SMTP password for {user}@{host}") if keyring else None
    cfg = SmtpConfig(
        host=host.strip(),
        port=port or {"tls": 465, "starttls": 587}.get(security, 25),
        security=security,
        username=user,
        password_env=password_env,
        password_command=password_command,
        use_keyring=keyring,
        oauth2_token_command=oauth2_token_command,
        from_address=from_.strip(),
        from_name=clean_line(from_name) or "Support",
        agent_names=agent_names,
        sent_folder=sent_folder.strip() if sent_folder else None,
        sent_account=sent_account,
    )

    async def body(db: Database) -> None:
        if cfg.sent_folder:
            accounts = await acc.list_accounts(db)
            if cfg.sent_account:
                account = await acc.get_account(db, cfg.sent_account)
            elif len(accounts) == 1:
                account = accounts[0]
                cfg.sent_account = account.name
            else:
                raise acc.AccountError(
                    "--sent-folder needs --sent-account NAME (one of the mail accounts)"
                    if accounts
                    else "--sent-folder needs a mail account (`helpdesk mail account add`)"
                )
            if cfg.sent_folder in account.folders:
                raise acc.AccountError(
                    f"{cfg.sent_folder} is synced as incoming mail on account {account.name}; "
                    "copies there would come back as tickets"
                )
        if password is not None and user:
            keyring_set(user, password)
        await Service(db).set_setting(SETTING_KEY, cfg.to_setting())

    run(body)
    out.print(
        Text(
            f"SMTP: {cfg.host}:{cfg.port} ({cfg.security}), from {cfg.from_address}, "
            f"secret from {cfg.secret_source}"
            + (f", copies to {cfg.sent_folder} on {cfg.sent_account}" if cfg.sent_folder else "")
            + ". Check it with `helpdesk mail smtp test`."
        )
    )


def _smtp_config() -> Any:
    from mail_sync.outbox import SmtpConfigError, load_config

    async def body(db: Database) -> Any:
        async with db.read() as session:
            cfg = await load_config(session)
        if cfg is None:
            raise SmtpConfigError(
                "no SMTP server is configured; set one with `helpdesk mail smtp set --host ...`"
            )
        return cfg

    return run(body)


@smtp_app.command("show")
def smtp_show(json_: JsonOpt = False) -> None:
    """The SMTP configuration (where the secret comes from, never the secret)."""
    cfg = _smtp_config()
    if json_:
        data = cfg.to_setting()
        data["secret"] = cfg.secret_source
        print_json(data)
        return
    rows = [
        ("server", f"{cfg.host}:{cfg.port} ({cfg.security})"),
        ("login", cfg.username or "none (no AUTH)"),
        ("secret from", cfg.secret_source),
        ("from", f"{cfg.from_name} <{cfg.from_address}> (a queue's own address wins)"),
        ("agent names", "yes ('Alice via " + cfg.from_name + "')" if cfg.agent_names else "no"),
        ("subject tag", cfg.subject_tag),
        (
            "sent copies",
            f"folder {cfg.sent_folder} on account {cfg.sent_account}" if cfg.sent_folder else "off",
        ),
    ]
    for label, value in rows:
        out.print(Text(f"{label + ':':13}{clean_line(str(value))}"))


@smtp_app.command("test")
def smtp_test() -> None:
    """Connect, say EHLO and log in (nothing is sent); one line says how it went."""
    from mail_sync.outbox import SmtpConfigError, SmtpTemporary, probe

    cfg = _smtp_config()
    try:
        result = probe(cfg)
    except (SmtpTemporary, SmtpConfigError) as exc:
        fail(f"SMTP test failed: {exc}", EXIT_ERROR)
    who = f"logged in as {cfg.username}" if result["authenticated"] else "no login"
    out.print(
        Text(
            f"{cfg.host}:{cfg.port} ({cfg.security}): connected, {who}; server offers "
            f"{clean_line(', '.join(result['features'])) or 'no extensions'}"
        )
    )


@mail_app.command("send-queued")
def send_queued(
    now: Annotated[
        bool, typer.Option("--now", help="Also send mail still waiting for its retry time.")
    ] = False,
) -> None:
    """Deliver the queued mail once (what `helpdesk sync` does continuously). Exits 1 when
    something could not be delivered."""
    import logging

    from sqlalchemy import update

    from mail_sync.outbox import OutboxSender
    from store.models import Outbox, utcnow

    async def body(db: Database) -> tuple[dict[str, int], list[tuple[int, str, str | None]]]:
        sender = await OutboxSender.from_store(db)
        if now:
            async with db.write() as session:
                await session.execute(
                    update(Outbox).where(Outbox.status == "queued").values(next_attempt_at=utcnow())
                )
        counts = await sender.send_due()
        return counts, sender.results

    # The outcome is printed below as clear lines; the sender's key=value log lines are for
    # the daemon's log, not for this terminal.
    quiet = logging.getLogger("helpdesk.outbox")
    was = quiet.propagate
    null = logging.NullHandler()
    quiet.addHandler(null)
    quiet.propagate = False
    try:
        counts, results = run(body)
    finally:
        quiet.removeHandler(null)
        quiet.propagate = was
    out.print(Text(f"sent {counts['sent']}, to retry {counts['retry']}, failed {counts['failed']}"))
    for oid, outcome, error in results:
        if outcome != "sent":
            err.print(
                Text(
                    f"helpdesk: outbox {oid} {'will be retried' if outcome == 'retry' else 'FAILED'}"
                    f": {clean_line(error or '')}",
                    style="yellow" if outcome == "retry" else "red",
                )
            )
    if counts["retry"] or counts["failed"]:
        raise typer.Exit(EXIT_ERROR)


@outbox_app.command("list")
def outbox_list(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="queued, sending, failed, sent or cancelled (repeatable; default: "
            "queued, sending and failed).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
    json_: JsonOpt = False,
) -> None:
    """Outbound mail: ticket, recipient, subject, attempts, next attempt, last error."""
    from mail_sync.outbox import STATUSES, list_outbox

    wanted = tuple(status or ("queued", "sending", "failed"))
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        fail(f"unknown status {bad[0]!r}; use one of {', '.join(STATUSES)}", EXIT_INVALID)
    rows = run(lambda db: list_outbox(db, wanted, limit))
    if json_:
        print_json(rows)
        return
    if not rows:
        out.print(f"No {' or '.join(wanted)} mail in the outbox.")
        return
    table = Table(
        "id", "ticket", "status", "to", "subject", "attempts", "next attempt", "last error"
    )
    now = datetime.now(UTC)
    for r in rows:
        nxt = r["next_attempt"]
        when = (
            "now" if nxt is not None and nxt <= now else (f"{nxt:%Y-%m-%d %H:%M}" if nxt else "-")
        )
        table.add_row(
            str(r["id"]),
            f"#{r['ticket']}" if r["ticket"] is not None else "-",
            r["status"] + ("" if r["kind"] == "reply" else f" ({r['kind']})"),
            Text(clean_line(", ".join(r["to"]))[:60]),
            Text(clean_line(r["subject"])[:60]),
            str(r["attempts"]),
            when,
            Text(
                clean_line(r["last_error"] or "")[:100],
                style="red" if r["status"] == "failed" else "",
            ),
        )
    out.print(table)


@outbox_app.command("retry")
def outbox_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox entry ids.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed entry.")] = False,
) -> None:
    """Queue failed mail again (sent at the next run of the sender)."""
    from mail_sync.outbox import retry_outbox

    if bool(ids) == all_failed:
        fail("give outbox ids or --all-failed", EXIT_INVALID)
    done = run(lambda db: retry_outbox(db, None if all_failed else list(ids or [])))
    if not done:
        out.print("No failed mail to retry.")
        return
    out.print(Text(f"Queued again: {', '.join(str(i) for i in done)}."))


@outbox_app.command("cancel")
def outbox_cancel(
    oid: Annotated[int, typer.Argument(help="Outbox entry id.")],
) -> None:
    """Cancel a queued or failed mail: it is never sent; the ticket shows it as cancelled."""
    import getpass

    from mail_sync.outbox import cancel_outbox

    run(lambda db: cancel_outbox(db, oid, who=getpass.getuser()))
    out.print(Text(f"Outbox entry {oid} cancelled; it will not be sent."))


# --------------------------------------------------------------------------- sync
def sync_command(
    once: Annotated[
        bool, typer.Option("--once", help="One pass over every folder, then exit.")
    ] = False,
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug log lines.")] = False,
) -> None:
    """Run the mail daemon (IDLE + polling, reconnects by itself; stop with SIGTERM/SIGINT),
    or with --once a single pass. Also wakes postponed and auto-closes solved tickets."""
    import logging

    from mail_sync.daemon import configure_logging, install_signal_handlers, run_daemon

    configure_logging(logging.DEBUG if verbose else logging.INFO)
    if once:
        _sync_once(account)
        return

    async def body(db: Database) -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        cfg = load_config()
        await run_daemon(db, [account] if account else None, stop, config=cfg)

    run(body)


def _sync_once(account: str | None) -> None:
    from mail_sync.engine import SyncEngine

    async def body(db: Database) -> list[Any]:
        cfg = load_config()
        accounts = (
            [await acc.get_account(db, account)]
            if account
            else await acc.list_accounts(db, enabled_only=True)
        )
        reports = []
        for a in accounts:
            reports.append(await SyncEngine(db, a, cfg).sync_once())
        return reports

    reports = run(body)
    if not reports:
        fail("no enabled mail accounts; add one with `helpdesk mail account add`", EXIT_NOT_FOUND)
    failed = False
    for rep in reports:
        t = rep.totals()
        line = Text(
            f"{rep.account}: {t.get('created', 0)} created, {t.get('threaded', 0)} threaded, "
            f"{t.get('duplicates', 0)} duplicates, {t.get('quarantined', 0)} quarantined"
        )
        out.print(line)
        for f in rep.folders:
            if f.error or f.stopped:
                failed = True
                err.print(
                    Text(
                        f"helpdesk: {rep.account if f.folder == '*' else f'{rep.account}/{f.folder}'}: "
                        f"{clean_line(f.error or f.stopped or '')}",
                        style="red",
                    )
                )
    if failed:
        raise typer.Exit(EXIT_ERROR)


# --------------------------------------------------------------------------- import
ImportStatusOpt = Annotated[
    str | None,
    typer.Option(
        "--status",
        help="solved or closed: the imported tickets end in that status (an archive of "
        "finished conversations); default: they stay new/open.",
    ),
]


def _import(
    kind: str,
    load: Callable[[], list[Any]],
    queue: str | None,
    json_: bool,
    status: str | None = None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from mail_sync.importer import import_mail
    from mail_sync.ingest import IngestSummary
    from store.models import Status

    final: Status | None = None
    if status is not None:
        if status.strip().lower() not in (Status.SOLVED.value, Status.CLOSED.value):
            fail(f"--status must be solved or closed, not {status!r}", EXIT_USAGE)
        final = Status(status.strip().lower())

    async def body(db: Database) -> IngestSummary:
        mails = await asyncio.to_thread(load)
        show = not json_ and err.is_terminal
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not show,
        ) as bar:
            task = bar.add_task(f"importing {kind}", total=len(mails))
            return await import_mail(
                db,
                mails,
                kind=kind,
                queue=queue,
                config=load_config(),
                on_result=lambda _r: bar.advance(task),
                status=final,
            )

    summary = run(body)
    data = summary.as_dict()
    if json_:
        print_json(data)
        return
    out.print(
        Text(
            f"Imported {data['total']} mails: {data['created']} tickets created, "
            f"{data['threaded']} threaded, {data['duplicates']} duplicates, "
            f"{data['quarantined']} quarantined"
            + (" (see `helpdesk mail quarantine list`)" if data["quarantined"] else "")
            + (f"; {data['status_set']} tickets set to {final.value}" if final is not None else "")
        )
    )


@import_app.command("mbox")
def import_mbox(
    path: Annotated[Path, typer.Argument(help="An mbox file.")],
    queue: QueueOpt = None,
    json_: JsonOpt = False,
    status: ImportStatusOpt = None,
) -> None:
    """Import every mail of an mbox file."""
    from mail_sync.importer import mbox_messages

    _import("mbox", lambda: mbox_messages(path), queue, json_, status)


@import_app.command("maildir")
def import_maildir(
    path: Annotated[Path, typer.Argument(help="A Maildir (with cur/ and new/).")],
    queue: QueueOpt = None,
    json_: JsonOpt = False,
    status: ImportStatusOpt = None,
) -> None:
    """Import every mail of a Maildir."""
    from mail_sync.importer import maildir_messages

    _import("maildir", lambda: maildir_messages(path), queue, json_, status)


@import_app.command("eml")
def import_eml(
    files: Annotated[list[Path], typer.Argument(help="One or more .eml files.")],
    queue: QueueOpt = None,
    json_: JsonOpt = False,
    status: ImportStatusOpt = None,
) -> None:
    """Import single-message files."""
    from mail_sync.importer import eml_messages

    _import("eml", lambda: eml_messages(files), queue, json_, status)
