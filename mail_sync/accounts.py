"""Mail accounts: how to reach a mailbox and where its secret comes from (never the secret itself)."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from store.engine import Database, StoreError
from store.models import MailAccount, MailFolderState, MailHeartbeat, Queue

#: The keyring "service" under which IMAP passwords are kept (user name: the account name).
KEYRING_SERVICE = "helpdesk-imap"
#: A secret command that has not answered after this long is stopped.
SECRET_COMMAND_TIMEOUT = 30.0
SECURITY_MODES = ("tls", "starttls", "plain")
DEFAULT_PORTS = {"tls": 993, "starttls": 143, "plain": 143}


class AccountError(StoreError):
    """An account cannot be used as configured (bad option, no secret, unknown queue...)."""


class AccountNotFound(AccountError):
    """No account by that name."""


class SecretError(AccountError):
    """The password or token could not be obtained; the message never contains the secret."""


@dataclass(frozen=True)
class AccountInfo:
    """A detached, plain copy of a MailAccount row (safe to pass to threads)."""

    id: int
    name: str
    host: str
    port: int
    security: str
    username: str
    password_env: str | None = None
    password_command: str | None = None
    use_keyring: bool = False
    oauth2_token_command: str | None = None
    folders: tuple[str, ...] = ("INBOX",)
    queue_name: str | None = None
    after: str = "leave"
    enabled: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def secret_source(self) -> str:
        """Where the secret comes from, for display (never the secret)."""
        if self.oauth2_token_command:
            return f"oauth2 token command {self.oauth2_token_command!r}"
        if self.password_env:
            return f"environment variable {self.password_env}"
        if self.password_command:
            return f"command {self.password_command!r}"
        if self.use_keyring:
            return f"system keyring ({KEYRING_SERVICE}/{self.name})"
        return "none"

    @property
    def after_action(self) -> tuple[str, str | None]:
        """`--after` split into (leave|seen|move, target folder)."""
        return parse_after(self.after)


def parse_after(value: str) -> tuple[str, str | None]:
    """`leave`, `seen` or `move:FOLDER` -> (action, folder); ValueError otherwise."""
    v = (value or "leave").strip()
    if v in ("leave", "seen"):
        return v, None
    if v.startswith("move:") and v[5:].strip():
        return "move", v[5:].strip()
    raise ValueError(f"--after must be leave, seen or move:FOLDER, not {value!r}")


def info_from_row(row: MailAccount, queue_name: str | None) -> AccountInfo:
    """Copy an ORM row into an AccountInfo."""
    return AccountInfo(
        id=row.id,
        name=row.name,
        host=row.host,
        port=row.port,
        security=row.security,
        username=row.username,
        password_env=row.password_env,
        password_command=row.password_command,
        use_keyring=row.use_keyring,
        oauth2_token_command=row.oauth2_token_command,
        folders=tuple(row.folders or ["INBOX"]),
        queue_name=queue_name,
        after=row.after or "leave",
        enabled=row.enabled,
        settings=dict(row.settings or {}),
    )


# ------------------------------------------------------------------------------- secrets
def run_secret_command(command: str, what: str) -> str:
    """Run a password/token command without a shell (shlex.split) and return its first line.

    Errors name the command and its exit status only: neither its output nor its
    error stream is repeated, since either may contain the secret.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"cannot split the {what} command: {exc}") from None
    if not argv:
        raise SecretError(f"the {what} command is empty")
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=SECRET_COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise SecretError(f"the {what} command {argv[0]!r} was not found") from None
    except subprocess.TimeoutExpired:
        raise SecretError(
            f"the {what} command {argv[0]!r} did not answer within {SECRET_COMMAND_TIMEOUT:.0f}s"
        ) from None
    except OSError as exc:
        raise SecretError(f"cannot run the {what} command {argv[0]!r}: {exc.strerror}") from None
    if res.returncode != 0:
        raise SecretError(f"the {what} command {argv[0]!r} failed with exit code {res.returncode}")
    value = res.stdout.split("\n", 1)[0].rstrip("\r")
    if not value:
        raise SecretError(f"the {what} command {argv[0]!r} printed nothing")
    return value


def _keyring() -> Any:
    try:
        import keyring
    except ImportError:
        raise SecretError(
            "the keyring package is not installed (pip install 'helpdesk[keyring]')"
        ) from None
    return keyring


def keyring_get(account_name: str) -> str:
    """The password kept in the system keyring for an account."""
    try:
        value = _keyring().get_password(KEYRING_SERVICE, account_name)
    except SecretError:
        raise
    except Exception as exc:  # noqa: BLE001 - keyring backends raise anything
        raise SecretError(f"the system keyring failed: {type(exc).__name__}") from None
    if not value:
        raise SecretError(
            f"no password for {account_name!r} in the system keyring ({KEYRING_SERVICE})"
        )
    return str(value)


def keyring_set(account_name: str, password: str) -> None:
    """Keep an account's password in the system keyring."""
    try:
        _keyring().set_password(KEYRING_SERVICE, account_name, password)
    except SecretError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SecretError(
            f"cannot store the password in the keyring: {type(exc).__name__}"
        ) from None


def get_password(account: AccountInfo) -> str:
    """The IMAP password, from the environment, a command or the keyring."""
    if account.password_env:
        value = os.environ.get(account.password_env)
        if not value:
            raise SecretError(
                f"account {account.name!r}: environment variable {account.password_env} is not set"
            )
        return value
    if account.password_command:
        return run_secret_command(account.password_command, "password")
    if account.use_keyring:
        return keyring_get(account.name)
    raise SecretError(f"account {account.name!r} has no password source")


def get_oauth2_token(account: AccountInfo) -> str:
    """A fresh XOAUTH2 access token from the account's token command."""
    if not account.oauth2_token_command:
        raise SecretError(f"account {account.name!r} has no OAuth2 token command")
    return run_secret_command(account.oauth2_token_command, "OAuth2 token")


# ------------------------------------------------------------------------------- storage
async def add_account(
    db: Database,
    name: str,
    *,
    host: str,
    port: int | None = None,
    security: str = "tls",
    username: str,
    password_env: str | None = None,
    password_command: str | None = None,
    use_keyring: bool = False,
    oauth2_token_command: str | None = None,
    folders: list[str] | tuple[str, ...] = ("INBOX",),
    queue: str | None = None,
    after: str = "leave",
    settings: dict[str, Any] | None = None,
) -> AccountInfo:
    """Validate and store a new account; returns it."""
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise AccountError(f"invalid account name {name!r}: one word, no spaces")
    if security not in SECURITY_MODES:
        raise AccountError(f"security must be one of {', '.join(SECURITY_MODES)}")
    if not host.strip() or not username.strip():
        raise AccountError("an account needs --host and --user")
    sources = [bool(password_env), bool(password_command), bool(use_keyring)]
    if sum(sources) > 1:
        raise AccountError("give only one of --password-env, --password-command, --keyring")
    if sum(sources) == 0 and not oauth2_token_command:
        raise AccountError(
            "say where the secret comes from: --password-env VAR, --password-command CMD, "
            "--keyring or --oauth2-token-command CMD"
        )
    for what, cmd in (
        ("--password-command", password_command),
        ("--oauth2-token-command", oauth2_token_command),
    ):
        if cmd is not None:
            try:
                if not shlex.split(cmd):
                    raise AccountError(f"{what} is empty")
            except ValueError as exc:
                raise AccountError(f"{what}: {exc}") from None
    try:
        parse_after(after)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    folder_list = [f.strip() for f in folders if f.strip()] or ["INBOX"]
    if len(set(folder_list)) != len(folder_list):
        raise AccountError("a folder is listed twice")
    _, move_target = parse_after(after)
    if move_target is not None and move_target in folder_list:
        raise AccountError(f"--after move:{move_target} would move mail into a synced folder")
    async with db.write() as session:
        queue_id = None
        if queue:
            q = (
                await session.execute(select(Queue).where(func.lower(Queue.name) == queue.lower()))
            ).scalar_one_or_none()
            if q is None:
                raise AccountError(
                    f"no queue {queue!r}; add one with `helpdesk queue add {queue!r}`"
                )
            queue_id, queue = q.id, q.name
        row = MailAccount(
            name=name,
            host=host.strip(),
            port=port or DEFAULT_PORTS[security],
            security=security,
            username=username.strip(),
            password_env=password_env or None,
            password_command=password_command or None,
            use_keyring=use_keyring,
            oauth2_token_command=oauth2_token_command or None,
            folders=folder_list,
            queue_id=queue_id,
            after=after,
            settings=dict(settings or {}),
        )
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            raise AccountError(f"account {name!r} already exists") from None
        return info_from_row(row, queue)


async def _queue_names(session: Any) -> dict[int, str]:
    return {q.id: q.name for q in (await session.execute(select(Queue))).scalars()}


async def list_accounts(db: Database, *, enabled_only: bool = False) -> list[AccountInfo]:
    """All accounts, by name."""
    async with db.read() as session:
        names = await _queue_names(session)
        stmt = select(MailAccount).order_by(MailAccount.name)
        if enabled_only:
            stmt = stmt.where(MailAccount.enabled.is_(True))
        rows = (await session.execute(stmt)).scalars().all()
        return [info_from_row(r, names.get(r.queue_id) if r.queue_id else None) for r in rows]


async def get_account(db: Database, name: str) -> AccountInfo:
    """One account by name; AccountError if there is none."""
    async with db.read() as session:
        row = (
            await session.execute(select(MailAccount).where(MailAccount.name == name))
        ).scalar_one_or_none()
        if row is None:
            raise AccountNotFound(f"no mail account {name!r} (see `helpdesk mail account list`)")
        names = await _queue_names(session)
        return info_from_row(row, names.get(row.queue_id) if row.queue_id else None)


async def update_settings(db: Database, name: str, values: dict[str, Any]) -> AccountInfo:
    """Override sync settings of one account (e.g. its size limits; see `SyncSettings`)."""
    async with db.write() as session:
        row = (
            await session.execute(select(MailAccount).where(MailAccount.name == name))
        ).scalar_one_or_none()
        if row is None:
            raise AccountNotFound(f"no mail account {name!r} (see `helpdesk mail account list`)")
        row.settings = {**(row.settings or {}), **values}
        names = await _queue_names(session)
        return info_from_row(row, names.get(row.queue_id) if row.queue_id else None)


async def remove_account(db: Database, name: str) -> None:
    """Delete an account and its sync state (tickets and quarantined mail stay)."""
    async with db.write() as session:
        row = (
            await session.execute(select(MailAccount).where(MailAccount.name == name))
        ).scalar_one_or_none()
        if row is None:
            raise AccountNotFound(f"no mail account {name!r}")
        # Explicit deletes: do not depend on SQLite's foreign key enforcement for cascades.
        from store.models import MailSeen

        await session.execute(delete(MailSeen).where(MailSeen.account_id == row.id))
        await session.execute(delete(MailFolderState).where(MailFolderState.account_id == row.id))
        await session.execute(delete(MailHeartbeat).where(MailHeartbeat.account_id == row.id))
        await session.delete(row)


async def resume_folder(db: Database, name: str, folder: str | None = None) -> list[str]:
    """Clear a folder's stop (e.g. after a UIDVALIDITY change) so the next sync re-reads it.

    The folder is re-synchronised from scratch: every message is matched against the
    store by Message-ID (or content) first, so nothing already ingested is ingested again.
    Returns the folders resumed.
    """
    account = await get_account(db, name)
    resumed: list[str] = []
    async with db.write() as session:
        rows = (
            await session.execute(
                select(MailFolderState).where(MailFolderState.account_id == account.id)
            )
        ).scalars()
        for st in rows:
            if folder is not None and st.folder != folder:
                continue
            if st.stopped_reason is None:
                continue
            st.stopped_reason = None
            st.uidvalidity = None
            st.last_uid = 0
            resumed.append(st.folder)
    return resumed
