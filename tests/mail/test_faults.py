"""Fault tests: `kill -9` during ingestion, and a connection that silently dies.

HELPDESK_FAULT_KILLS (default 20) and HELPDESK_FAULT_MESSAGES (default 2000) shrink the
kill test for quick runs; HELPDESK_FAULT_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from mail_sync.accounts import add_account
from mail_sync.engine import Progress, SyncEngine, SyncSettings
from store.engine import Database
from store.migrate import upgrade
from store.models import Article, MailFolderState, MailSeen, Ticket
from store.service import Service
from tests.services.dovecot import ImapAccount

pytestmark = pytest.mark.imap

REPO = Path(__file__).resolve().parents[2]
PASSWORD_VAR = "HELPDESK_FAULT_PASSWORD"

#: The "daemon" that gets killed: one engine pass per run, printing progress lines.
SYNC_SCRIPT = r"""
import asyncio, sys
from store.engine import Database
from mail_sync.accounts import get_account
from mail_sync.engine import SyncEngine, SyncSettings

async def main(url, name):
    db = Database(url)
    account = await get_account(db, name)
    settings = SyncSettings(batch_size=50, max_transaction_seconds=0.3)
    def progress(p):
        print(p.event, p.backlog, flush=True)
    report = await SyncEngine(db, account, on_progress=progress, settings=settings).sync_once()
    await db.dispose()
    print("done" if report.ok and report.backlog == 0 else "incomplete", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def make_mail(i: int, rnd: random.Random) -> bytes:
    m = EmailMessage()
    m["From"] = f"Customer {i % 97} <c{i % 97}@example{i % 7}.com>"
    m["To"] = "support@help.test"
    m["Message-ID"] = f"<fault-{i}@example.com>"
    words = [
        "printer",
        "vpn",
        "invoice",
        "login",
        "outage",
        "refund",
        "slow",
        "mail",
        "access",
        "password",
    ]
    m["Subject"] = f"{rnd.choice(words)} problem {i}"
    if i % 10 == 9:
        m["In-Reply-To"] = f"<fault-{i - 1}@example.com>"  # a reply: threaded, not a new ticket
    body = " ".join(rnd.choice(words) for _ in range(rnd.randint(20, 120)))
    if i % 5 == 1:
        body = "Добрый день! " + body + " Paldies, ar cieņu."
    m.set_content(body)
    if i % 5 == 2:
        m.add_alternative(f"<html><body><p>{body}</p></body></html>", subtype="html")
    if i % 11 == 3:
        m.add_attachment(
            rnd.randbytes(3000), maintype="application", subtype="pdf", filename=f"f{i}.pdf"
        )
    return m.as_bytes()


async def n_rows(db: Database, model: type, *where: object) -> int:
    async with db.read() as s:
        return int(
            (
                await s.execute(sql_select(func.count()).select_from(model).where(*where))
            ).scalar_one()
        )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[str, Database]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    db = Database(url)
    await upgrade(db)
    await Service(db).add_queue("Support", ["support@help.test"])
    yield url, db
    await db.dispose()


@pytest.mark.slow
async def test_kill_9_during_ingest_loses_and_duplicates_nothing(
    store: tuple[str, Database], imap_account: ImapAccount
) -> None:
    url, db = store
    total = int(os.environ.get("HELPDESK_FAULT_MESSAGES", "2000"))
    kills = int(os.environ.get("HELPDESK_FAULT_KILLS", "20"))
    seed = int(os.environ.get("HELPDESK_FAULT_SEED", str(random.randrange(1 << 30))))
    rnd = random.Random(seed)
    print(f"fault seed {seed} (HELPDESK_FAULT_SEED to replay)")
    raws = [make_mail(i, rnd) for i in range(total)]

    def append_all() -> None:
        with imap_account.connect(timeout=60) as c:
            for i in range(0, total, 250):
                c.multiappend("INBOX", raws[i : i + 250])

    await asyncio.to_thread(append_all)
    account = await add_account(
        db,
        "fault",
        host=imap_account.host,
        port=imap_account.port,
        security="plain",
        username=imap_account.user,
        password_env=PASSWORD_VAR,
        queue="Support",
        after="seen",
    )
    env = {**os.environ, PASSWORD_VAR: imap_account.password, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", SYNC_SCRIPT, url, account.name]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

    def wait_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        return proc.stdout.readline() if ready else b""

    killed_at: list[int] = []
    finished_early = False
    helpers_seen = 0
    children: list[int] = []
    for n in range(kills):
        proc = start()
        try:
            # A third of the kills land right after connecting (before any commit); the rest
            # after 1-3 committed batches, at a random point (mid-transaction, mid-flagging).
            wait_line(proc, 30)
            if n % 3:
                for _ in range(rnd.randint(1, 3)):
                    line = wait_line(proc, 30)
                    while line and not line.startswith((b"batch", b"done", b"incomplete")):
                        line = wait_line(proc, 30)
                await asyncio.sleep(rnd.uniform(0.0, 0.6))
            else:
                await asyncio.sleep(rnd.uniform(0.0, 1.5))
            if proc.poll() is not None:
                finished_early = True
                break
            children = children_of(proc.pid)
            helpers_seen += len(children)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        # The killed daemon's parse workers (and their resource tracker) die with it.
        deadline = time.monotonic() + 10
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not [c for c in children if alive(c)], "processes outlived the killed daemon"
        killed_at.append(await n_rows(db, MailSeen))
    print(f"MailSeen rows after each kill: {killed_at}")
    # Then let it finish (more than one pass may be needed only if it is interrupted).
    proc = start()
    try:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert b"done" in out, out[-500:]

    replies = sum(1 for i in range(total) if i % 10 == 9)
    assert await n_rows(db, Article, Article.kind == "email_in") == total
    assert await n_rows(db, MailSeen) == total
    assert await n_rows(db, MailSeen, MailSeen.article_id.is_(None)) == 0
    async with db.read() as s:
        distinct = (
            await s.execute(
                sql_select(func.count(func.distinct(Article.message_id))).where(
                    Article.kind == "email_in"
                )
            )
        ).scalar_one()
        state = (await s.execute(sql_select(MailFolderState))).scalar_one()
    assert distinct == total  # none lost, none duplicated
    assert await n_rows(db, Ticket) == total - replies
    assert state.last_uid == total
    # `--after seen` was done for every committed mail, including those a kill interrupted.
    with imap_account.connect() as c:
        c.select_folder("INBOX", readonly=True)
        assert len(c.search(["UNSEEN"])) == 0
    if not finished_early:
        assert any(0 < k < total for k in killed_at), f"no kill landed mid-ingest: {killed_at}"
        assert helpers_seen > 0  # the kills did hit parse worker processes


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# --------------------------------------------------------------------------- silent death
class FreezingProxy:
    """A TCP proxy whose open connections can be frozen: data stops, sockets stay open (a
    dead NAT entry or a pulled cable). New connections after a freeze work normally."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._frozen: set[int] = set()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._generation = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            gen = self._generation
            self._conns.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, gen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if gen in self._frozen:
                    continue  # swallowed: nobody answers, nobody hangs up
                dst.sendall(data)
        except OSError:
            pass

    def freeze(self) -> None:
        self._frozen.add(self._generation)
        self._generation += 1

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for a, b in self._conns:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def proxy(imap_account: ImapAccount) -> Iterator[FreezingProxy]:
    p = FreezingProxy((imap_account.host, imap_account.port))
    yield p
    p.close()


def test_default_timings_detect_a_dead_connection_within_90s() -> None:
    s = SyncSettings()
    assert s.idle_check_timeout <= 30
    assert s.idle_renew <= 600
    assert s.idle_renew + s.read_timeout < 90
    assert s.poll_interval <= 300


async def test_silently_dead_connection_is_detected_and_replaced(
    store: tuple[str, Database], imap_account: ImapAccount, proxy: FreezingProxy
) -> None:
    _, db = store
    os.environ[PASSWORD_VAR] = imap_account.password
    account = await add_account(
        db,
        "frozen",
        host="127.0.0.1",
        port=proxy.port,
        security="plain",
        username=imap_account.user,
        password_env=PASSWORD_VAR,
        queue="Support",
    )
    # Production: idle_renew 60 s + read_timeout 25 s < 90 s. Scaled down by 20x here.
    settings = SyncSettings(
        idle_check_timeout=0.5, idle_renew=3, read_timeout=1.5, backoff_initial=0.2, backoff_max=1
    )
    events: list[Progress] = []
    engine = SyncEngine(db, account, on_progress=events.append, settings=settings)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        start = time.monotonic()
        while not any(e.event == "idle" for e in events):
            assert time.monotonic() - start < 15, "never reached IDLE"
            await asyncio.sleep(0.05)
        proxy.freeze()
        frozen_at = time.monotonic()
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = "x@example.com", "support@help.test", "after freeze"
        m["Message-ID"] = "<after-freeze@example.com>"
        m.set_content("sent while our connection was silently dead")
        await asyncio.to_thread(imap_account.append, "INBOX", m.as_bytes())
        while await n_rows(db, Ticket) == 0:
            assert time.monotonic() - frozen_at < 15, "the dead connection was not noticed"
            await asyncio.sleep(0.1)
        took = time.monotonic() - frozen_at
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    errors = [e.detail for e in events if e.event == "error"]
    assert errors and any("timed out" in e.lower() or "timeout" in e.lower() for e in errors), (
        errors
    )
    assert took <= settings.idle_renew + settings.read_timeout + 5


def test_sigterm_stops_the_sync_daemon_cleanly(tmp_path: Path, imap_account: ImapAccount) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"

    async def setup() -> None:
        db = Database(url)
        await upgrade(db)
        await add_account(
            db,
            "term",
            host=imap_account.host,
            port=imap_account.port,
            security="plain",
            username=imap_account.user,
            password_env=PASSWORD_VAR,
        )
        await db.dispose()

    asyncio.run(setup())
    env = {
        **os.environ,
        PASSWORD_VAR: imap_account.password,
        "PYTHONPATH": str(REPO),
        "HELPDESK_CONFIG": str(tmp_path / "none.toml"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--db", url, "sync"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            line = proc.stderr.readline()
            lines.append(line)
            if b"event=connected" in line:
                break
    assert any(b"event=connected" in ln for ln in lines), b"".join(lines)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    log = b"".join(lines) + (rest or b"")
    assert proc.returncode == 0, log
    assert time.monotonic() - t0 < 15
    assert b"event=daemon-stop" in log and b"Traceback" not in log
    assert imap_account.password.encode() not in log
