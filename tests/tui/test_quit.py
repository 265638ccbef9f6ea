"""Quitting: `q` ends the real `helpdesk` process promptly, even with a statement stuck in flight.

The console runs on a pty. While it is open, another connection holds the SQLite write lock
(as the mail daemon does during a large batch), so the console's presence heartbeat waits in
SQLite's 10 s busy timeout inside a driver thread when the agent presses `q`; on PostgreSQL
another session holds a lock on the presence table.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import sqlite3
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tui.test_e2e_tmux import helpdesk_command

#: Generous for CI; measured ~0.5 s on the 1M-ticket store (bench/RESULTS.md).
QUIT_BOUND = 5.0
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[PX^_].*?\x1b\\|\x1b\][^\x07]*\x07|\x1b.")


class _Screen:
    """Drains the pty on a thread (a full pty buffer would block the app's writes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.seen += chunk

    def wait_for(self, proc: subprocess.Popen[bytes], want: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with self.lock:
                if want in ESCAPES.sub(b"", bytes(self.seen)):
                    return
            time.sleep(0.05)
        raise AssertionError(f"{want!r} not shown; last output: {bytes(self.seen[-800:])!r}")


class _Blocker:
    """Another client holding what the console's presence write needs, until released."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        self._loop = asyncio.new_event_loop()

    def hold(self) -> None:
        if self.url.startswith("sqlite"):
            # As the mail daemon does during a large batch: the write lock.
            self._sqlite = sqlite3.connect(self.url.split("///", 1)[1], isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            import asyncpg

            dsn = self.url.replace("postgresql+asyncpg://", "postgresql://")
            self._pg = self._loop.run_until_complete(asyncpg.connect(dsn))
            self._loop.run_until_complete(self._pg.execute("BEGIN"))
            self._loop.run_until_complete(
                self._pg.execute("LOCK TABLE presence IN ACCESS EXCLUSIVE MODE")
            )

    def release(self) -> None:
        if self._sqlite is not None:
            if self._sqlite.in_transaction:
                self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            self._loop.run_until_complete(self._pg.close())
        self._loop.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_q_exits_promptly_while_a_presence_write_is_blocked(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    helpdesk = helpdesk_command()
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'demo.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    demo = subprocess.run(
        [helpdesk, "demo", "--tickets", "200", "--no-open", "--db", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert demo.returncode == 0, demo.stderr

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", LANG="C.UTF-8")
    proc = subprocess.Popen(
        [helpdesk, "--db", url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    blocker = _Blocker(url)
    try:
        _Screen(master).wait_for(proc, b"My tickets", 60)
        blocker.hold()
        os.write(master, b"\r")  # opening a ticket sends a presence write, which now waits
        time.sleep(2.0)  # the heartbeat checks each second; the write is stuck by now
        os.write(master, b"q")  # back to the queue
        time.sleep(0.5)
        start = time.monotonic()
        os.write(master, b"q")
        try:
            proc.wait(QUIT_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {QUIT_BOUND} s after q") from None
        assert proc.returncode == 0
        assert time.monotonic() - start < QUIT_BOUND
    finally:
        blocker.release()
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        os.close(master)
