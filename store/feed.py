"""The change-feed follower: new `events` rows as batches (SQLite data_version poll, PG LISTEN)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from store.config import normalise_db_url
from store.engine import StoreError, sqlite_path

log = logging.getLogger(__name__)

#: The channel the service layer notifies on in every write transaction (PostgreSQL).
CHANNEL = "helpdesk_events"
#: How long an id missing below the newest one seen is re-checked: a transaction that took
#: its id earlier may commit later (PostgreSQL sequences), or never (a rollback).
GAP_TTL = 60.0
#: Wider holes are not tracked (pruned history, not a transaction in flight).
MAX_GAP = 1000
_EVENTS_SQL = "SELECT id, ticket_id, kind, actor FROM events WHERE id > {last}{gaps} ORDER BY id LIMIT {limit}"


@dataclass(frozen=True)
class FeedEvent:
    """One committed change: which ticket (None for admin data), what kind, by whom."""

    id: int
    ticket_id: int | None
    kind: str
    actor: str


class _Backend(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...
    async def wait(self, timeout: float) -> None: ...


class _SQLiteBackend:
    """A dedicated connection; `PRAGMA data_version` changes when another connection commits."""

    def __init__(self, path: str, interval: float, backstop: float) -> None:
        self.path = path
        self.interval = interval
        self.backstop = backstop
        self._conn: Any = None
        self._version: int | None = None

    async def open(self) -> None:
        import aiosqlite

        self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self._conn.execute("PRAGMA busy_timeout = 10000")
        self._version = await self._data_version()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _data_version(self) -> int:
        async with self._conn.execute("PRAGMA data_version") as cur:
            row = await cur.fetchone()
        return int(row[0])

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        async with self._conn.execute(sql) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def wait(self, timeout: float) -> None:
        """Return when another connection committed, or after `timeout` (the backstop)."""
        deadline = time.monotonic() + min(timeout, self.backstop)
        while True:
            version = await self._data_version()
            if version != self._version:
                self._version = version
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(self.interval, left))


class _PostgresBackend:
    """A dedicated asyncpg connection LISTENing on the channel; reconnects with backoff."""

    def __init__(self, dsn: str, backstop: float) -> None:
        self.dsn = dsn
        self.backstop = backstop
        self._conn: Any = None
        self._wake = asyncio.Event()
        self._lost = False

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    def _on_terminate(self, *_args: Any) -> None:
        self._lost = True
        self._wake.set()

    async def open(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_terminate)
        self._conn, self._lost = conn, False
        # Anything committed while we were away is picked up by the caller's catch-up read.
        self._wake.set()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def _ensure(self) -> None:
        if self._conn is not None and not self._lost and not self._conn.is_closed():
            return
        await self.close()
        delay = 0.2
        while True:
            try:
                await self.open()
                return
            except Exception as exc:  # OSError, timeouts, and asyncpg's many kinds on restart
                log.debug("change feed: reconnecting after %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        for _attempt in range(2):
            await self._ensure()
            try:
                return [tuple(r) for r in await self._conn.fetch(sql)]
            except Exception as exc:
                if self._conn is not None and not self._conn.is_closed() and not self._lost:
                    raise
                log.debug("change feed: lost the connection (%s)", exc)
                self._lost = True
        return []

    async def wait(self, timeout: float) -> None:
        await self._ensure()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), min(timeout, self.backstop))
        self._wake.clear()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeFeed:
    """Follow the store's change feed: `async for batch in feed` yields lists of new events.

    `after` is the last event id already seen (default: the newest one when the feed opens,
    so only later changes are reported). The follower never writes and holds its own
    connection, so it never competes with the session pool.
    """

    def __init__(
        self,
        url: str,
        *,
        after: int | None = None,
        poll_interval: float = 0.4,
        backstop: float = 5.0,
        batch_limit: int = 1000,
    ) -> None:
        url = normalise_db_url(url)
        self.url = url
        self.last_id: int | None = after
        self.batch_limit = batch_limit
        self._gaps: dict[int, float] = {}
        self._opened = False
        self._backend: _Backend
        driver = make_url(url).drivername
        if driver.startswith("sqlite"):
            path = sqlite_path(url)
            if path is None:
                raise StoreError("the change feed needs a SQLite file, not an in-memory database")
            self._backend = _SQLiteBackend(str(path), poll_interval, backstop)
        elif driver.startswith("postgresql"):
            self._backend = _PostgresBackend(_asyncpg_dsn(url), backstop)
        else:
            raise StoreError(f"no change feed for {driver!r}")

    async def open(self) -> None:
        """Connect and fix the starting point; called by the first iteration if needed."""
        if self._opened:
            return
        await self._backend.open()
        self._opened = True
        if self.last_id is None:
            rows = await self._backend.fetch("SELECT coalesce(max(id), 0) FROM events")
            self.last_id = int(rows[0][0]) if rows else 0

    async def close(self) -> None:
        """Drop the dedicated connection."""
        self._opened = False
        await self._backend.close()

    async def __aenter__(self) -> ChangeFeed:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def poll(self) -> list[FeedEvent]:
        """Read events committed since the last call (empty list when there are none)."""
        await self.open()
        assert self.last_id is not None
        now = time.monotonic()
        self._gaps = {i: t for i, t in self._gaps.items() if now - t < GAP_TTL}
        gaps = ""
        if self._gaps:
            gaps = " OR id IN (" + ",".join(str(int(i)) for i in sorted(self._gaps)) + ")"
        sql = _EVENTS_SQL.format(last=int(self.last_id), gaps=gaps, limit=int(self.batch_limit))
        rows = await self._backend.fetch(sql)
        events = [
            FeedEvent(int(r[0]), None if r[1] is None else int(r[1]), str(r[2]), str(r[3] or ""))
            for r in rows
        ]
        for ev in events:
            self._gaps.pop(ev.id, None)
            if ev.id > self.last_id:
                if ev.id - self.last_id <= MAX_GAP:
                    for missing in range(self.last_id + 1, ev.id):
                        self._gaps.setdefault(missing, now)
                self.last_id = ev.id
        return events

    async def wait(self, timeout: float = 5.0) -> None:
        """Sleep until the store probably changed (or `timeout` passed)."""
        await self.open()
        await self._backend.wait(timeout)

    async def batches(self) -> AsyncIterator[list[FeedEvent]]:
        """Yield each non-empty batch of new events, forever (cancel the task to stop).

        Close the feed (or use `async with`) when you stop iterating early: an abandoned
        async generator is only finalised when the event loop gets round to it.
        """
        await self.open()
        try:
            while True:
                events = await self.poll()
                if events:
                    yield events
                    if len(events) >= self.batch_limit:
                        continue  # more are waiting: do not sleep
                await self.wait()
        finally:
            await self.close()

    def __aiter__(self) -> AsyncIterator[list[FeedEvent]]:
        return self.batches()

    async def follow(self, callback: Callable[[list[FeedEvent]], Awaitable[None] | None]) -> None:
        """Call `callback` with every batch of new events until cancelled; always closes."""
        try:
            await self.open()
            while True:
                events = await self.poll()
                if events:
                    result = callback(events)
                    if result is not None:
                        await result
                    if len(events) >= self.batch_limit:
                        continue
                await self.wait()
        finally:
            await self.close()


async def follow(
    url: str,
    callback: Callable[[list[FeedEvent]], Awaitable[None] | None],
    *,
    after: int | None = None,
    poll_interval: float = 0.4,
) -> None:
    """Call `callback` with every batch of new events until cancelled."""
    await ChangeFeed(url, after=after, poll_interval=poll_interval).follow(callback)
