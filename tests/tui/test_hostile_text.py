"""Hostile text in a real terminal: the console runs in a pty and no payload byte reaches it.

Subjects, names, view and queue names, agent logins and status labels carry markup, OSC 52
(clipboard write), OSC 0 (window title), C1 CSI, bidi overrides, RTL Arabic and a 5,000
character unbroken line. The test reads everything the app writes to the terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from store.engine import Database
from store.models import ArticleKind, Status
from store.service import MAIL, Actor, ArticleInput, Service
from tests.conftest import FakeClock
from tests.tui.conftest import build_store, screen_text, wait_for

OSC52 = "\x1b]52;c;aGVsbG8=\x07"
OSC0 = "\x1b]0;title\x07"
C1_CSI = "\u009b31m"
LONG = "W" * 5000
ARABIC = "مرحبا، لا أستطيع تسجيل الدخول إلى حسابي"

HOSTILE_SUBJECTS = [
    "[/bold] closes nothing",
    "[link=file:///etc/passwd]x",
    "[@click=app.quit]x",
    f"clipboard {OSC52} grab",
    f"title {OSC0} change",
    f"{C1_CSI}red alert",
    "\u202eevil\u202c reversed",
    ARABIC,
    LONG,
]

#: Byte strings that must never reach the terminal.
FORBIDDEN = {
    "OSC 52 clipboard write": b"\x1b]52",
    "OSC 0 window title": b"\x1b]0;",
    "the OSC 52 payload": b"aGVsbG8=",
    "C1 CSI (UTF-8)": "\u009b".encode(),
    "OSC 8 hyperlink": b"\x1b]8;",
    "bidi override": "\u202e".encode(),
}

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from helpdesk_tui.app import HelpdeskApp
    from store.config import Config
    from store.engine import Database
    from store.service import Service
    from tests.conftest import FakeClock

    async def main(url: str) -> None:
        service = Service(Database(url), clock=FakeClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC)))
        me = await service.agent("alice")
        await HelpdeskApp(service, me, Config(db_url=url)).run_async()
        await service.db.dispose()

    asyncio.run(main(sys.argv[1]))
    """
)


async def _hostile_store(url: str, clock: FakeClock) -> None:
    await build_store(url, clock)
    db = Database(url)
    try:
        service = Service(db, clock=clock)
        await service.add_queue(f"[bold]Q[/bold]{OSC52}")
        evil = await service.add_agent(f"evil{OSC0}", f"[@click=app.quit]Evil {OSC52} {ARABIC}")
        alice = await service.agent("alice")
        actor = Actor("agent", "alice", alice.id)
        for i, subject in enumerate(HOSTILE_SUBJECTS):
            t = await service.create_ticket(
                MAIL,
                subject=subject,
                customer_email=f"hostile{i}@example.com",
                customer_name=[f"[red]{OSC0}Mallory", ARABIC, LONG, f"x{C1_CSI}y"][i % 4],
                article=ArticleInput(kind=ArticleKind.EMAIL_IN, body=f"{OSC52}{subject}"),
                queue="Support",
            )
            await service.update_ticket(actor, t.number, assignee="alice" if i % 3 else evil.login)
            if i % 3:
                await service.update_ticket(actor, t.number, status=Status.OPEN)
        await service.add_view(f"{OSC0}[@click=app.quit]view", "is:active", owner="alice")
        await service.set_status_label(Status.OPEN, f"Op{OSC52}en[/]")
    finally:
        await db.dispose()


class Terminal:
    """A child process on a pty of a given size; everything it writes is kept."""

    def __init__(self, argv: list[str], size: tuple[int, int], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        cols, rows = size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(
            os.environ,
            TERM="xterm-256color",
            COLORTERM="truecolor",
            PYTHONPATH=str(cwd),
            TEXTUAL="",
        )
        env.pop("TEXTUAL_DRIVER", None)
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def send(self, data: str | bytes, pause: float = 0.3) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)
        time.sleep(pause)

    def click(self, x: int, y: int) -> None:
        """A left click at 0-based cell (x, y), as an SGR mouse report."""
        self.send(f"\x1b[<0;{x + 1};{y + 1}M", 0.05)
        self.send(f"\x1b[<0;{x + 1};{y + 1}m", 0.2)  # other rows: never a double click

    def wait_for(self, needle: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            if self.proc.poll() is not None:
                raise AssertionError(f"the console exited early:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never appeared:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self) -> str:
        return bytes(self.output[-3000:]).decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(2)
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_hostile_text_never_reaches_the_terminal(
    tmp_path: Path, store_url: str, clock: FakeClock, size: tuple[int, int]
) -> None:
    await _hostile_store(store_url, clock)
    script = tmp_path / "run_console.py"
    script.write_text(CHILD)
    root = Path(__file__).resolve().parents[2]
    term = Terminal([sys.executable, str(script), store_url], size, root)
    try:
        term.wait_for(b"My tickets")
        term.wait_for(b"Printer jam")
        time.sleep(1.0)
        # Walk the list, both ends and back.
        for key in ("j", "j", "j", "G", "g"):
            term.send(key)
        # Click every list row (a parsed `[@click=app.quit]` would quit here).
        list_x = {80: 50, 120: 62}[size[0]]  # inside the Subject column
        for row in range(4, min(size[1] - 2, 18)):
            term.click(list_x, row)
        assert term.proc.poll() is None, "a click made the console quit"
        # The views (hostile names), the agent picker (hostile logins), the palette, help.
        term.send("v", 0.3)
        for _ in range(12):
            term.send("j", 0.1)
        term.send("\x1b", 0.5)
        term.send("a", 1.0)
        term.send("\x1b", 0.8)
        term.send("\x10", 0.8)  # ctrl+p
        term.send("view", 1.0)
        term.send("\x1b", 0.8)
        term.send("?", 1.0)
        term.send("\x1b", 0.8)
        # A query with a payload in it is shown too (as text).
        term.send("/", 0.3)
        term.send("\x15", 0.2)  # ctrl+u
        term.send("clipboard grab", 0.3)
        term.send("\r", 1.5)
        assert term.proc.poll() is None, f"the console died:\n{term.tail()}"
        term.send("\x1b", 0.5)
        term.send("q", 0.5)
        term.proc.wait(15)
        assert term.proc.returncode == 0, term.tail()
    finally:
        term.close()

    out = bytes(term.output)
    for what, needle in FORBIDDEN.items():
        assert needle not in out, f"{what} reached the terminal"
    text = out.decode("utf-8", "replace")
    assert "Traceback" not in text
    # The hostile strings were shown, as text: the markup is visible, not obeyed.
    assert "[@click=app.quit]x" in text or "[@click=app.quit]" in text
    assert "[/bold]" in text


async def test_conflict_messages_naming_a_hostile_agent_are_shown_as_text(
    store_url: str, clock: FakeClock, make_app: Any
) -> None:
    """Error toasts and the bulk report quote other agents' names: they are data too."""
    numbers = await build_store(store_url, clock)
    db = Database(store_url)
    try:
        other = Service(db, clock=clock)
        login = f"evil{OSC0}{OSC52}"
        evil = await other.add_agent(login, "Evil")
        app = await make_app(store_url)
        async with app.run_test(size=(120, 40), notifications=True) as pilot:
            await wait_for(
                lambda: bool(
                    getattr(app.screen, "ticket_list", None) and app.screen.ticket_list.rows
                ),
                pilot,
            )
            target = numbers["Cannot log in after password reset"]
            assert app.screen.ticket_list.current.number == target
            await other.update_ticket(Actor("agent", login, evil.id), target, tags_add=["x"])
            await pilot.press("p")
            await pilot.pause(0.3)
            await pilot.press("enter")  # urgent: refused, the ticket changed meanwhile
            await wait_for(lambda: app.screen.last_report is not None, pilot)
            await pilot.pause(0.5)
            shown = screen_text(app)
            assert "changed by someone else" in shown
            assert "agent:evil" in shown
            assert "\x1b" not in shown and "\x07" not in shown
            for notification in app._notifications:
                assert "\x1b" not in notification.message
    finally:
        await db.dispose()
