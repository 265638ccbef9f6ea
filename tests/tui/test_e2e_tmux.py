"""End to end: the real `helpdesk` command in tmux on a demo store, driven with keys.

A private tmux server (`-L`, no config) at 120x40 runs `helpdesk --db ...` as the current
Unix user (root in CI), in a small shell wrapper that records the exit code and the terminal
modes (`stty -g`) before and after. The test types what an agent types and reads the screen
with `capture-pane`, polling until the expected text appears; it never sleeps as an assertion.

Under load (CI, several pytest runs on two cores) every step may take seconds: each wait polls
every 0.1 s for up to `STEP_TIMEOUT` (the first paint `START_TIMEOUT`), and waits for the
whole state an assertion reads (rows painted, labels loaded, the focus where keys must go),
never for a first hint of it. Keys are only sent once the widget that takes them has focus.
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
#: Seconds one step may take under heavy load (a key, a query, a screen change).
STEP_TIMEOUT = 30.0
#: Seconds from starting the command to the first painted queue (a cold start on a busy box).
START_TIMEOUT = 60.0
#: Seconds between two looks at the screen.
POLL = 0.1
#: Seconds one tmux client command may take (it is retried while a wait lasts).
TMUX_TIMEOUT = 30.0
#: Seconds for the demo store and for a CLI call (a cold Python start on a busy box).
COMMAND_TIMEOUT = 240.0
#: At most this many tickets fit in the list at 120x40 (so a smaller view shows every row).
FITS = 30

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
            timeout=TMUX_TIMEOUT,
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

    def wait(self, check: Callable[[str], bool], what: str, timeout: float = STEP_TIMEOUT) -> str:
        """Poll the screen until `check` holds; fail with the last screen after `timeout`.

        A slow or failed `capture-pane` (a loaded machine) is retried until the deadline.
        """
        deadline = time.monotonic() + timeout
        screen = error = ""
        while True:
            try:
                screen, error = self.screen(), ""
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                error = f" (last capture failed: {exc})"
            else:
                if check(screen):
                    return screen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"never saw {what} within {timeout:.0f} s{error}; screen:\n{screen}"
                )
            time.sleep(POLL)

    def wait_text(self, *needles: str, timeout: float = STEP_TIMEOUT) -> str:
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


def composer_focused(screen: str) -> bool:
    """The reply/note editor has the focus: typed text goes into it, not to the ticket keys."""
    return "Review & send" in footer(screen)


def ticket_keys(screen: str) -> bool:
    """The ticket screen itself has the focus (no composer, no dialog)."""
    return "Reply" in footer(screen) and "Note" in footer(screen)


def position(screen: str) -> tuple[str, int, int] | None:
    m = POSITION.search(screen)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def at(screen: str, view: str, pos: int | None = None) -> bool:
    """The status line shows `view` (and the cursor at `pos`)."""
    found = position(screen)
    return found is not None and found[0] == view and (pos is None or found[1] == pos)


def all_rows_painted(screen: str) -> bool:
    """Every ticket of a small list has its row (a big one: the first rows), labels loaded.

    The list paints its status line before the rows of a page arrive, and raw status names
    ("on-hold") before the team's labels ("On hold"): assertions wait for the final picture.
    """
    found = position(screen)
    shown = rows(screen)
    if found is None or not shown or any(s[:1].islower() for _, _, s, _ in shown):
        return False
    total = found[2]
    return len(shown) == total if total <= FITS else len(shown) >= 3


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


def stored_notes(
    helpdesk: str, number: int, url: str, env: dict[str, str], body: str
) -> list[dict[str, object]]:
    """The articles of ticket `number` with this body, as `helpdesk ticket show --json` has them.

    The console shows a note once it is written; the CLI, another process, is asked again
    (for up to a step's time) only if it answers before the note is visible to it.
    """
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        shown = subprocess.run(
            [helpdesk, "ticket", "show", str(number), "--json", "--db", url],
            capture_output=True,
            text=True,
            env=env,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        found = [a for a in json.loads(shown.stdout)["articles"] if a["body"] == body]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(POLL)


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
        timeout=COMMAND_TIMEOUT,
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
    screen = tmux.wait(
        lambda s: all_rows_painted(s) and list_focused(s) and "Unassigned" in s,
        "the queue, painted",
        timeout=START_TIMEOUT,
    )
    assert "My tickets" in screen and "Unassigned" in screen  # the views sidebar
    view, pos, mine = position(screen) or ("", 0, 0)
    assert (view, pos) == ("My tickets", 1) and mine >= 3
    if mine <= FITS:  # the whole view fits: every ticket has its row
        assert len(rows(screen)) == mine

    # `/` opens the query bar (pre-filled with the view's query); refine it to open tickets.
    tmux.keys("/")
    tmux.wait(lambda s: "/ assignee:me is:active" in s and query_bar_focused(s), "the query bar")
    tmux.type("status:open")
    tmux.wait_text("/ assignee:me is:active status:open")
    tmux.keys("Enter")
    screen = tmux.wait(
        lambda s: (
            at(s, "query")
            and list_focused(s)
            and all_rows_painted(s)
            and {status for _, _, status, _ in rows(s)} == {"Open"}
        ),
        "the filtered list, painted",
    )
    found = rows(screen)
    _, _, open_total = position(screen) or ("", 0, 0)
    assert found and open_total < mine
    if open_total <= FITS:
        assert len(found) == open_total
    assert {status for _, _, status, _ in found} == {"Open"}

    # A bad query: the error is inline, a caret under the bad word, and the list stays.
    tmux.keys("/")
    tmux.wait(query_bar_focused, "the query bar")
    tmux.type(" stauts:pending")
    tmux.wait(lambda s: "stauts:pending" in s and query_bar_focused(s), "the typed query")
    tmux.keys("Enter")
    screen = tmux.wait_text("unknown key 'stauts'", "did you mean")
    lines = screen.splitlines()
    bar = next(i for i, line in enumerate(lines) if "stauts:pending" in line)
    assert lines[bar + 1].index("^") == lines[bar].index("stauts:pending")
    assert rows(screen) == found
    # Esc clears the query: back to the view, reloaded (keys before that would be lost on it).
    tmux.keys("Escape")
    screen = tmux.wait(
        lambda s: (
            at(s, "My tickets", 1)
            and (position(s) or ("", 0, 0))[2] == mine
            and list_focused(s)
            and all_rows_painted(s)
            and "stauts" not in s
        ),
        "the view again, painted",
    )
    assert "stauts" not in screen

    # j j k: the cursor moves down twice and up once (the status line counts along).
    tmux.keys("j")
    tmux.wait(lambda s: at(s, "My tickets", 2), "position 2")
    tmux.keys("j")
    tmux.wait(lambda s: at(s, "My tickets", 3), "position 3")
    tmux.keys("k")
    screen = tmux.wait(lambda s: at(s, "My tickets", 2) and list_focused(s), "position 2 again")
    number, _, _, subject = rows(screen)[1]

    # Enter opens the ticket under the cursor: its header and its thread.
    tmux.keys("Enter")
    screen = tmux.wait(
        lambda s: f"#{number} {subject}" in s and "CUSTOMER" in s and ticket_keys(s),
        f"ticket #{number} open",
    )
    assert screen.splitlines()[0].strip().startswith(f"#{number} {subject}")
    assert re.search(r"╭─ +CUSTOMER", screen)  # the customer's first mail, in a box

    # n: an internal note; ctrl+s reviews it, ctrl+s again adds it to the thread.
    note = f"E2E note {uuid.uuid4().hex[:8]}: checked the lockout log"
    tmux.keys("n")
    tmux.wait(
        lambda s: "INTERNAL NOTE" in s and "not sent to the customer" in s and composer_focused(s),
        "the note editor, focused",
    )
    tmux.type(note)
    tmux.wait_text(note)
    tmux.keys("C-s")
    tmux.wait_text(f"Review internal note on #{number}")
    tmux.keys("C-s")
    screen = tmux.wait(
        lambda s: (
            "Review internal note" not in s
            and "not sent to the customer" not in s  # the editor is closed
            and "Internal note by" in s
            and note in s
            and ticket_keys(s)
        ),
        "the note in the thread",
    )

    # The note is in the store, internal, as the CLI shows it.
    notes = stored_notes(helpdesk, number, url, env, note)
    assert len(notes) == 1 and notes[0]["kind"] == "note" and notes[0]["internal"] is True

    # q goes back to the queue, q again quits; the terminal is as it was before.
    tmux.keys("q")
    tmux.wait(lambda s: at(s, "My tickets") and list_focused(s), "the queue again")
    tmux.keys("q")
    screen = tmux.wait_text("console exited")
    assert (tmp_path / "rc").read_text().strip() == "0"
    assert (tmp_path / "stty.after").read_text() == (tmp_path / "stty.before").read_text()
    flags = (
        "#{alternate_on} #{mouse_any_flag} #{mouse_button_flag} #{mouse_sgr_flag} #{cursor_flag}"
    )
    assert tmux.pane(flags) == "0 0 0 0 1"  # main screen, mouse off, cursor shown
    assert "Traceback" not in screen
