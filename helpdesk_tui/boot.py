"""The `helpdesk` entry point and the console's fast start (cold start to rows under 0.5 s).

Importing the typer CLI, SQLAlchemy's ORM and the service layer takes longer than the whole
cold-start budget (issue 3), so `helpdesk` without a command (or `helpdesk tui`, with only
`--db` / `--as`) on a SQLite store starts like this:

1. `main` reads those options itself; every other command line goes to `cli.main` (typer)
   untouched, and so does the console whenever the fast start cannot be sure of something.
2. A thread reads, with the standard library's sqlite3 on a read-only connection, the schema
   revision, the agent and the first page of "My tickets" (`store.firstpage`) while the main
   thread imports Textual (sqlite3 releases the GIL, so the two overlap).
3. The app paints the queue from those rows; the ticket list's source serves them and waits
   for the store for anything else (`FirstPageSource`).
4. After that first frame the app imports the store layer in a worker thread and opens it;
   then the queue switches its list to `store.listing` in place (same rows, so nothing
   moves), reads counts, labels and presence, and the change feed starts. Key presses that
   need the store in the meantime are replayed once it is there.

Any doubt in steps 1-2 (PostgreSQL, no file, an old schema, an unknown agent, a SQLite error)
means the normal path through `cli`, which reports the problem exactly as before.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.app import App

    from store.firstpage import FastStart, FirstPage

#: Rows in the fast first page (the ticket list's PAGE_SIZE; a test keeps them equal).
FIRST_PAGE_ROWS = 100
#: Exit code for an unusable database (cli.EXIT_DATABASE).
EXIT_DATABASE = 6


def main() -> None:
    """Console-script entry point: the console's fast start when it applies, else the CLI."""
    options = console_options(sys.argv[1:])
    if options is not None:
        code = fast_console(*options)
        if code is not None:
            raise SystemExit(code)
    from cli import main as cli_main

    cli_main()


def console_options(argv: Sequence[str]) -> tuple[str | None, str | None] | None:
    """(--db, --as) when the command line only opens the console, else None.

    Accepts what typer accepts for that: `[--db URL] [--as LOGIN] [tui [--db URL] [--as LOGIN]]`
    in either `--opt value` or `--opt=value` form, the last value winning.
    """
    values: dict[str, str | None] = {"--db": None, "--as": None}
    seen_tui = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "tui" and not seen_tui:
            seen_tui = True
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in values:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            i += 1
            value = argv[i]
        values[name] = value or None
        i += 1
    return values["--db"], values["--as"]


@dataclass
class _Read:
    start: FastStart | None = None


def fast_console(db: str | None, as_: str | None) -> int | None:
    """Run the console from a fast first page; None when the normal path must do it."""
    from store.config import ConfigError, load_config
    from store.firstpage import read_fast_start, sqlite_file

    try:
        config = load_config(db)
    except ConfigError:
        return None
    if sqlite_file(config.db_url) is None:
        return None
    login = as_ or os.environ.get("HELPDESK_AGENT") or getpass.getuser()
    read = _Read()

    def reader() -> None:
        read.start = read_fast_start(config.db_url, login, FIRST_PAGE_ROWS)

    thread = threading.Thread(target=reader, name="helpdesk-first-page", daemon=True)
    thread.start()
    from helpdesk_tui.app import HelpdeskApp  # Textual, while the thread reads

    thread.join()
    if read.start is None:
        return None
    return run_console(HelpdeskApp(None, read.start.me, config, fast_start=read.start))


def run_console(app: App[Any]) -> int:
    """Run the console on its own loop and leave promptly when it quits."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app.run_async())
        # asyncio.run() would wait for every leftover task; a session's shielded rollback
        # queued behind a statement in a driver thread can take seconds (or wait on a lock).
        leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=0.3))
    finally:
        _exit_without_stragglers(app.return_code or 0)
        loop.close()
    return app.return_code or 0


def _exit_without_stragglers(code: int, grace: float = 0.1) -> None:
    """Exit now even if a driver thread is still finishing a statement after quit.

    The app interrupts and closes its connections on quit, but a thread inside a C call
    (a SQLite statement, a socket read) can outlive `App.run()`, and Python waits for every
    non-daemon thread before exiting. The terminal is restored and drafts are saved as they
    are typed, so after a short grace period the process leaves without them.
    """
    import time

    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.current_thread()
    ):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class FirstPageSource:
    """The ticket list's source during a fast start: the first page now, the store after.

    `first` is answered from the fast page; everything else waits until `attach` gives the
    real source (`store.listing` behind the queue screen). The fast page's own cursor is
    replaced by the store's: its next page is read after the store's copy of the first page.
    """

    _END = object()

    def __init__(self, page: FirstPage) -> None:
        self.page = page
        self._real: Any = None
        self._attached = asyncio.Event()

    @property
    def attached(self) -> bool:
        return self._real is not None

    def attach(self, real: Any) -> None:
        """From now on every page comes from `real`."""
        self._real = real
        self._attached.set()

    async def _store(self) -> Any:
        await self._attached.wait()
        return self._real

    async def first(self, limit: int) -> Any:
        rows = self.page.rows
        if self._real is None and (limit <= len(rows) or not self.page.more):
            more = self.page.more or limit < len(rows)
            return _FastPage(list(rows[:limit]), self._END if more else None, None)
        return await (await self._store()).first(limit)

    async def last(self, limit: int) -> Any:
        return await (await self._store()).last(limit)

    async def after(self, cursor: Any, limit: int) -> Any:
        real = await self._store()
        if cursor is self._END:
            head = await real.first(len(self.page.rows))
            if head.next_cursor is None:
                return _FastPage([], None, head.prev_cursor)
            cursor = head.next_cursor
        return await real.after(cursor, limit)

    async def before(self, cursor: Any, limit: int) -> Any:
        return await (await self._store()).before(cursor, limit)


@dataclass
class _FastPage:
    rows: list[Any]
    next_cursor: Any
    prev_cursor: Any
