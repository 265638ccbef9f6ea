"""The console's fast start: rows painted before the store layer loads, then a seamless list."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpdesk_tui.app import HelpdeskApp
from helpdesk_tui.boot import FIRST_PAGE_ROWS, console_options
from helpdesk_tui.screens.queue import QueueScreen
from helpdesk_tui.widgets.ticket_list import PAGE_SIZE, TicketList
from store.config import Config
from store.firstpage import read_fast_start
from tests.tui.conftest import bulk_tickets, screen_text, wait_for

ROOT = Path(__file__).resolve().parents[2]
BOOT = "import sys; from helpdesk_tui.boot import main; sys.argv[0] = 'helpdesk'; main()"
CLI = "import sys; from cli import main; sys.argv[0] = 'helpdesk'; main()"


def run_helpdesk(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100", **(env or {})},
    )


def list_lines(tickets: TicketList) -> list[str]:
    """The list's header and rows as shown (without the rows' styles)."""
    return [tickets.render_line(y).text for y in range(len(tickets.rows) + 1)]


FastApp = Callable[..., HelpdeskApp]


@pytest.fixture
async def fast_app() -> AsyncIterator[FastApp]:
    """`fast_app(url)`: an app as `helpdesk` starts it on SQLite; its store is closed after."""
    apps: list[HelpdeskApp] = []

    def factory(url: str, login: str = "alice", **kwargs: Any) -> HelpdeskApp:
        start = read_fast_start(url, login, FIRST_PAGE_ROWS)
        assert start is not None, "the fast start refused a good store"
        app = HelpdeskApp(None, start.me, Config(db_url=url), fast_start=start, **kwargs)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        if app.store_ready:
            await app.service.db.dispose()


async def many_for_alice(url: str, count: int) -> list[int]:
    """`count` more active tickets for alice, with ties in priority; numbers in "next" order."""
    await bulk_tickets(url, count)
    path = url.split(":///", 1)[1]
    with sqlite3.connect(path) as conn:
        alice = conn.execute("SELECT id FROM agents WHERE login = 'alice'").fetchone()[0]
        conn.execute(
            "UPDATE tickets SET assignee_id = ?, priority = id % 3 WHERE subject LIKE 'Bulk%'",
            (alice,),
        )
        order = conn.execute(
            "SELECT number FROM tickets WHERE assignee_id = ? AND status IN "
            "('new','open','answered','pending','on-hold','postponed') ORDER BY -priority, "
            "coalesce(next_due_at, '9999-12-31 23:59:59.999999'), "
            "coalesce(last_customer_at, '9999-12-31 23:59:59.999999'), id",
            (alice,),
        ).fetchall()
    return [n for (n,) in order]


def test_console_options_only_for_the_console() -> None:
    assert console_options([]) == (None, None)
    assert console_options(["--db", "x.db", "--as", "bob"]) == ("x.db", "bob")
    assert console_options(["--db=x.db", "tui", "--as=bob"]) == ("x.db", "bob")
    assert console_options(["tui", "--db", "a", "--db", "b"]) == ("b", None)
    for other in (["--help"], ["tui", "--help"], ["agent", "list"], ["--db"], ["tui", "tui"]):
        assert console_options(other) is None, other


def test_first_page_is_a_list_page() -> None:
    assert FIRST_PAGE_ROWS == PAGE_SIZE


def test_the_console_modules_need_no_sqlalchemy_or_typer() -> None:
    """What paints the first frame imports neither the ORM nor the CLI (cold start)."""
    probe = (
        "import sys, helpdesk_tui.boot, helpdesk_tui.app, helpdesk_tui.screens.queue, "
        "helpdesk_tui.widgets.ticket_list, helpdesk_tui.widgets.sidebar, "
        "helpdesk_tui.widgets.query_bar, store.firstpage, "
        "store.config; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'typer', 'cli', 'alembic', 'aiosqlite')); print(heavy)"
    )
    done = run_helpdesk(probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_and_commands_still_go_through_typer(seeded_url: str) -> None:
    """The entry point hands every other command line to the CLI unchanged."""
    for args in (["--help"], ["agent", "list", "--db", seeded_url], ["tui", "--help"]):
        fast, typer = run_helpdesk(BOOT, *args), run_helpdesk(CLI, *args)
        assert (fast.returncode, fast.stdout, fast.stderr) == (
            typer.returncode,
            typer.stdout,
            typer.stderr,
        ), args
    assert "alice" in run_helpdesk(BOOT, "agent", "list", "--db", seeded_url).stdout


def test_problems_are_reported_by_the_normal_path(seeded_url: str, tmp_path: Path) -> None:
    """Unknown agent, missing store, old schema: same message and exit code as before."""
    old = tmp_path / "old.db"
    old.write_bytes(Path(seeded_url.split(":///", 1)[1]).read_bytes())
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    cases = [
        ["--db", seeded_url, "--as", "nobody"],
        ["--db", f"sqlite:///{tmp_path / 'none.db'}", "--as", "alice"],
        ["--db", f"sqlite:///{old}", "--as", "alice"],
    ]
    for args in cases:
        fast, typer = run_helpdesk(BOOT, *args), run_helpdesk(CLI, *args)
        assert fast.returncode == typer.returncode != 0, args
        assert fast.stderr == typer.stderr, args
    refused = run_helpdesk(BOOT, *cases[0])
    assert "you (nobody) are not an agent" in refused.stderr
    assert "helpdesk agent add nobody" in refused.stderr


async def test_rows_are_painted_before_the_store_is_open(
    seeded_url: str, monkeypatch: pytest.MonkeyPatch, fast_app: FastApp
) -> None:
    """The first frame has alice's tickets; the same picture stays once the store takes over."""
    gate: list[HelpdeskApp] = []
    monkeypatch.setattr(HelpdeskApp, "load_store", lambda self: gate.append(self))
    app = fast_app(seeded_url)
    async with app.run_test(size=(120, 30)) as pilot:
        tickets = app.screen.query_one(TicketList)
        await wait_for(lambda: bool(tickets.rows), pilot)
        await pilot.pause(0.1)
        assert not app.store_ready and gate, "the store is asked for once the rows are shown"
        before = screen_text(app)
        assert "Printer jam on floor 3" in before and "My tickets" in before
        assert "VPN disconnects" not in before  # bob's
        painted = list_lines(tickets)
        monkeypatch.undo()
        app.load_store()
        await wait_for(lambda: app.store_ready, pilot, timeout=30)
        screen = app.screen
        assert isinstance(screen, QueueScreen)
        await wait_for(lambda: screen.total is not None and not tickets.fetching, pilot)
        await pilot.pause(0.2)
        assert list_lines(tickets) == painted  # the same rows, where they were
        assert len(painted) == 1 + 7 and all(line.strip() for line in painted)
        assert app.me.email == "alice@example.com"  # the full agent once the store is open


async def test_the_list_continues_past_the_first_page(seeded_url: str, fast_app: FastApp) -> None:
    """j through the page boundary and G/g: every ticket once, in the store's order."""
    want = await many_for_alice(seeded_url, 260)
    app = fast_app(seeded_url)
    async with app.run_test(size=(120, 30)) as pilot:
        tickets = app.screen.query_one(TicketList)
        await wait_for(lambda: bool(tickets.rows), pilot)
        assert [r.number for r in tickets.rows] == want[:PAGE_SIZE]
        seen = [tickets.current.number]
        for _ in range(len(want) - 1):
            await pilot.press("j")
            await wait_for(lambda: tickets.current is not None, pilot)
            seen.append(tickets.current.number)
        await wait_for(lambda: not tickets.fetching, pilot)
        assert app.store_ready
        assert seen == want
        await pilot.press("g")
        await wait_for(lambda: tickets.current is not None and tickets.cursor == 0, pilot)
        assert tickets.current.number == want[0]
        await pilot.press("G")
        await wait_for(lambda: tickets.current.number == want[-1], pilot)


async def test_keys_pressed_while_the_store_opens_are_not_lost(
    seeded_url: str, monkeypatch: pytest.MonkeyPatch, fast_app: FastApp
) -> None:
    """Enter and `o` before the store is open: done as soon as it is."""
    gate: list[HelpdeskApp] = []
    monkeypatch.setattr(HelpdeskApp, "load_store", lambda self: gate.append(self))
    app = fast_app(seeded_url)
    async with app.run_test(size=(120, 30)) as pilot:
        tickets = app.screen.query_one(TicketList)
        await wait_for(lambda: bool(tickets.rows), pilot)
        queue = app.screen
        assert isinstance(queue, QueueScreen)
        await pilot.press("o")  # needs the store's orders: waits
        assert queue.order == "next"
        number = tickets.current.number
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.screen is queue
        monkeypatch.undo()
        app.load_store()
        await wait_for(lambda: app.screen is not queue, pilot, timeout=30)
        assert getattr(app.screen, "number", None) == number
        assert queue.order == "updated"


async def test_quit_before_the_store_is_open(
    seeded_url: str, monkeypatch: pytest.MonkeyPatch, fast_app: FastApp
) -> None:
    monkeypatch.setattr(HelpdeskApp, "load_store", lambda self: None)
    app = fast_app(seeded_url)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(lambda: bool(app.screen.query_one(TicketList).rows), pilot)
        await pilot.press("q")
        await wait_for(lambda: not app.is_running, pilot)
    assert app.return_code == 0
