"""A private Dovecot IMAP server on 127.0.0.1 for tests.

It runs Debian's ``/usr/sbin/dovecot`` in the foreground with a generated config whose
``base_dir``, ``state_dir``, logs, passwd-file and maildirs all live in one temporary
directory, so it never touches (or needs) the system instance. Plain IMAP only
(``ssl = no``, cleartext auth allowed).

Users live in a passwd-file (``{PLAIN}`` passwords) that Dovecot re-reads when it
changes, so ``add_user()`` works while the server runs. Mail is stored as maildir under
``<tmp>/mail/<user>/Maildir``; when the tests run as root, the mail processes run as
``nobody`` (Dovecot refuses uid 0), otherwise as the current user.

UIDVALIDITY changes: ``reset_uidvalidity(folder)`` sets a new UIDVALIDITY with
``doveadm mailbox update --uid-validity``; the messages stay, and every client must
resynchronise the folder from scratch (exactly what a server-side mailbox rebuild does).
Sessions that have the folder selected at that moment are disconnected by Dovecot.

The hierarchy separator is ``/`` (``Archive/2024``). Auth penalties are disabled, so a
test's failed login does not slow down the next tests' logins.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from imapclient import IMAPClient

from . import (
    ServerProcess,
    ServiceError,
    current_user,
    free_port,
    make_service_dir,
    parent_death_signal,
    running_as_root,
    stop_process,
    wait_for_port,
    wait_port_closed,
)

__all__ = ["DovecotServer", "ImapAccount", "find_dovecot"]

_USER_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")


def find_dovecot() -> tuple[Path, Path]:
    """Paths of the ``dovecot`` and ``doveadm`` binaries; raises ServiceError if missing."""
    dovecot = Path(os.environ.get("HELPDESK_TEST_DOVECOT", "/usr/sbin/dovecot"))
    if not dovecot.is_file():
        found = shutil.which("dovecot")
        if found is None:
            raise ServiceError(
                "Dovecot not found (/usr/sbin/dovecot). Install it with "
                "`apt-get install dovecot-imapd` (scripts/test.sh does this)."
            )
        dovecot = Path(found)
    doveadm = dovecot.parent.parent / "bin" / "doveadm"
    if not doveadm.is_file():
        doveadm = Path(shutil.which("doveadm") or "/usr/bin/doveadm")
    return dovecot, doveadm


def dovecot_version(binary: Path) -> tuple[int, int]:
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    m = re.match(r"\s*(\d+)\.(\d+)", out)
    if not m:
        raise ServiceError(f"cannot parse `dovecot --version` output {out!r}")
    return int(m.group(1)), int(m.group(2))


class ImapAccount(NamedTuple):
    """One IMAP login; unpacks as ``host, port, user, password``."""

    host: str
    port: int
    user: str
    password: str

    def client(self, timeout: float = 10.0) -> IMAPClient:
        """A new logged-in IMAPClient (plain IMAP); the caller logs out."""
        client = IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
        try:
            client.login(self.user, self.password)
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    @contextlib.contextmanager
    def connect(self, timeout: float = 10.0) -> Iterator[IMAPClient]:
        client = self.client(timeout)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def create_folder(self, name: str) -> None:
        """Create folder *name* (no error if it already exists)."""
        with self.connect() as c:
            if not c.folder_exists(name):
                c.create_folder(name)

    def append(
        self,
        folder: str,
        raw: bytes,
        flags: Iterable[str | bytes] = (),
        *,
        create: bool = True,
    ) -> int | None:
        """APPEND *raw* to *folder* (created if missing); returns the new UID if known."""
        with self.connect() as c:
            if create and folder.upper() != "INBOX" and not c.folder_exists(folder):
                c.create_folder(folder)
            resp = c.append(folder, raw, flags=tuple(flags))
        # b"[APPENDUID <uidvalidity> <uid>] Append completed."
        m = re.search(rb"APPENDUID \d+ (\d+)", resp if isinstance(resp, bytes) else b"")
        return int(m.group(1)) if m else None

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.connect() as c:
            status = c.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])


class DovecotServer(ServerProcess):
    """A Dovecot instance with its own config and data in a temporary directory."""

    host = "127.0.0.1"
    POOL = 1000  # pre-created users u1..u1000 (see add_user)

    def __init__(self, user: str = "alice", password: str = "secret") -> None:
        self.binary, self.doveadm_path = find_dovecot()
        self.version = dovecot_version(self.binary)
        self.user = user
        self.password = password
        self.port = free_port(self.host)
        self.root = make_service_dir("dovecot")
        os.chmod(self.root, 0o755)  # the mail processes (nobody) must traverse it
        self.base_dir = self.root / "run"
        self.state_dir = self.root / "state"
        self.mail_root = self.root / "mail"
        self.passwd_path = self.root / "passwd"
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self._users_lock = threading.Lock()
        self._counter = itertools.count(1)
        self._handed_out: set[str] = set()
        self._register()

        if running_as_root():
            pw = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = pw.pw_uid, pw.pw_gid
            self._internal_user = "dovecot"
            self._login_user = "dovenull"
            for name in (self._internal_user, self._login_user):
                try:
                    pwd.getpwnam(name)
                except KeyError as exc:
                    raise ServiceError(
                        f"OS user {name!r} missing (the dovecot-core package creates it)"
                    ) from exc
        else:
            self.mail_uid, self.mail_gid = os.geteuid(), os.getegid()
            self._internal_user = self._login_user = current_user()
        for d in (self.state_dir, self.mail_root):
            d.mkdir()
        os.chown(self.mail_root, self.mail_uid, self.mail_gid)
        self._users: dict[str, str] = {f"u{n}": f"pw-u{n}" for n in range(1, self.POOL + 1)}
        self.add_user(user, password)
        self.config_path.write_text(self._config())

    # -- configuration --------------------------------------------------------------------

    def _config(self) -> str:
        if self.version >= (2, 4):
            return self._config_24()
        return self._config_23()

    def _common(self) -> str:
        # Without root there is nothing to chroot into or switch users with.
        no_chroot = "" if running_as_root() else "  chroot =\n"
        return f"""\
protocols = imap
listen = {self.host}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
info_log_path = {self.log_path}
ssl = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {self._internal_user}
default_login_user = {self._login_user}
first_valid_uid = {min(self.mail_uid, 500)}
mailbox_idle_check_interval = 1 secs
login_greeting = Dovecot test server ready.
namespace inbox {{
  inbox = yes
  separator = /
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{no_chroot}}}
# No auth penalty (delays growing to 15 s for every login from an IP that failed one).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
{no_chroot}}}
"""

    def _config_23(self) -> str:
        return (
            self._common()
            + f"""\
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_path}
}}
userdb {{
  driver = static
  args = uid={self.mail_uid} gid={self.mail_gid} home={self.mail_root}/%u
}}
"""
        )

    def _config_24(self) -> str:
        # Dovecot 2.4 (Debian 13) renamed most of these settings. Written from the 2.4
        # documentation; only the 2.3 variant has been run (Debian 12).
        return (
            "dovecot_config_version = 2.4.0\n"
            "dovecot_storage_version = 2.4.0\n"
            + self._common()
            + f"""\
auth_allow_cleartext = yes
mail_driver = maildir
mail_path = ~/Maildir
passdb passwd-file {{
  passwd_file_path = {self.passwd_path}
}}
userdb static {{
  fields {{
    uid = {self.mail_uid}
    gid = {self.mail_gid}
    home = {self.mail_root}/%{{user}}
  }}
}}
"""
        )

    # -- users --------------------------------------------------------------------------

    def _write_passwd(self) -> None:
        lines = "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self._users.items())
        tmp = self.passwd_path.with_suffix(".tmp")
        tmp.write_text(lines)
        tmp.chmod(0o644)
        # rename: a new inode, so Dovecot notices the change even within one second
        os.replace(tmp, self.passwd_path)

    def add_user(self, user: str | None = None, password: str | None = None) -> ImapAccount:
        """A fresh user: the next unused ``u<N>`` when *user* is None, else *user*.

        ``u1``..``u<POOL>`` are written to the passwd-file before the server starts, so
        handing one out costs nothing. Dovecot re-reads a changed passwd-file at most
        once a second, so adding any other user (or re-passwording one) while the
        server runs waits that second out.
        """
        with self._users_lock:
            if user is None and password is None:
                while True:
                    n = next(self._counter)
                    name = f"u{n}"
                    if n > self.POOL:
                        break
                    if name not in self._handed_out:
                        self._handed_out.add(name)
                        return ImapAccount(self.host, self.port, name, self._users[name])
                user = name
            elif user is None:
                user = f"u{next(self._counter) + self.POOL}"
            if password is None:
                password = f"pw-{user}"
            if not _USER_RE.match(user) or ":" in password or "\n" in password:
                raise ValueError(f"unsupported user/password {user!r}")
            self._handed_out.add(user)
            if self._users.get(user) != password:
                self._users[user] = password
                self._write_passwd()
                if self.running:
                    time.sleep(1.1)
        return ImapAccount(self.host, self.port, user, password)

    def account(self, user: str | None = None) -> ImapAccount:
        user = user or self.user
        return ImapAccount(self.host, self.port, user, self._users[user])

    # -- life-cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (again, after ``stop()``: same port, config and mail)."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGTERM),
            )
        proc = self._proc
        try:
            wait_for_port(
                self.host, self.port, timeout=15, alive=lambda: proc.poll() is None, banner=b"* OK"
            )
        except ServiceError as exc:
            self._stop_proc()
            raise ServiceError(f"dovecot did not start: {exc}\n{self.log_tail()}") from exc

    def _stop_proc(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, timeout=10, group=True)
            self._proc = None

    def stop(self) -> None:
        """Stop the server (simulates an outage); connected clients are disconnected."""
        self._stop_proc()
        wait_port_closed(self.host, self.port, timeout=10)

    # -- mail helpers (default user: alice) ---------------------------------------------

    def client(self, user: str | None = None, timeout: float = 10.0) -> IMAPClient:
        return self.account(user).client(timeout)

    def append(
        self,
        folder: str,
        raw: bytes,
        flags: Iterable[str | bytes] = (),
        *,
        user: str | None = None,
    ) -> int | None:
        """APPEND *raw* to *folder* of *user* (default alice); returns the UID."""
        return self.account(user).append(folder, raw, flags)

    def create_folder(self, name: str, *, user: str | None = None) -> None:
        self.account(user).create_folder(name)

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <our config> ARGS`` (the server must be running)."""
        res = subprocess.run(
            [str(self.doveadm_path), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise ServiceError(f"doveadm {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def uidvalidity(self, folder: str = "INBOX", *, user: str | None = None) -> int:
        out = self.doveadm("mailbox", "status", "-u", user or self.user, "uidvalidity", folder)
        m = re.search(r"uidvalidity=(\d+)", out)
        if not m:
            raise ServiceError(f"cannot read UIDVALIDITY from {out!r}")
        return int(m.group(1))

    def reset_uidvalidity(
        self, folder: str = "INBOX", *, user: str | None = None, value: int | None = None
    ) -> int:
        """Give *folder* a new UIDVALIDITY (old + 1 unless *value*); returns it.

        Messages are kept, but their old UIDs are meaningless from now on: a client
        must notice the change and resynchronise the folder. Dovecot disconnects
        sessions that have the folder selected ("IMAP session state is inconsistent,
        please relogin"); the next SELECT/STATUS reports the new UIDVALIDITY.
        """
        user = user or self.user
        new = value if value is not None else self.uidvalidity(folder, user=user) + 1
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), folder)
        return new
