"""The IMAP sync engine: UIDs, batched fetches, crash-safe folder state, IDLE plus polling.

Design
------
imapclient is blocking, so every IMAP call runs in a worker thread (``asyncio.to_thread``);
the engine itself is a coroutine on the caller's event loop and talks to the store through
the async service layer. Each folder gets its own IMAP connection and task (IDLE watches one
selected folder only), serialised by a per-connection lock so a prefetch and a flag update
never interleave on the wire.

Crash safety (compare isync's sync_state.c and closeio's imap backend): the folder's
UIDVALIDITY and highest ingested UID are written in the SAME transaction as the tickets the
messages produced, together with one ``MailSeen`` row per server message. A crash before the
commit loses nothing (the messages are fetched again); a crash after it duplicates nothing
(the UIDs are below ``last_uid`` and in ``MailSeen``). Post-processing (``--after seen`` or
``move:FOLDER``) happens only after the commit; one missed by a crash is redone on the next
connection, for messages that ``MailSeen`` says became articles.

A UIDVALIDITY change is handled as isync does: every message of the folder is matched by
Message-ID against the store; matched ones are recorded as seen, the rest imported. If too few
match (a different mailbox behind the same name?), the folder is stopped with a reason and an
alert instead of importing everything again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import gc
import logging
import multiprocessing
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from imapclient.imapclient import join_message_ids
from imapclient.response_parser import parse_fetch_response
from sqlalchemy import exists, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mail_sync.accounts import AccountInfo, SecretError, get_oauth2_token, get_password
from mail_sync.ingest import (
    DEFAULT_MAX_ATTACHMENT_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    IncomingMail,
    Ingestor,
    IngestResult,
    IngestSummary,
)
from mail_sync.prepare import MailSource, human_size, parse_worker_init, prepare_many
from store.config import Config
from store.engine import Database, StoreError, sqlite_path
from store.models import Article, MailFolderState, MailHeartbeat, MailSeen, Quarantine
from store.service import Service

log = logging.getLogger("helpdesk.mail.sync")

#: PostgreSQL advisory lock class for "one sync process per account" (objid = account id).
PG_ACCOUNT_LOCK_CLASS = 0x4D41494D  # "MAIM"
_MESSAGE_ID = re.compile(rb"<([^<>\s]{1,900})>")
#: The plain FETCH responses of a sync batch (see `fetch_items`).
_FAST_SIZE = re.compile(rb"(\d+) \(UID (\d+) RFC822\.SIZE (\d+)\)")
_FAST_LITERAL = re.compile(rb"(\d+) \(UID (\d+) (BODY\[(?:HEADER)?\]) \{(\d+)\}")


def _parse_plain_fetch(data: list[Any]) -> dict[int, dict[bytes, Any]] | None:
    """The FETCH responses servers send for one item (`N (UID u RFC822.SIZE s)`, or
    `N (UID u BODY[] {n}` + literal + `)`) as imapclient's parser returns them; None on
    anything else (another item order, an unsolicited FLAGS...): use the generic parser."""
    out: dict[int, dict[bytes, Any]] = {}
    i, n = 0, len(data)
    while i < n:
        d = data[i]
        if isinstance(d, tuple):
            if len(d) != 2 or i + 1 >= n or data[i + 1] != b")":
                return None
            head, literal = d
            m = _FAST_LITERAL.fullmatch(head)
            if m is None or not isinstance(literal, bytes) or len(literal) != int(m.group(4)):
                return None
            uid = int(m.group(2))
            if uid in out:
                return None
            out[uid] = {b"SEQ": int(m.group(1)), m.group(3): literal}
            i += 2
            continue
        m = _FAST_SIZE.fullmatch(d) if isinstance(d, bytes) else None
        if m is None:
            return None
        uid = int(m.group(2))
        if uid in out:
            return None
        out[uid] = {b"SEQ": int(m.group(1)), b"RFC822.SIZE": int(m.group(3))}
        i += 1
    return out


_UNTAGGED_FETCH = re.compile(rb"\* (\d+) FETCH (.*)\r\n", re.DOTALL)
#: What `fetch_items` uses of imaplib beyond its public API (else: IMAPClient.fetch).
_IMAPLIB_PARTS = (
    "_command",
    "_get_response",
    "_check_bye",
    "tagged_commands",
    "untagged_responses",
    "readline",
    "read",
    "abort",
)


def _literal_size(dat: bytes) -> int | None:
    """The size of the literal announced at the end of a response line (`... {123}`)."""
    start = dat.rfind(b"{") if dat.endswith(b"}") else -1
    digits = dat[start + 1 : -1]
    return int(digits) if start >= 0 and digits.isdigit() else None


def _read_fetch_responses(imap: Any, tag: bytes) -> tuple[str, bytes, list[Any]]:
    """Read the responses to the FETCH command `tag` off imaplib's connection: (status,
    status text, the FETCH data as imaplib's `_untagged_response` would return it).

    imaplib reads a response line by line through several regular expressions and method
    calls; for a batch of 500 bodies that was nine tenths of the IMAP thread's CPU. Here
    an untagged FETCH (with its literals) is read the way imaplib does, in a tight loop;
    any other response line is handed to imaplib's own `_get_response` (so EXISTS, BYE,
    unexpected responses... are handled exactly as before)."""
    imap._check_bye()
    data: list[Any] = imap.untagged_responses.pop("FETCH", [])
    done = tag + b" "
    readline, read = imap.readline, imap.read
    while True:
        line = readline()
        if not line.endswith(b"\r\n"):
            raise imap.abort(f"socket error: {'EOF' if not line else 'unterminated line'}")
        if line.startswith(done):
            status, _, text = line[len(done) : -2].partition(b" ")
            imap.tagged_commands.pop(tag, None)
            return status.decode("ascii", "replace"), text, data
        m = _UNTAGGED_FETCH.fullmatch(line)
        if m is None:
            _imaplib_response(imap, line)
            continue
        dat = m.group(1) + b" " + m.group(2)
        while (size := _literal_size(dat)) is not None:
            literal = read(size)
            if len(literal) != size:
                raise imap.abort("socket error: EOF")
            data.append((dat, literal))
            dat = readline()
            if not dat.endswith(b"\r\n"):
                raise imap.abort("socket error: EOF")
            dat = dat[:-2]
        data.append(dat)


def _imaplib_response(imap: Any, line: bytes) -> None:
    """Let imaplib read the response that starts with `line` (already read)."""
    pending = [line]
    real = imap.readline
    imap.readline = lambda: pending.pop() if pending else real()
    try:
        imap._get_response()
    finally:
        del imap.readline
    imap._check_bye()


def fetch_items(client: IMAPClient, uids: Sequence[int], item: str) -> dict[int, Any]:
    """`client.fetch(uids, [item])` (UID FETCH) with the same result, but the responses are
    read in a tight loop (`_read_fetch_responses`) and the plain ones of a sync batch parsed
    with two regular expressions instead of imapclient's generic token-by-token parser."""
    imap: Any = getattr(client, "_imap", None)
    if not uids or not client.use_uid or not all(hasattr(imap, a) for a in _IMAPLIB_PARTS):
        return dict(client.fetch(list(uids), [item]))
    tag = imap._command("UID", "FETCH", join_message_ids(list(uids)), f"({item})")
    typ, text, data = _read_fetch_responses(imap, tag)
    client._checkok("fetch", typ, [text])
    parsed = _parse_plain_fetch(data)
    if parsed is None:
        parsed = parse_fetch_response(data, client.normalise_times, client.use_uid)
    # Drop unsolicited responses for other messages (as IMAPClient.fetch does).
    wanted = set(uids)
    return {uid: v for uid, v in parsed.items() if uid in wanted}


@dataclass
class SyncSettings:
    """Timings and limits; an account's `settings` may override any of them by name."""

    #: UIDs per batch (one transaction, unless it takes longer than max_transaction_seconds).
    batch_size: int = 500
    #: Message bytes per body FETCH at most (a batch of big mails is fetched in pieces).
    fetch_bytes: int = 64 * 1024 * 1024
    #: A write transaction commits after this long even mid-batch (keeps SQLite responsive).
    max_transaction_seconds: float = 1.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    connect_timeout: float = 15.0
    #: Socket read timeout: a dead connection is noticed within idle_renew + read_timeout.
    read_timeout: float = 25.0
    #: One idle_check() waits at most this long (also how fast a stop is noticed).
    idle_check_timeout: float = 5.0
    #: IDLE is ended and re-issued this often; ending it proves the connection alive.
    idle_renew: float = 60.0
    #: UID SEARCH backstop while idling, and the poll interval without IDLE.
    poll_interval: float = 120.0
    backoff_initial: float = 2.0
    backoff_max: float = 300.0
    heartbeat_interval: float = 30.0
    #: After a UIDVALIDITY change: stop unless this share of the messages match the store ...
    uidvalidity_min_match: float = 0.5
    #: ... or no more than this many are unmatched.
    uidvalidity_unmatched_ok: int = 20
    #: Failing longer than this (seconds) makes every retry log an ERROR, not a WARNING.
    failing_after: float = 900.0
    #: A message the server returns no body for is quarantined after this many tries.
    missing_body_attempts: int = 3
    #: Worker processes that parse mail while the engine fetches and writes (0: a thread).
    #: Parsing is pure Python: in a thread it shares one core with the rest of the engine.
    parse_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    #: A backlog smaller than this is parsed in a thread (starting workers takes ~1 s).
    parse_pool_min: int = 300

    def __post_init__(self) -> None:
        self.idle_check_timeout = min(max(self.idle_check_timeout, 0.1), 30.0)
        self.idle_renew = min(max(self.idle_renew, 1.0), 600.0)
        self.batch_size = max(1, min(int(self.batch_size), 1000))

    @classmethod
    def for_account(cls, account: AccountInfo, base: SyncSettings | None = None) -> SyncSettings:
        values = {f.name: getattr(base or cls(), f.name) for f in fields(cls)}
        for key, value in (account.settings or {}).items():
            if key in values and isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = type(values[key])(value)
        return cls(**values)


@dataclass
class Progress:
    """One progress report: `event` is connected|batch|synced|idle|error|stopped|locked."""

    account: str
    folder: str | None
    event: str
    ingested: int = 0
    backlog: int = 0
    detail: str = ""
    summary: IngestSummary | None = None


@dataclass
class FolderReport:
    """What one pass over a folder did."""

    folder: str
    summary: IngestSummary = field(default_factory=IngestSummary)
    backlog: int = 0
    stopped: str | None = None
    error: str | None = None


@dataclass
class SyncReport:
    """What `sync_once` did, per folder."""

    account: str
    folders: list[FolderReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.error is None and f.stopped is None for f in self.folders)

    @property
    def backlog(self) -> int:
        return sum(f.backlog for f in self.folders)

    def totals(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for f in self.folders:
            for k, v in f.summary.as_dict().items():
                total[k] = total.get(k, 0) + v
        return total


class FolderStopped(Exception):
    """The folder is stopped (see MailFolderState.stopped_reason) until an admin resumes it."""


class AccountBusy(StoreError):
    """Another sync process holds this account."""


class TransientServerError(Exception):
    """The server misbehaved in a way worth a reconnect (e.g. a FETCH without the body)."""


_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None
#: Young-generation threshold while a backlog is ingested (Python's default is 700).
BULK_GC_THRESHOLD = 20_000


@contextlib.contextmanager
def fewer_collections(enabled: bool = True) -> Iterator[None]:
    """Run Python's cyclic garbage collector less often while a large backlog is ingested.

    The ingest allocates many short-lived objects and makes few reference cycles; with the
    default thresholds, collections took 1.2 s of the write path's 10.5 s on a 20,000-mail
    backlog (measured with `gc.callbacks`), with a threshold of 20,000: 0.04 s. Engines of
    one process share the setting: the last one to finish restores it."""
    global _gc_users, _gc_saved
    if not enabled:
        yield
        return
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gen0, gen1, gen2 = _gc_saved
            gc.set_threshold(max(gen0, BULK_GC_THRESHOLD), gen1, gen2)
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


def _chunks(seq: Sequence[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])


def describe(exc: BaseException) -> str:
    """A one-line error description (server responses shown as text, not b'...' reprs).

    Exceptions raised here never carry our secrets: they are never passed to the server
    library's error paths, and secret commands' errors name only the command.
    """
    args = exc.args
    if len(args) == 1 and isinstance(args[0], bytes | bytearray):
        raw = bytes(args[0]).decode("utf-8", "replace")
    else:
        raw = str(exc)
    raw = raw.strip()
    text = raw.splitlines()[0] if raw else ""
    if isinstance(exc, TimeoutError) and not text:
        text = "timed out"
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


class _Connection:
    """One blocking IMAP connection and the lock that serialises its use."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        self.lock = asyncio.Lock()
        self.capabilities: set[bytes] = set()
        #: Folders whose skipped post-processing was redone on this connection.
        self.recovered: set[str] = set()

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async with self.lock:
            return await asyncio.to_thread(fn, *args, **kwargs)

    def has(self, cap: str) -> bool:
        return cap.encode().upper() in self.capabilities


class _AccountLock:
    """Per-account exclusivity: pg_try_advisory_lock on PostgreSQL, a lock file on SQLite."""

    def __init__(self, db: Database, account_id: int) -> None:
        self.db = db
        self.account_id = account_id
        self._conn: AsyncConnection | None = None
        self._fd: int | None = None

    async def acquire(self) -> bool:
        if self.db.dialect == "postgresql":
            conn = await self.db.engine.connect()
            try:
                got = (
                    await conn.execute(
                        select(func.pg_try_advisory_lock(PG_ACCOUNT_LOCK_CLASS, self.account_id))
                    )
                ).scalar_one()
                await conn.commit()
            except BaseException:
                await conn.close()
                raise
            if not got:
                await conn.close()
                return False
            self._conn = conn
            return True
        path = sqlite_path(self.db.url)
        if path is None:
            return True
        lock_path = Path(f"{path}.mail-{self.account_id}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o660)
        except OSError:
            return True  # cannot create a lock file: MailSeen still prevents duplicates
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def check(self) -> bool:
        """Whether the lock is still held (a PostgreSQL restart drops it)."""
        if self._conn is None:
            return True
        try:
            await self._conn.execute(select(1))
            await self._conn.commit()
            return True
        except Exception:  # noqa: BLE001
            return False

    async def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.execute(
                    select(func.pg_advisory_unlock(PG_ACCOUNT_LOCK_CLASS, self.account_id))
                )
                await self._conn.commit()
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None


class SyncEngine:
    """Syncs one account's folders into tickets; reports through `on_progress` and logging."""

    def __init__(
        self,
        db: Database,
        account: AccountInfo,
        config: Config | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        settings: SyncSettings | None = None,
        service: Service | None = None,
    ) -> None:
        self.db = db
        self.account = account
        self.config = config or Config()
        self.on_progress = on_progress
        self.settings = SyncSettings.for_account(account, settings)
        self.service = service or Service(db)
        self.after, self.after_folder = account.after_action
        self.ingestor = Ingestor(
            self.service,
            languages=self.config.languages,
            max_message_bytes=self.settings.max_message_bytes,
            max_attachment_bytes=self.settings.max_attachment_bytes,
            default_queue=account.queue_name,
            own_addresses=[account.username],
        )
        self._lock = _AccountLock(db, account.id)
        self._errors: dict[str, str] = {}
        self._backlog: dict[str, int] = {}
        self._missing: dict[tuple[str, int, int], int] = {}
        self._failing_since: dict[str, float] = {}
        self._last_beat = 0.0
        self._pool: ProcessPoolExecutor | None = None

    # ------------------------------------------------------------------ reporting
    def _report(self, folder: str | None, event: str, **kw: Any) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(Progress(self.account.name, folder, event, **kw))
        except Exception:  # noqa: BLE001 - a broken progress display must not stop the sync
            log.debug("progress callback failed", exc_info=True)

    async def _heartbeat(
        self, *, attempt: bool = False, success: bool = False, error: str | None = None
    ) -> None:
        now = self.service.clock()
        try:
            async with self.db.write() as session:
                hb = await session.get(MailHeartbeat, self.account.id)
                if hb is None:
                    hb = MailHeartbeat(account_id=self.account.id, backlog=0)
                    session.add(hb)
                if attempt:
                    hb.last_attempt_at = now
                if error is not None:
                    hb.last_attempt_at = now
                    hb.last_error_at = now
                    hb.last_error = error[:2000]
                    if hb.failing_since is None:
                        hb.failing_since = now
                elif success and not self._errors:
                    hb.last_attempt_at = now
                    hb.last_success_at = now
                    hb.failing_since = None
                elif success:
                    hb.last_attempt_at = now
                hb.backlog = sum(self._backlog.values())
            self._last_beat = time.monotonic()
        except SQLAlchemyError as exc:
            log.warning(
                "event=heartbeat-failed account=%s error=%r", self.account.name, describe(exc)
            )

    # ------------------------------------------------------------------ connection
    def _connect_blocking(self) -> IMAPClient:
        acct, st = self.account, self.settings
        timeout = SocketTimeout(connect=st.connect_timeout, read=st.read_timeout)
        context = ssl.create_default_context()
        client = IMAPClient(
            acct.host,
            port=acct.port,
            use_uid=True,
            ssl=acct.security == "tls",
            ssl_context=context if acct.security == "tls" else None,
            timeout=timeout,  # type: ignore[arg-type]
        )
        try:
            if acct.security == "starttls":
                client.starttls(context)
            if acct.oauth2_token_command:
                client.oauth2_login(acct.username, get_oauth2_token(acct))
            else:
                client.login(acct.username, get_password(acct))
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    async def _connect(self) -> _Connection:
        client = await asyncio.to_thread(self._connect_blocking)
        conn = _Connection(client)
        try:
            caps = await conn.call(client.capabilities)
            conn.capabilities = {bytes(c).upper() for c in caps}
        except Exception:
            await self._close(conn)
            raise
        return conn

    async def _close(self, conn: _Connection | None) -> None:
        if conn is None:
            return

        def _logout() -> None:
            try:
                conn.client.logout()
            except Exception:  # noqa: BLE001
                with contextlib.suppress(Exception):
                    conn.client.shutdown()

        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.to_thread(_logout), timeout=self.settings.read_timeout + 5
            )

    # ------------------------------------------------------------------ parse pool
    def _parse_pool(self, backlog: int) -> ProcessPoolExecutor | None:
        """The worker processes for a large backlog (started on first need, kept until the
        engine stops); None: parse in a thread."""
        if self.settings.parse_workers <= 0:
            return None
        if self._pool is None and backlog >= self.settings.parse_pool_min:
            # spawn: fresh interpreters (never a fork of this multi-threaded process), each
            # the engine's own child, so they can die with it (see parse_worker_init).
            self._pool = ProcessPoolExecutor(
                max_workers=self.settings.parse_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=parse_worker_init,
                initargs=(os.getpid(), tuple(self.config.languages)),
            )
        return self._pool

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _prepare(
        self, jobs: list[tuple[bytes, MailSource, str | None]], *, local: bool = False
    ) -> list[IncomingMail]:
        """Parse fetched mail: in the worker processes if running (and not `local`), else in
        a thread."""
        pool = self._pool
        if pool is not None and len(jobs) > 1 and not local:
            loop = asyncio.get_running_loop()
            try:
                # The batch is shared out between the workers (the first batch is parsed by
                # all of them, not one while the others wait), and the workers do not send
                # the raw bytes back (we have them): one copy less.
                parse = functools.partial(prepare_many, return_raw=False)
                job = self.ingestor.prepare_job()
                share = -(-len(jobs) // max(1, self.settings.parse_workers))
                parts = await asyncio.gather(
                    *(
                        loop.run_in_executor(pool, parse, job, jobs[i : i + share])
                        for i in range(0, len(jobs), share)
                    ),
                    return_exceptions=True,
                )
                items = []
                for part in parts:
                    if isinstance(part, BaseException):
                        raise part
                    items.extend(part)
                for item, (raw, _, _) in zip(items, jobs, strict=True):
                    if item.raw is None:
                        item.raw = raw
                return items
            except BrokenProcessPool:
                log.warning(
                    "event=parse-pool-broken account=%s: parsing in a thread", self.account.name
                )
                self._stop_pool()
        return await asyncio.to_thread(prepare_many, self.ingestor.prepare_job(), jobs)

    # ------------------------------------------------------------------ state
    async def _state(self, session: AsyncSession, folder: str) -> MailFolderState:
        st = await session.get(MailFolderState, (self.account.id, folder))
        if st is None:
            st = MailFolderState(account_id=self.account.id, folder=folder, last_uid=0)
            session.add(st)
            await session.flush()
        return st

    async def _read_state(self, folder: str) -> tuple[int | None, int, str | None]:
        async with self.db.read() as session:
            st = await session.get(MailFolderState, (self.account.id, folder))
            if st is None:
                return None, 0, None
            return st.uidvalidity, int(st.last_uid or 0), st.stopped_reason

    async def _unseen(self, folder: str, uidvalidity: int, uids: Sequence[int]) -> list[int]:
        """The UIDs without a MailSeen row."""
        seen: set[int] = set()
        async with self.db.read() as session:
            for chunk in _chunks(list(uids), 500):
                seen.update(
                    (
                        await session.execute(
                            select(MailSeen.uid).where(
                                MailSeen.account_id == self.account.id,
                                MailSeen.folder == folder,
                                MailSeen.uidvalidity == uidvalidity,
                                MailSeen.uid.in_(chunk),
                            )
                        )
                    ).scalars()
                )
        return [u for u in uids if u not in seen]

    async def _ingested(self, folder: str, uidvalidity: int, uids: Sequence[int]) -> list[int]:
        """The UIDs that MailSeen says became articles (not quarantined)."""
        found: set[int] = set()
        async with self.db.read() as session:
            for chunk in _chunks(list(uids), 500):
                found.update(
                    (
                        await session.execute(
                            select(MailSeen.uid).where(
                                MailSeen.account_id == self.account.id,
                                MailSeen.folder == folder,
                                MailSeen.uidvalidity == uidvalidity,
                                MailSeen.uid.in_(chunk),
                                MailSeen.article_id.is_not(None),
                            )
                        )
                    ).scalars()
                )
        return sorted(u for u in uids if u in found)

    # ------------------------------------------------------------------ one folder pass
    async def sync_folder(self, conn: _Connection, folder: str) -> FolderReport:
        """Bring one folder up to date; raises FolderStopped if it is stopped."""
        report = FolderReport(folder)
        client = conn.client
        readonly = self.after == "leave"
        sel = await conn.call(client.select_folder, folder, readonly=readonly)
        uidvalidity = int(sel[b"UIDVALIDITY"])
        known_uv, last_uid, stopped = await self._read_state(folder)
        if stopped:
            raise FolderStopped(stopped)
        if known_uv != uidvalidity:
            await self._resync(conn, folder, uidvalidity, known_uv)
            known_uv, last_uid, stopped = await self._read_state(folder)
        while True:
            found = await conn.call(client.search, ["UID", f"{last_uid + 1}:*"])
            uids = sorted(int(u) for u in found if int(u) > last_uid)
            if not uids:
                break
            todo = await self._unseen(folder, uidvalidity, uids)
            if not todo:
                await self._advance(folder, uidvalidity, uids[-1])
                last_uid = uids[-1]
                continue
            self._backlog[folder] = len(todo)
            report.backlog = len(todo)
            with fewer_collections(len(todo) >= self.settings.parse_pool_min):
                await self._ingest_uids(conn, folder, uidvalidity, todo, report)
            last_uid = max(last_uid, uids[-1])
            # Whatever arrived meanwhile is picked up by the next search.
        self._backlog[folder] = 0
        report.backlog = 0
        if folder not in conn.recovered:
            await self._recover_after(conn, folder, uidvalidity)
            conn.recovered.add(folder)
        return report

    async def _advance(self, folder: str, uidvalidity: int, uid: int) -> None:
        async with self.db.write() as session:
            st = await self._state(session, folder)
            if st.uidvalidity == uidvalidity and uid > (st.last_uid or 0):
                st.last_uid = uid

    async def _fetch(
        self,
        conn: _Connection,
        folder: str,
        uidvalidity: int,
        uids: list[int],
        *,
        local: bool = False,
    ) -> tuple[list[IncomingMail], list[int]]:
        """Fetch and parse a batch: sizes first, then bodies (headers only when too big).
        `local`: parse in this process (see `_prepare`)."""
        client = conn.client
        limit = self.settings.max_message_bytes
        sizes = await conn.call(fetch_items, client, uids, "RFC822.SIZE")
        small = [u for u in uids if u in sizes and int(sizes[u].get(b"RFC822.SIZE", 0)) <= limit]
        big = [u for u in uids if u in sizes and u not in small]
        bodies: dict[int, Any] = {}
        # Bodies in FETCHes of at most fetch_bytes each (a batch of big mails stays bounded).
        chunk: list[int] = []
        total = 0
        for uid in small:
            size = int(sizes[uid].get(b"RFC822.SIZE", 0))
            if chunk and total + size > self.settings.fetch_bytes:
                bodies.update(await conn.call(fetch_items, client, chunk, "BODY.PEEK[]"))
                chunk, total = [], 0
            chunk.append(uid)
            total += size
        if chunk:
            bodies.update(await conn.call(fetch_items, client, chunk, "BODY.PEEK[]"))
        heads: dict[int, Any] = {}
        if big:
            heads = await conn.call(fetch_items, client, big, "BODY.PEEK[HEADER]")
        raws: list[tuple[int, bytes, str | None]] = []
        missing: list[int] = []
        for uid in uids:
            if uid in bodies and bodies[uid].get(b"BODY[]") is not None:
                raws.append((uid, bytes(bodies[uid][b"BODY[]"]), None))
            elif uid in heads and heads[uid].get(b"BODY[HEADER]") is not None:
                size = int(sizes[uid].get(b"RFC822.SIZE", 0))
                note = (
                    f"the message is {human_size(size)}, over the {human_size(limit)} limit: "
                    f"only its header was fetched; the full message stays on the server "
                    f"({self.account.name}/{folder} UID {uid})"
                )
                raws.append((uid, bytes(heads[uid][b"BODY[HEADER]"]), note))
            elif uid in sizes:
                missing.append(uid)  # exists, but no body came back
            # else: expunged meanwhile

        jobs = [(raw, self._source(folder, uidvalidity, uid), note) for uid, raw, note in raws]
        return await self._prepare(jobs, local=local), missing

    def _source(self, folder: str, uidvalidity: int, uid: int) -> MailSource:
        return MailSource(
            kind="imap",
            label=f"imap {self.account.name}/{folder} UID {uid} (UIDVALIDITY {uidvalidity})",
            account_id=self.account.id,
            folder=folder,
            uidvalidity=uidvalidity,
            uid=uid,
        )

    async def _ingest_uids(
        self,
        conn: _Connection,
        folder: str,
        uidvalidity: int,
        uids: list[int],
        report: FolderReport,
    ) -> None:
        batches = list(_chunks(uids, self.settings.batch_size))
        starting = self._pool is None
        pool = self._parse_pool(len(uids))
        # Worker processes take a moment to start: the first batch of a new pool is parsed
        # here meanwhile (the language model is loaded in this process too), so the first
        # commit does not wait for them.
        local_first = starting and pool is not None
        # Prefetch while a batch is written: the next batch (one connection, locked), and
        # with parse workers one more per worker, so fetching and parsing run side by side.
        depth = 1 + (self.settings.parse_workers if pool is not None else 0)
        pending: collections.deque[asyncio.Task[tuple[list[IncomingMail], list[int]]]] = (
            collections.deque()
        )
        queued = 0

        def refill() -> None:
            nonlocal queued
            while queued < len(batches) and len(pending) < depth:
                local = local_first and queued == 0
                pending.append(
                    asyncio.create_task(
                        self._fetch(conn, folder, uidvalidity, batches[queued], local=local)
                    )
                )
                queued += 1

        refill()
        try:
            for batch in batches:
                items, missing = await pending.popleft()
                refill()
                if missing:
                    items = await self._handle_missing(folder, uidvalidity, items, missing)
                stop_uid = self._stop_uid(batch, missing, items)
                items = [
                    it for it in items if it.source.uid is not None and it.source.uid < stop_uid
                ]
                done = await self._commit(
                    folder, uidvalidity, items, report, min(stop_uid - 1, batch[-1])
                )
                await self._post_process(conn, done)
                self._backlog[folder] = max(0, self._backlog.get(folder, 0) - len(batch))
                report.backlog = self._backlog[folder]
                self._report(
                    folder,
                    "batch",
                    ingested=len(items),
                    backlog=report.backlog,
                    summary=report.summary,
                )
                if stop_uid <= batch[-1]:
                    raise TransientServerError(
                        f"the server returned no body for UID {stop_uid} in {folder}; will retry"
                    )
                if time.monotonic() - self._last_beat > self.settings.heartbeat_interval:
                    await self._heartbeat(success=True)
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task

    def _stop_uid(self, batch: list[int], missing: list[int], items: list[IncomingMail]) -> int:
        """Ingest only below the first UID whose body is still missing (retried later)."""
        have = {it.source.uid for it in items}
        still = [u for u in missing if u not in have]
        return min(still) if still else batch[-1] + 1

    async def _handle_missing(
        self, folder: str, uidvalidity: int, items: list[IncomingMail], missing: list[int]
    ) -> list[IncomingMail]:
        """A message the server keeps returning without a body is quarantined (never blocks)."""
        out = list(items)
        for uid in missing:
            key = (folder, uidvalidity, uid)
            self._missing[key] = self._missing.get(key, 0) + 1
            if self._missing[key] >= self.settings.missing_body_attempts:
                item = IncomingMail(
                    raw=b"",
                    source=self._source(folder, uidvalidity, uid),
                    error=f"the server returned no body for this message {self._missing[key]} times",
                )
                out.append(item)
                del self._missing[key]
        out.sort(key=lambda it: it.source.uid or 0)
        return out

    async def _commit(
        self,
        folder: str,
        uidvalidity: int,
        items: list[IncomingMail],
        report: FolderReport,
        last_uid: int,
    ) -> list[tuple[int, IngestResult]]:
        """Ingest items in one or more transactions, each also saving the folder state."""
        done: list[tuple[int, IngestResult]] = []
        remaining = list(items)
        while True:
            save = functools.partial(
                self._save_state, folder, uidvalidity, list(remaining), last_uid
            )
            results = await self.ingestor.ingest_batch(
                remaining, before_commit=save, max_seconds=self.settings.max_transaction_seconds
            )
            for item, result in zip(remaining, results, strict=False):
                done.append((int(item.source.uid or 0), result))
                report.summary.add(result, keep=False)
            remaining = remaining[len(results) :]
            if not remaining:
                return done

    async def _save_state(
        self,
        folder: str,
        uidvalidity: int,
        items: list[IncomingMail],
        last_uid: int,
        session: AsyncSession,
        results: list[IngestResult],
    ) -> None:
        """In the ingest transaction: advance the folder's last UID past what it ingested."""
        st = await self._state(session, folder)
        if st.uidvalidity != uidvalidity:
            raise StoreError(f"the sync state of {folder} changed during the sync; retrying")
        n = len(results)
        new_last = last_uid if n == len(items) else int(items[n - 1].source.uid or 0)
        if new_last > (st.last_uid or 0):
            st.last_uid = new_last

    async def _post_process(self, conn: _Connection, done: list[tuple[int, IngestResult]]) -> None:
        """`--after seen|move:FOLDER`, only for committed mail that became an article."""
        if self.after == "leave":
            return
        uids = sorted(
            uid for uid, r in done if r.article_id is not None and r.outcome != "quarantined"
        )
        if uids:
            await self._apply_after(conn, uids)

    async def _apply_after(self, conn: _Connection, uids: list[int]) -> None:
        client = conn.client
        if self.after == "seen":
            await conn.call(client.add_flags, uids, [b"\\Seen"])
            return
        target = self.after_folder
        assert target is not None
        try:
            await self._move(conn, uids, target)
        except IMAPClientError as exc:
            if "TRYCREATE" not in str(exc):
                raise
            # The server says the folder does not exist yet: make it, as mail clients do.
            await conn.call(client.create_folder, target)
            log.info("event=after-folder-created account=%s folder=%r", self.account.name, target)
            await self._move(conn, uids, target)

    async def _move(self, conn: _Connection, uids: list[int], target: str) -> None:
        client = conn.client
        if conn.has("MOVE"):
            await conn.call(client.move, uids, target)
        elif conn.has("UIDPLUS"):
            await conn.call(client.copy, uids, target)
            await conn.call(client.add_flags, uids, [b"\\Deleted"])
            await conn.call(client.uid_expunge, uids)
        else:
            # Without UIDPLUS an EXPUNGE would remove every \Deleted message: copy and flag only.
            await conn.call(client.copy, uids, target)
            await conn.call(client.add_flags, uids, [b"\\Deleted"])

    async def _recover_after(self, conn: _Connection, folder: str, uidvalidity: int) -> None:
        """Redo post-processing a crash skipped (the commit happened, the flag/move did not)."""
        if self.after == "leave":
            return
        _, last_uid, _ = await self._read_state(folder)
        if last_uid <= 0:
            return
        criteria: list[Any] = ["UID", f"1:{last_uid}"]
        if self.after == "seen":
            criteria = ["UNSEEN", *criteria]
        found = await conn.call(conn.client.search, criteria)
        uids = await self._ingested(
            folder, uidvalidity, sorted(int(u) for u in found if int(u) <= last_uid)
        )
        if uids:
            log.info(
                "event=after-recovered account=%s folder=%r action=%s messages=%d",
                self.account.name,
                folder,
                self.after,
                len(uids),
            )
            for chunk in _chunks(uids, 500):
                await self._apply_after(conn, chunk)

    # ------------------------------------------------------------------ UIDVALIDITY
    async def _resync(
        self, conn: _Connection, folder: str, uidvalidity: int, old_uidvalidity: int | None
    ) -> None:
        """Match the folder's messages by Message-ID against the store (isync style)."""
        client = conn.client
        async with self.db.read() as session:
            old_seen = int(
                (
                    await session.execute(
                        select(func.count())
                        .select_from(MailSeen)
                        .where(MailSeen.account_id == self.account.id, MailSeen.folder == folder)
                    )
                ).scalar_one()
            )
            any_mail = bool(
                (
                    await session.execute(select(exists().where(Article.message_id.is_not(None))))
                ).scalar()
            )
        all_uids: list[int] = []
        ids: dict[int, str] = {}
        # A folder never synced before needs no matching: the pipeline dedupes every message
        # by Message-ID anyway (and records it); matching only saves refetching known mail.
        if any_mail and old_seen > 0:
            all_uids = sorted(int(u) for u in await conn.call(client.search, ["ALL"]))
            for chunk in _chunks(all_uids, 500):
                data = await conn.call(
                    client.fetch, chunk, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]", "RFC822.SIZE"]
                )
                for uid, d in data.items():
                    blob = d.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]") or b""
                    found_id = _MESSAGE_ID.search(bytes(blob))
                    if found_id:
                        ids[int(uid)] = found_id.group(1).decode("ascii", "replace")
        matched: dict[int, int] = {}
        if ids:
            by_mid: dict[str, int] = {}
            mids = sorted(set(ids.values()))
            async with self.db.read() as session:
                for chunk_ids in (mids[i : i + 500] for i in range(0, len(mids), 500)):
                    for mid, art_id in (
                        await session.execute(
                            select(Article.message_id, func.min(Article.id))
                            .where(Article.message_id.in_(chunk_ids))
                            .group_by(Article.message_id)
                        )
                    ).all():
                        if mid:
                            by_mid[mid] = int(art_id)
            matched = {uid: by_mid[mid] for uid, mid in ids.items() if mid in by_mid}
        n, m = len(all_uids), len(matched)
        unmatched = n - m
        if (
            old_uidvalidity is not None
            and old_seen > 0
            and unmatched > self.settings.uidvalidity_unmatched_ok
            and m < self.settings.uidvalidity_min_match * n
        ):
            reason = (
                f"UIDVALIDITY of {folder} changed from {old_uidvalidity} to {uidvalidity} and only "
                f"{m} of {n} messages match stored mail; not importing {unmatched} messages that "
                f"may be old mail. Check the mailbox, then run `helpdesk mail account resume "
                f"{self.account.name} --folder {folder}`"
            )
            async with self.db.write() as session:
                st = await self._state(session, folder)
                st.stopped_reason = reason
            log.error(
                "event=folder-stopped account=%s folder=%r reason=uidvalidity matched=%d total=%d",
                self.account.name,
                folder,
                m,
                n,
            )
            raise FolderStopped(reason)
        async with self.db.write() as session:
            st = await self._state(session, folder)
            existing: set[int] = set()
            for chunk in _chunks(sorted(matched), 500):
                existing.update(
                    (
                        await session.execute(
                            select(MailSeen.uid).where(
                                MailSeen.account_id == self.account.id,
                                MailSeen.folder == folder,
                                MailSeen.uidvalidity == uidvalidity,
                                MailSeen.uid.in_(chunk),
                            )
                        )
                    ).scalars()
                )
            for uid, art_id in matched.items():
                if uid not in existing:
                    session.add(
                        MailSeen(
                            account_id=self.account.id,
                            folder=folder,
                            uidvalidity=uidvalidity,
                            uid=uid,
                            article_id=art_id,
                        )
                    )
            st.uidvalidity = uidvalidity
            st.last_uid = 0
            st.stopped_reason = None
        if old_uidvalidity is not None:
            log.warning(
                "event=uidvalidity-changed account=%s folder=%r old=%d new=%d matched=%d total=%d",
                self.account.name,
                folder,
                old_uidvalidity,
                uidvalidity,
                m,
                n,
            )
        conn.recovered.discard(folder)

    # ------------------------------------------------------------------ public API
    async def sync_once(self) -> SyncReport:
        """One pass over every folder (connect, fetch what is new, disconnect)."""
        report = SyncReport(self.account.name)
        if not await self._lock.acquire():
            raise AccountBusy(f"another sync process is working on account {self.account.name!r}")
        try:
            await self._heartbeat(attempt=True)
            conn: _Connection | None = None
            try:
                conn = await self._connect()
                self._report(None, "connected")
                for folder in self.account.folders:
                    try:
                        fr = await self.sync_folder(conn, folder)
                    except FolderStopped as exc:
                        fr = FolderReport(folder, stopped=str(exc))
                        self._errors[folder] = str(exc)
                        self._report(folder, "stopped", detail=str(exc))
                    except IMAPClientError as exc:
                        if isinstance(exc, IMAPClientAbortError):
                            raise  # the connection is gone: fail the whole pass
                        msg = describe(exc)
                        fr = FolderReport(folder, error=msg)
                        self._errors[folder] = msg
                        self._report(folder, "error", detail=msg)
                        log.error(
                            "event=folder-failed account=%s folder=%r error=%r",
                            self.account.name,
                            folder,
                            msg,
                        )
                    else:
                        self._errors.pop(folder, None)
                        self._report(folder, "synced", summary=fr.summary)
                    report.folders.append(fr)
            except Exception as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                msg = describe(exc)
                report.folders.append(FolderReport("*", error=msg))
                self._errors["*"] = msg
                await self._heartbeat(error=msg)
                self._report(None, "error", detail=msg)
                log.error("event=sync-failed account=%s error=%r", self.account.name, msg)
                return report
            finally:
                await self._close(conn)
            self._errors.pop("*", None)
            problems = [f.stopped or f.error for f in report.folders if f.stopped or f.error]
            if problems:
                await self._heartbeat(error=problems[0] or "folder failed")
            else:
                await self._heartbeat(success=True)
            return report
        finally:
            self._stop_pool()
            await self._lock.release()

    async def probe(self) -> dict[str, Any]:
        """Log in and look at every folder (for `mail account test`); changes nothing."""
        conn = await self._connect()
        try:
            folders: list[dict[str, Any]] = []
            names = list(self.account.folders)
            if self.after_folder:
                names.append(self.after_folder)
            for folder in names:
                try:
                    st = await conn.call(
                        conn.client.folder_status, folder, [b"MESSAGES", b"UIDVALIDITY", b"UIDNEXT"]
                    )
                except IMAPClientError as exc:
                    if isinstance(exc, IMAPClientAbortError):
                        raise
                    what = "--after target" if folder == self.after_folder else "folder"
                    folders.append({"folder": folder, "error": f"{what}: {describe(exc)}"})
                    continue
                folders.append(
                    {
                        "folder": folder,
                        "messages": int(st.get(b"MESSAGES", 0)),
                        "uidvalidity": int(st.get(b"UIDVALIDITY", 0)),
                        "uidnext": int(st.get(b"UIDNEXT", 0)),
                    }
                )
            return {
                "capabilities": sorted(c.decode("ascii", "replace") for c in conn.capabilities),
                "idle": conn.has("IDLE"),
                "folders": folders,
            }
        finally:
            await self._close(conn)

    async def run(self, stop: asyncio.Event) -> None:
        """Sync forever: a task per folder (IDLE or polling), until `stop` is set."""
        while not stop.is_set():
            if await self._lock.acquire():
                break
            self._report(None, "locked", detail="another sync process holds this account")
            log.info("event=account-busy account=%s retry_in=30s", self.account.name)
            await _wait(stop, 30.0)
        if stop.is_set():
            return
        try:
            await self._heartbeat(attempt=True)
            tasks = [
                asyncio.create_task(self._folder_loop(folder, stop), name=f"sync:{folder}")
                for folder in self.account.folders
            ]
            tasks.append(asyncio.create_task(self._watch_lock(stop), name="sync:lock"))
            try:
                await stop.wait()
                # Folder tasks notice the stop within idle_check_timeout; cancel stragglers.
                await asyncio.wait(tasks, timeout=self.settings.idle_check_timeout + 10)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._stop_pool()
            await self._lock.release()

    async def _watch_lock(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, 30.0)
            if not stop.is_set() and not await self._lock.check():
                log.error("event=lock-lost account=%s action=stop", self.account.name)
                stop.set()

    async def _folder_loop(self, folder: str, stop: asyncio.Event) -> None:
        delay = self.settings.backoff_initial
        while not stop.is_set():
            conn: _Connection | None = None
            try:
                conn = await self._connect()
                self._report(folder, "connected")
                log.info("event=connected account=%s folder=%r", self.account.name, folder)
                report = await self.sync_folder(conn, folder)
                self._failing_since.pop(folder, None)
                if self._errors.pop(folder, None) is not None:
                    log.info("event=recovered account=%s folder=%r", self.account.name, folder)
                await self._heartbeat(success=True)
                self._report(folder, "synced", summary=report.summary)
                delay = self.settings.backoff_initial
                await self._watch(conn, folder, stop)
            except asyncio.CancelledError:
                raise
            except FolderStopped as exc:
                self._errors[folder] = str(exc)
                await self._heartbeat(error=str(exc))
                self._report(folder, "stopped", detail=str(exc))
                await self._close(conn)
                conn = None
                # Wait for an admin to resume the folder (clears stopped_reason).
                while not stop.is_set():
                    await _wait(stop, min(60.0, self.settings.poll_interval))
                    _, _, still = await self._read_state(folder)
                    if not still:
                        break
            except Exception as exc:  # noqa: BLE001 - any failure: back off and reconnect
                msg = describe(exc)
                self._errors[folder] = msg
                await self._heartbeat(error=msg)
                self._report(folder, "error", detail=msg)
                wait = _jitter(delay)
                failing_since = self._failing_since.setdefault(folder, time.monotonic())
                failing_for = time.monotonic() - failing_since
                # Network blips are warnings; a failure that lasts (or needs a human) is loud.
                loud = (
                    isinstance(exc, SecretError | StoreError)
                    or failing_for >= self.settings.failing_after
                )
                log.log(
                    logging.ERROR if loud else logging.WARNING,
                    "event=sync-error account=%s folder=%r error=%r failing_for=%.0fs "
                    "retry_in=%.1fs",
                    self.account.name,
                    folder,
                    msg,
                    failing_for,
                    wait,
                )
                if not isinstance(
                    exc,
                    IMAPClientError
                    | OSError
                    | TransientServerError
                    | SecretError
                    | SQLAlchemyError
                    | StoreError,
                ):
                    log.debug("unexpected sync error", exc_info=True)
                await _wait(stop, wait)
                delay = min(delay * 2, self.settings.backoff_max)
            finally:
                await self._close(conn)

    async def _watch(self, conn: _Connection, folder: str, stop: asyncio.Event) -> None:
        """Wait for new mail: IDLE (renewed and checked) where offered, else poll."""
        st = self.settings
        client = conn.client
        last_poll = time.monotonic()
        idle = conn.has("IDLE")
        while not stop.is_set():
            changed = False
            if idle:
                await conn.call(client.idle)
                self._report(folder, "idle")
                started = time.monotonic()
                while not stop.is_set() and time.monotonic() - started < st.idle_renew:
                    t0 = time.monotonic()
                    responses = await conn.call(client.idle_check, st.idle_check_timeout)
                    if any(_is_change(r) for r in responses):
                        changed = True
                        break
                    if not responses and time.monotonic() - t0 < st.idle_check_timeout / 2:
                        break  # returned early with nothing: the connection may be closed
                # Ending IDLE waits for the server's tagged OK: a dead peer times out here.
                # (On an exception above the connection is dropped, so no DONE is needed.)
                await conn.call(client.idle_done)
            else:
                await _wait(stop, st.poll_interval)
                changed = True
            if stop.is_set():
                return
            if changed or time.monotonic() - last_poll >= st.poll_interval:
                report = await self.sync_folder(conn, folder)
                last_poll = time.monotonic()
                if report.summary.total:
                    self._report(folder, "synced", summary=report.summary)
            else:
                await conn.call(client.noop)
            if time.monotonic() - self._last_beat > st.heartbeat_interval:
                await self._heartbeat(success=True)


def _is_change(response: Any) -> bool:
    try:
        kind = response[1]
    except (IndexError, TypeError):
        return False
    if isinstance(response[0], bytes) and response[0].upper() == b"BYE":
        return True
    return kind in (b"EXISTS", b"RECENT", b"EXPUNGE")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


async def held_count(db: Database) -> int:
    """How many mails are in quarantine (for the console's badge)."""
    async with db.read() as session:
        return int(
            (
                await session.execute(
                    select(func.count()).select_from(Quarantine).where(Quarantine.status == "held")
                )
            ).scalar_one()
        )


__all__ = [
    "AccountBusy",
    "FolderReport",
    "FolderStopped",
    "Progress",
    "SyncEngine",
    "SyncReport",
    "SyncSettings",
    "describe",
    "held_count",
]
