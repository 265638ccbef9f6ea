"""End to end: the real `helpdesk` command in tmux on a demo store, driven with keys.

A private tmux server (`-L`, no config) at 120x40 runs `helpdesk --db ...` as the current
Unix user (root in CI), in a small shell wrapper that records the exit code and the terminal
modes (`stty -g`) before and after. The test types what an agent types and reads the screen
with `capture-pane`, polling until the expected text appears; it never sleeps as an assertion.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

COLS, ROWS = 120, 40
TIMEOUT = 20.0

#: A queue row: "#1053 high   Open      Cannot log in…" (number, priority, status, subject).
ROW = re.compile(r"#(\d+) +(urgent|high|normal|low) +(\S+(?: \S+)?) {2,}(\S.*?)(?: {2,}|…)")
#: The queue's status line: view or "query", then "position/total".
POSITION = re.compile(r"(My tickets|query) {2}(\d+)/(\d+)")


def helpdesk_command() -> str:
    """The installed console script next to this Python (what users run)."""
    script = Path(sys.executable).parent / "helpdesk"
    if script.exists():
        return str(script)
    found = shutil.which("helpdesk")
    if found is None:
        pytest.fail("the `helpdesk` command is not installed (pip install -e .)")
    return found


class Tmux:
    """One private tmux server with one window; the pane's text is read with capture-pane."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (scripts/test.sh installs it)")
        self.socket = f"helpdesk-e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, script: Path) -> None:
        self.tmux(
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            str(COLS),
            "-y",
            str(ROWS),
            "-c",
            str(self.workdir),
            f"sh {shlex.quote(str(script))}",
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "e2e")

    def pane(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", "e2e", fmt).strip()

    def keys(self, *keys: str) -> None:
        """Named keys (Enter, Escape, C-s) or single characters, one after another."""
        self.tmux("send-keys", "-t", "e2e", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "e2e", "-l", text)

    def wait(self, check: Callable[[str], bool], what: str, timeout: float = TIMEOUT) -> str:
        """Poll the screen until `check` holds; fail with the last screen after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what} within {timeout:.0f} s; screen:\n{screen}")
            time.sleep(0.05)

    def wait_text(self, *needles: str, timeout: float = TIMEOUT) -> str:
        return self.wait(lambda s: all(n in s for n in needles), repr(needles), timeout)

    def kill(self) -> None:
        socket_path = ""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10, check=False
        )
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)  # kill-server leaves the socket file


def footer(screen: str) -> str:
    """The key bar at the bottom: it tells which widget has the focus."""
    lines = screen.rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def query_bar_focused(screen: str) -> bool:
    return "esc Clear" in footer(screen)


def list_focused(screen: str) -> bool:
    return "Open" in footer(screen) and "Mark" in footer(screen)


def position(screen: str) -> tuple[str, int, int] | None:
    m = POSITION.search(screen)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def rows(screen: str) -> list[tuple[int, str, str, str]]:
    """(number, priority, status, subject) of every ticket row on the screen, top to bottom."""
    return [
        (int(m.group(1)), m.group(2), m.group(3), m.group(4).rstrip("…").strip())
        for m in map(ROW.search, screen.splitlines())
        if m
    ]


def user_env(home: Path) -> dict[str, str]:
    """The environment an agent's shell has; no HELPDESK_* overrides from the test runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELPDESK_", "TEXTUAL"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
    )
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def test_agent_filters_opens_a_ticket_adds_a_note_and_quits(tmp_path: Path, tmux: Tmux) -> None:
    helpdesk = helpdesk_command()
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    demo = subprocess.run(
        [helpdesk, "demo", "--tickets", "200", "--no-open", "--db", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    assert "you are agent" in demo.stderr

    # The wrapper: terminal modes before and after, and the exit code, kept in files.
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
    script = tmp_path / "run.sh"
    script.write_text(
        "unset COLUMNS LINES\n"  # a runner's fixed size would override the pane's
        + exports
        + f"stty -g > {shlex.quote(str(tmp_path / 'stty.before'))}\n"
        + f"{shlex.quote(helpdesk)} --db {shlex.quote(url)}\n"
        + f"echo $? > {shlex.quote(str(tmp_path / 'rc'))}\n"
        + f"stty -g > {shlex.quote(str(tmp_path / 'stty.after'))}\n"
        + "echo 'console exited'\n"
        + "exec sleep 600\n"
    )
    tmux.start(script)

    # The queue opens on "My tickets" with ticket rows and the position in the status line.
    screen = tmux.wait(lambda s: position(s) is not None and len(rows(s)) >= 3, "the queue")
    assert "My tickets" in screen and "Unassigned" in screen  # the views sidebar
    view, pos, mine = position(screen) or ("", 0, 0)
    assert (view, pos) == ("My tickets", 1) and mine >= 3
    if mine <= 30:  # the whole view fits: every ticket has its row
        assert len(rows(screen)) == mine

    # `/` opens the query bar (pre-filled with the view's query); refine it to open tickets.
    tmux.keys("/")
    tmux.wait(lambda s: "/ assignee:me is:active" in s and query_bar_focused(s), "the query bar")
    tmux.type("status:open")
    tmux.keys("Enter")
    screen = tmux.wait(
        lambda s: (position(s) or ("",))[0] == "query" and list_focused(s), "the filtered list"
    )
    found = rows(screen)
    _, _, open_total = position(screen) or ("", 0, 0)
    assert found and open_total < mine
    if open_total <= 30:
        assert len(found) == open_total
    assert {status for _, _, status, _ in found} == {"Open"}

    # A bad query: the error is inline, a caret under the bad word, and the list stays.
    tmux.keys("/")
    tmux.wait(query_bar_focused, "the query bar")
    tmux.type(" stauts:pending")
    tmux.keys("Enter")
    screen = tmux.wait_text("unknown key 'stauts'", "did you mean")
    lines = screen.splitlines()
    bar = next(i for i, line in enumerate(lines) if "stauts:pending" in line)
    assert lines[bar + 1].index("^") == lines[bar].index("stauts:pending")
    assert rows(screen) == found
    # Esc clears the query: back to the view.
    tmux.keys("Escape")
    screen = tmux.wait(
        lambda s: (position(s) or ("",))[0] == "My tickets" and list_focused(s), "the view again"
    )
    assert "stauts" not in screen

    # j j k: the cursor moves down twice and up once (the status line counts along).
    tmux.keys("j", "j")
    tmux.wait(lambda s: (position(s) or ("", 0))[1] == 3, "position 3")
    tmux.keys("k")
    screen = tmux.wait(lambda s: (position(s) or ("", 0))[1] == 2, "position 2")
    number, _, _, subject = rows(screen)[1]

    # Enter opens the ticket under the cursor: its header and its thread.
    tmux.keys("Enter")
    screen = tmux.wait_text(f"#{number} {subject}", "CUSTOMER")
    assert screen.splitlines()[0].strip().startswith(f"#{number} {subject}")
    assert re.search(r"╭─ +CUSTOMER", screen)  # the customer's first mail, in a box

    # n: an internal note; ctrl+s reviews it, ctrl+s again adds it to the thread.
    note = f"E2E note {uuid.uuid4().hex[:8]}: checked the lockout log"
    tmux.keys("n")
    tmux.wait_text("INTERNAL NOTE", "not sent to the customer")
    tmux.type(note)
    tmux.wait_text(note)
    tmux.keys("C-s")
    tmux.wait_text(f"Review internal note on #{number}")
    tmux.keys("C-s")
    screen = tmux.wait(
        lambda s: "Review internal note" not in s and "Internal note by" in s and note in s,
        "the note in the thread",
    )

    # The note is in the store, internal, as the CLI shows it.
    shown = subprocess.run(
        [helpdesk, "ticket", "show", str(number), "--json", "--db", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    notes = [a for a in json.loads(shown.stdout)["articles"] if a["body"] == note]
    assert len(notes) == 1 and notes[0]["kind"] == "note" and notes[0]["internal"] is True

    # q goes back to the queue, q again quits; the terminal is as it was before.
    tmux.keys("q")
    tmux.wait(lambda s: (position(s) or ("",))[0] == "My tickets", "the queue again")
    tmux.keys("q")
    screen = tmux.wait_text("console exited")
    assert (tmp_path / "rc").read_text().strip() == "0"
    assert (tmp_path / "stty.after").read_text() == (tmp_path / "stty.before").read_text()
    flags = (
        "#{alternate_on} #{mouse_any_flag} #{mouse_button_flag} #{mouse_sgr_flag} #{cursor_flag}"
    )
    assert tmux.pane(flags) == "0 0 0 0 1"  # main screen, mouse off, cursor shown
    assert "Traceback" not in screen
