"""Console benchmark (issue 3): cold start, key-to-screen latency, a long ticket, peak RSS; mutt as reference.

Runs the real `helpdesk` command on a pseudo-terminal (120x40, xterm-256color) and reads what
it writes. The harness answers Textual's DECRQM query for synchronized output (mode 2026), so
every frame arrives between `CSI ? 2026 h` and `CSI ? 2026 l`; a frame's time is when its end
marker was read. See bench/README.md ("Console") for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import mailbox
import os
import platform
import pty
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
SYNC_START = b"\x1b[?2026h"
SYNC_END = b"\x1b[?2026l"
DECRQM_SYNC = b"\x1b[?2026$p"
#: Cursor positioning starts a new screen line in the text we keep; other sequences go.
CUP = re.compile(rb"\x1b\[\d*(?:;\d*)?[Hf]")
ESCAPES = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|P[^\x1b]*\x1b\\|[()][0-9A-Za-z]|[@-Z\\-_=>78])"
)
#: A ticket row of the queue list: "#123456 …".
TICKET_ROW = re.compile(r"#\d{3,} +(?:urgent|high|normal|low|[!↑↓ ]) +\S")
#: The queue status line: "My tickets  1,234/27,345  order: next".
POSITION = re.compile(r"(\d[\d,]*)/(\d[\d,]*) +order")
BENCH_SUBJECT = "Console bench: a thread of 50 articles"


def plain(raw: bytes) -> str:
    """The text of terminal output: lines where the cursor was positioned, no escapes."""
    text = ESCAPES.sub(b"", CUP.sub(b"\n", raw))
    return text.decode("utf-8", "replace")


@dataclass
class Frame:
    t: float
    text: str


@dataclass
class Terminal:
    """A child on a pty of a fixed size; output is split into frames as it arrives."""

    argv: list[str]
    cols: int = 120
    rows: int = 40
    env: dict[str, str] = field(default_factory=dict)
    sync: bool = True

    def __post_init__(self) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(TERM="xterm-256color", COLORTERM="truecolor", LANG="C.UTF-8", **self.env)
        self.lock = threading.Lock()
        self.raw = bytearray()
        self.frames: list[Frame] = []
        self.last_output = time.perf_counter()
        self._pending = bytearray()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            now = time.perf_counter()
            with self.lock:
                self.last_output = now
                self.raw += chunk
                if self.sync and DECRQM_SYNC in chunk:
                    os.write(self.master, b"\x1b[?2026;2$y")  # "supported, currently off"
                self._pending += chunk
                if not self.sync:
                    # No frame markers: judge the last few kB, a line can span two reads.
                    self.frames.append(Frame(now, plain(bytes(self.raw[-8192:]))))
                    self._pending.clear()
                    continue
                while True:
                    end = self._pending.find(SYNC_END)
                    if end < 0:
                        break
                    body = bytes(self._pending[:end])
                    start = body.rfind(SYNC_START)
                    if start >= 0:
                        body = body[start + len(SYNC_START) :]
                    self.frames.append(Frame(now, plain(body)))
                    del self._pending[: end + len(SYNC_END)]

    def write(self, data: bytes) -> float:
        t = time.perf_counter()
        os.write(self.master, data)
        return t

    def wait_frame(
        self, check: Callable[[str], bool], *, since: float, timeout: float = 60.0
    ) -> Frame:
        """The first frame finished at or after `since` whose text passes `check`."""
        deadline = time.perf_counter() + timeout
        index = 0
        while True:
            with self.lock:
                frames = self.frames[index:]
                index = len(self.frames)
            for frame in frames:
                if frame.t >= since and check(frame.text):
                    return frame
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited early:\n{self.tail()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no matching frame within {timeout} s:\n{self.tail()}")
            time.sleep(0.001)

    def latest_position(self) -> tuple[int, int] | None:
        """The position the status line shows now (the last frame that drew it)."""
        with self.lock:
            frames = list(self.frames)
        for frame in reversed(frames):
            found = position(frame.text)
            if found is not None:
                return found
        return None

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 60.0) -> None:
        """Until nothing was written for `quiet` seconds (counts, labels, presence settle)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                idle = time.perf_counter() - self.last_output
            if idle >= quiet:
                return
            time.sleep(0.02)

    def vm(self, key: str) -> int | None:
        """A /proc/PID/status figure in kB (VmHWM: peak resident set)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return None

    def tail(self) -> str:
        with self.lock:
            return plain(bytes(self.raw[-4000:]))[-2000:]

    def close(self, quit_keys: bytes = b"q", timeout: float = 10.0) -> int | None:
        """Quit with the keys; SIGTERM, then SIGKILL, if the process is still there."""
        if self.proc.poll() is None and quit_keys:
            with contextlib.suppress(OSError):
                self.write(quit_keys)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        self._reader.join(2)
        with contextlib.suppress(OSError):
            os.close(self.master)
        return self.proc.returncode


def position(text: str) -> tuple[int, int] | None:
    found = POSITION.findall(text)
    if not found:
        return None
    pos, total = found[-1]
    return int(pos.replace(",", "")), int(total.replace(",", ""))


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# --------------------------------------------------------------------------- the store
def prepare_store(url: str, login: str) -> int:
    """Add (once) a ticket with 50 articles assigned to `login`; return its number."""
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import select

    from store.engine import Database
    from store.models import ArticleKind, Level, Status, Ticket
    from store.service import MAIL, Actor, ArticleInput, Service

    async def main() -> int:
        db = Database(url)
        service = Service(db)
        try:
            async with db.read() as session:
                existing = (
                    await session.execute(
                        select(Ticket.number).where(Ticket.subject == BENCH_SUBJECT).limit(1)
                    )
                ).scalar()
            if existing is not None:
                return int(existing)
            agent = await service.agent(login)
            me = Actor("agent", agent.login, agent.id)
            paragraph = (
                "The printer on floor 3 shows error 0x{n:04x} again after the last driver "
                "update; we restarted it twice and the queue still holds {n} jobs. "
            )
            ticket = await service.create_ticket(
                MAIL,
                subject=BENCH_SUBJECT,
                customer_email="bench.customer@example.com",
                customer_name="Bench Customer",
                article=ArticleInput(
                    kind=ArticleKind.EMAIL_IN,
                    body="\n\n".join(paragraph.format(n=i) * 2 for i in range(3))
                    + "\n\n(bench article 1 of 50)",
                    from_addr="bench.customer@example.com",
                    subject=BENCH_SUBJECT,
                ),
                impact=Level.HIGH,
                urgency=Level.HIGH,
                assignee=login,
            )
            number = ticket.number
            for i in range(2, 51):
                body = "\n\n".join(paragraph.format(n=i * 7 + k) for k in range(3))
                body += f"\n\n(bench article {i} of 50)"
                if i == 50:
                    body = "Newest entry of the bench thread.\n\n" + body
                if i % 3 == 0:
                    await service.add_note(me, number, body)
                elif i % 3 == 1:
                    await service.add_reply(me, number, body, status=Status.OPEN)
                else:
                    await service.add_customer_message(
                        MAIL,
                        number,
                        ArticleInput(
                            kind=ArticleKind.EMAIL_IN,
                            body=body,
                            from_addr="bench.customer@example.com",
                            subject="Re: " + BENCH_SUBJECT,
                            quoted_text="> " + paragraph.format(n=i) * 3,
                        ),
                    )
            return number
        finally:
            await db.dispose()

    return asyncio.run(main())


# --------------------------------------------------------------------------- helpdesk
def helpdesk_argv(url: str, login: str) -> list[str]:
    script = Path(sys.executable).parent / "helpdesk"
    return [
        str(script if script.exists() else shutil.which("helpdesk")),
        "--db",
        url,
        "--as",
        login,
    ]


def has_rows(text: str) -> bool:
    return len(TICKET_ROW.findall(text)) >= 5


def cold_start(argv: list[str], runs: int) -> dict[str, Any]:
    firsts: list[float] = []
    rows: list[float] = []
    rss: list[int] = []
    for _ in range(runs):
        term = Terminal(argv)
        try:
            first = term.wait_frame(lambda _t: True, since=0.0)
            painted = term.wait_frame(has_rows, since=0.0)
            firsts.append(first.t - term.t0)
            rows.append(painted.t - term.t0)
            term.wait_quiet(1.0, timeout=30)
            rss.append(term.vm("VmHWM") or 0)
        finally:
            term.close()
        print(f"  cold start: first frame {firsts[-1]:.3f} s, rows {rows[-1]:.3f} s", flush=True)
    return {
        "first_frame_s": firsts,
        "queue_painted_s": rows,
        "median_first_frame_s": statistics.median(firsts),
        "median_queue_painted_s": statistics.median(rows),
        "rss_after_start_kb": rss,
    }


def hold_key(term: Terminal, key: bytes, count: int, rate: float, step: int) -> list[float]:
    """Send `key` `count` times at `rate` per second; latency of each to the screen showing it."""
    start = term.latest_position()
    assert start is not None, "the status line shows no position"
    pos0 = start[0]
    writes: list[float] = []
    interval = 1.0 / rate
    t_next = time.perf_counter()
    for _ in range(count):
        while time.perf_counter() < t_next:
            time.sleep(0.0005)
        writes.append(term.write(key))
        t_next += interval
    latencies: list[float] = []
    for i, t in enumerate(writes):
        want = pos0 + step * (i + 1)

        def reached(text: str, want: int = want) -> bool:
            p = position(text)
            return p is not None and (p[0] >= want if step > 0 else p[0] <= want)

        shown = term.wait_frame(reached, since=t, timeout=30)
        latencies.append(shown.t - t)
    return latencies


def jump(term: Terminal, key: bytes, want: Callable[[int, int], bool]) -> float:
    t = term.write(key)
    frame = term.wait_frame(
        lambda text: (p := position(text)) is not None and want(*p), since=t, timeout=30
    )
    return frame.t - t


def interactive(argv: list[str], number: int, args: argparse.Namespace) -> dict[str, Any]:
    term = Terminal(argv)
    out: dict[str, Any] = {}
    try:
        term.wait_frame(has_rows, since=0.0)
        # Wait for the total (the status line shows "position/total") and the counts to settle.
        term.wait_frame(lambda t: position(t) is not None, since=0.0)
        term.wait_quiet(1.5, timeout=60)
        j = hold_key(term, b"j", args.keys, args.rate, +1)
        term.wait_quiet(1.0)
        k = hold_key(term, b"k", args.keys // 2, args.rate, -1)
        term.wait_quiet(1.0)
        out["j_ms"] = [x * 1000 for x in j]
        out["k_ms"] = [x * 1000 for x in k]
        g_end: list[float] = []
        g_top: list[float] = []
        for _ in range(args.jumps):
            g_end.append(jump(term, b"G", lambda p, total: p == total) * 1000)
            term.wait_quiet(0.5)
            g_top.append(jump(term, b"g", lambda p, total: p == 1) * 1000)
            term.wait_quiet(0.5)
        out["G_ms"] = g_end
        out["g_ms"] = g_top
        # The 50-article ticket: filter to it, then Enter until its newest entry is painted.
        term.write(b"/")
        time.sleep(0.3)
        term.write(f"#{number}\r".encode())
        term.wait_frame(lambda t: (p := position(t)) is not None and p == (1, 1), since=0.0)
        term.wait_quiet(1.0)
        opened: list[float] = []
        header: list[float] = []
        for _ in range(args.opens):
            t = term.write(b"\r")
            head = term.wait_frame(lambda text: BENCH_SUBJECT in text, since=t, timeout=30)
            newest = term.wait_frame(
                lambda text: "Newest entry of the bench thread" in text, since=t, timeout=30
            )
            header.append((head.t - t) * 1000)
            opened.append((newest.t - t) * 1000)
            term.wait_quiet(1.0)
            t = term.write(b"q")
            term.wait_frame(lambda text: position(text) is not None, since=t, timeout=30)
            term.wait_quiet(1.0)
        out["open_header_ms"] = header
        out["open_newest_ms"] = opened
        out["peak_rss_kb"] = term.vm("VmHWM")
    finally:
        term.write(b"\x1b")
        time.sleep(0.2)
        out["exit_code"] = term.close(b"q")
    return out


# --------------------------------------------------------------------------- mutt
def make_mbox(path: Path, count: int) -> None:
    """`count` small messages in mbox format, checked with the mailbox module."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Written as text: mailbox.mbox.add() and EmailMessage cost several ms per message on
    # this machine (100,000 would take a quarter of an hour); the format is the same.
    with tmp.open("w", encoding="ascii", newline="\n") as out:
        for i in range(count):
            when = start + timedelta(minutes=5 * i)
            sender = f"customer{i % 5000}@example.com"
            out.write(
                f"From {sender} {when:%a %b %d %H:%M:%S %Y}\n"
                f"From: Customer {i % 5000} <{sender}>\n"
                "To: support@example.com\n"
                f"Subject: Printer jam on floor {i % 9} (case {i})\n"
                f"Date: {format_datetime(when)}\n"
                f"Message-ID: <bench-{i}@example.com>\n"
                "MIME-Version: 1.0\n"
                "Content-Type: text/plain; charset=us-ascii\n"
                "\n"
                f"Hello,\n\nthe printer jams again ({i}).\n\nThanks\n\n"
            )
    box = mailbox.mbox(tmp, create=False)
    try:
        if len(box) != count:
            raise RuntimeError(f"{tmp}: the mailbox module reads {len(box)} messages, not {count}")
    finally:
        box.close()
    tmp.rename(path)


def mutt_cold_start(mbox: Path, count: int, runs: int) -> dict[str, Any]:
    mutt = shutil.which("mutt")
    if mutt is None:
        return {"error": "mutt is not installed (apt-get install -y mutt)"}
    home = Path(tempfile.mkdtemp(prefix="mutt-home-"))
    (home / "Mail").mkdir()  # or mutt asks whether to create it
    argv = [mutt, "-n", "-F", "/dev/null", "-R", "-f", str(mbox)]
    times: list[float] = []
    try:
        for _ in range(runs):
            term = Terminal(argv, env={"HOME": str(home), "MAIL": str(mbox)}, sync=False)
            try:
                # The index is up when the status bar shows the message count.
                done = term.wait_frame(lambda t: f"Msgs:{count}" in t, since=0.0, timeout=120)
                times.append(done.t - term.t0)
            finally:
                term.close(b"q")
            print(f"  mutt cold start: {times[-1]:.3f} s", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"argv": argv, "cold_start_s": times, "median_cold_start_s": statistics.median(times)}


# --------------------------------------------------------------------------- main
def summary(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 0.5):.1f}  p95 {pct(values, 0.95):.1f}  max {max(values):.1f}  "
        f"(n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DATA / "console-1000000.db")
    parser.add_argument("--as", dest="login", default="benchme", help="agent login")
    parser.add_argument("--runs", type=int, default=5, help="cold starts of each program")
    parser.add_argument("--keys", type=int, default=300, help="j presses while held")
    parser.add_argument("--rate", type=float, default=30.0, help="key repeat rate (per second)")
    parser.add_argument("--jumps", type=int, default=5, help="G/g pairs")
    parser.add_argument("--opens", type=int, default=5, help="opens of the 50-article ticket")
    parser.add_argument("--mbox-messages", type=int, default=100_000)
    parser.add_argument("--mbox", type=Path, help="default: bench/data/mutt-N.mbox")
    parser.add_argument("--no-mutt", action="store_true")
    parser.add_argument(
        "--only",
        choices=("all", "interactive"),
        default="all",
        help="interactive: only keys, jumps, the long ticket and RSS (no cold starts, no mutt)",
    )
    parser.add_argument("--out", type=Path, default=DATA / "console-results.json")
    args = parser.parse_args()

    url = f"sqlite:///{args.db.resolve()}"
    if not args.db.exists():
        sys.exit(f"no store at {args.db}: copy bench/data/store-1000000.db there (bench/README.md)")
    print(f"load before: {loadavg()}", flush=True)
    number = prepare_store(url, args.login)
    print(f"50-article ticket: #{number}", flush=True)
    argv = helpdesk_argv(url, args.login)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "store": str(args.db),
        "ticket_50": number,
        "load_before": loadavg(),
    }
    mbox = args.mbox or DATA / f"mutt-{args.mbox_messages}.mbox"
    if args.only == "interactive":
        args.no_mutt = True
    if not args.no_mutt:
        print(f"mbox: {mbox}", flush=True)
        make_mbox(mbox, args.mbox_messages)
    if args.only == "all":
        print("helpdesk cold start", flush=True)
        result["helpdesk_cold"] = cold_start(argv, args.runs)
    if not args.no_mutt:
        print("mutt cold start", flush=True)
        result["mutt"] = mutt_cold_start(mbox, args.mbox_messages, args.runs)
        ratio = (
            result["helpdesk_cold"]["median_queue_painted_s"]
            / result["mutt"]["median_cold_start_s"]
        )
        result["helpdesk_over_mutt"] = ratio
    print("keys, jumps, long ticket", flush=True)
    result["interactive"] = inter = interactive(argv, number, args)
    result["load_after"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print()
    print(f"load before {result['load_before']} after {result['load_after']}")
    if "helpdesk_cold" in result:
        cold = result["helpdesk_cold"]
        print(
            f"helpdesk cold start to painted queue: median {cold['median_queue_painted_s']:.3f} s "
            f"(first frame {cold['median_first_frame_s']:.3f} s) runs {[round(x, 3) for x in cold['queue_painted_s']]}"
        )
    if "mutt" in result and "median_cold_start_s" in result["mutt"]:
        print(
            f"mutt -f {args.mbox_messages}-message mbox: median {result['mutt']['median_cold_start_s']:.3f} s; "
            f"helpdesk/mutt = {result['helpdesk_over_mutt']:.2f}"
        )
    print(f"j held ({args.rate:g}/s), ms: {summary(inter['j_ms'])}")
    print(f"k held ({args.rate:g}/s), ms: {summary(inter['k_ms'])}")
    print(f"G (to the end), ms: {summary(inter['G_ms'])}")
    print(f"g (to the top), ms: {summary(inter['g_ms'])}")
    print(f"open 50-article ticket, header ms: {summary(inter['open_header_ms'])}")
    print(f"open 50-article ticket, newest entry painted ms: {summary(inter['open_newest_ms'])}")
    print(f"peak RSS (VmHWM): {(inter['peak_rss_kb'] or 0) / 1024:.0f} MiB")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
