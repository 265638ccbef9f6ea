"""Engine factory: SQLite (WAL, busy timeout, BEGIN IMMEDIATE for writes) or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from store.config import normalise_db_url

BUSY_TIMEOUT_MS = 10_000
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse",
    "fuse.sshfs",
    "9p",
    "afs",
    "glusterfs",
    "ceph",
}


class StoreError(Exception):
    """A problem a human can act on; its message is one clear line."""


class NotFoundError(StoreError):
    """The ticket, agent, queue, policy... does not exist."""


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for memory / other backends."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def filesystem_type(path: Path) -> str | None:
    """The mount type holding `path` (Linux /proc/mounts), or None if unknown."""
    try:
        target = path.resolve()
        best, fstype = "", None
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (str(target) == mnt or str(target).startswith(mnt.rstrip("/") + "/")) and len(
                    mnt
                ) >= len(best):
                    best, fstype = mnt, parts[2]
        return fstype
    except OSError:
        return None


def check_not_network_fs(path: Path) -> None:
    """SQLite locking is unreliable on network filesystems: refuse, and point to PostgreSQL."""
    fstype = filesystem_type(path.parent if not path.exists() else path)
    if fstype and (fstype in NETWORK_FS or fstype.startswith("fuse")):
        raise StoreError(
            f"{path} is on a network filesystem ({fstype}); SQLite is not safe there. "
            "Use PostgreSQL for a shared store: --db postgresql://user@host/helpdesk"
        )


#: Page cache per pooled SQLite connection (KiB): cold page reads dominate big queues.
SQLITE_CACHE_KIB = 65536
#: The console keeps several connections open for its whole life: a smaller cache each, and
#: a smaller pool, keep its resident memory down (the OS page cache still holds the file).
CONSOLE_CACHE_KIB = 16384
CONSOLE_POOL_SIZE = 3


def _sqlite_pragmas(cache_kib: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control so writers can BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        cur.close()

    return on_connect


def _sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(
    url: str, *, check_fs: bool = True, cache_kib: int = SQLITE_CACHE_KIB, **kwargs: Any
) -> AsyncEngine:
    """Build an async engine for a URL; never called at import time."""
    url = normalise_db_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r}") from exc
    if parsed.drivername.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            if check_fs:
                check_not_network_fs(path)
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": BUSY_TIMEOUT_MS / 1000})
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(cache_kib))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    if parsed.drivername.startswith("postgresql"):
        kwargs.setdefault("pool_pre_ping", True)
        return create_async_engine(url, **kwargs)
    raise StoreError(
        f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or postgresql://..."
    )


class Database:
    """An engine plus session factories: deferred reads, immediate (serialised) writes."""

    def __init__(
        self, url: str, *, check_fs: bool = True, null_pool: bool = False, role: str = "default"
    ) -> None:
        kwargs: dict[str, Any] = {}
        if null_pool:
            kwargs["poolclass"] = NullPool
        elif role == "console":
            kwargs.update(pool_size=CONSOLE_POOL_SIZE, max_overflow=CONSOLE_POOL_SIZE)
        if role == "console":
            kwargs["cache_kib"] = CONSOLE_CACHE_KIB
        self.url = normalise_db_url(url)
        self.engine = make_engine(self.url, check_fs=check_fs, **kwargs)
        self.dialect = self.engine.dialect.name
        #: The driver connections opened so far (SQLite: to interrupt a long statement on quit).
        self._drivers: weakref.WeakSet[Any] = weakref.WeakSet()
        event.listen(self.engine.sync_engine, "connect", self._remember)
        write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write = async_sessionmaker(write_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A short read-only session."""
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: BEGIN IMMEDIATE on SQLite; commits on success."""
        async with self._write() as session, session.begin():
            yield session

    def _remember(self, dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None:
            with contextlib.suppress(TypeError):
                self._drivers.add(driver)

    def interrupt(self) -> None:
        """Abort the SQLite statements running now on this database's connections.

        `sqlite3.Connection.interrupt()` is safe from any thread; it is called directly, not
        through aiosqlite's queue, which is busy with the very statement to stop.
        """
        for driver in list(self._drivers):
            raw = getattr(driver, "_connection", None)
            if raw is not None and hasattr(raw, "interrupt"):
                with contextlib.suppress(Exception):
                    raw.interrupt()

    async def close(self, timeout: float = 1.0) -> None:
        """Stop running statements and close the pool, within `timeout` seconds (for quit)."""
        self.interrupt()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.engine.dispose(), timeout)

    async def dispose(self) -> None:
        await self.engine.dispose()


_T = TypeVar("_T")
#: Writes still running after their caller was cancelled (asyncio keeps only weak references).
_finishing: set[asyncio.Future[Any]] = set()


async def finish_write(write: Awaitable[_T]) -> _T:
    """Await a store write that runs to its end even if the caller is cancelled.

    Cancelling a task inside a transaction can land in the middle of its COMMIT or ROLLBACK;
    the pool then fails to reset the connection, which on SQLite may keep the write lock and
    a driver thread until the connection is garbage-collected, so every other writer waits.
    The console replaces a running presence or draft write with a newer one (exclusive
    workers cancel the older): those go through here, so only the caller stops waiting.
    """
    task = asyncio.ensure_future(write)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    return await asyncio.shield(task)


async def settle_writes(timeout: float) -> None:
    """Give the writes still finishing on this loop (`finish_write`) up to `timeout` seconds,
    then cancel the rest: called before a pool is closed, which would strand them."""
    loop = asyncio.get_running_loop()
    pending = [t for t in _finishing if not t.done() and t.get_loop() is loop]
    if not pending:
        return
    _done, rest = await asyncio.wait(pending, timeout=timeout)
    for task in rest:
        task.cancel()


def sqlite_sidecar_files(path: Path) -> list[Path]:
    """The database file and its WAL/SHM companions."""
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def share_sqlite_store(path: Path, group: str) -> None:
    """Give a Unix group read/write on the store and its WAL files (setgid dir)."""
    import grp
    import shutil

    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise StoreError(f"no such Unix group: {group!r}") from exc
    directory = path.parent
    shutil.chown(directory, group=group)
    os.chmod(directory, 0o2770)
    for f in sqlite_sidecar_files(path):
        if f.exists():
            os.chown(f, -1, gid)
            os.chmod(f, 0o660)
