"""Mail ingest benchmark (issue 4): IMAP -> committed tickets, next to mbsync and offlineimap.

Generates realistic mail (plain, HTML, attachments, threads, several languages), APPENDs it
into a private Dovecot on 127.0.0.1 (tests/services/dovecot.py), then times, on the same
folder: `SyncEngine.sync_once()` into a fresh SQLite and/or PostgreSQL store, `mbsync`
(Debian isync, default `FSync yes`) into a fresh Maildir, and `offlineimap` if it runs.
See bench/README.md ("Mail ingest").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: `--compare TREE` runs each helpdesk ingest in a child process importing the code of TREE
#: (e.g. a checkout of the commit before a change), so both are measured in the same run.
sys.path.insert(0, os.environ.get("HELPDESK_BENCH_CODE") or str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from mail_sync.accounts import add_account, get_account  # noqa: E402
from mail_sync.engine import SyncEngine, SyncSettings  # noqa: E402
from store.engine import Database  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.models import Article, Outbox, Quarantine, Ticket  # noqa: E402
from store.service import Service  # noqa: E402
from tests.services.dovecot import DovecotServer, ImapAccount  # noqa: E402

DATA = ROOT / "bench" / "data"
PASSWORD_VAR = "HELPDESK_BENCH_IMAP_PASSWORD"

# ----------------------------------------------------------------------------- corpus
TEXTS = {
    "en": (
        "Printer on the second floor",
        "Hello, the printer on the second floor stopped printing this morning. It shows a "
        "paper jam but there is no paper stuck anywhere. We restarted it twice. Could someone "
        "take a look today? We have invoices to send out before five.",
    ),
    "lv": (
        "Rēķins par oktobri nav saņemts",
        "Labdien! Mēs vēl neesam saņēmuši rēķinu par oktobra mēnesi. Lūdzu, pārbaudiet, vai tas "
        "ir nosūtīts uz pareizo adresi, un atsūtiet to vēlreiz. Paldies par palīdzību!",
    ),
    "ru": (
        "Не могу войти в личный кабинет",
        "Здравствуйте! Со вчерашнего дня не могу войти в личный кабинет: пишет, что пароль "
        "неверный, хотя я его не менял. Сброс пароля тоже не приходит на почту. Помогите, "
        "пожалуйста, это срочно.",
    ),
    "ar": (
        "مشكلة في تسجيل الدخول",
        "مرحبا، لا أستطيع تسجيل الدخول إلى حسابي منذ صباح اليوم. تظهر رسالة خطأ تقول إن كلمة "
        "المرور غير صحيحة. أرجو المساعدة في أقرب وقت ممكن، شكرا لكم.",
    ),
    "ms": (
        "Pesanan saya belum sampai",
        "Selamat pagi, pesanan saya yang dibuat minggu lepas masih belum sampai. Nombor "
        "penjejakan tidak menunjukkan sebarang kemas kini sejak hari Isnin. Boleh tolong semak?",
    ),
    "lt": (
        "Neveikia VPN prisijungimas",
        "Laba diena, nuo vakar negaliu prisijungti prie VPN iš namų. Programa rodo klaidą apie "
        "pasibaigusį sertifikatą. Ar galite atnaujinti mano sertifikatą? Ačiū.",
    ),
    "de": (
        "Lieferung beschädigt angekommen",
        "Guten Tag, die Lieferung von gestern ist beschädigt angekommen: zwei Monitore haben "
        "Risse im Gehäuse. Fotos sind angehängt. Bitte um Rückruf wegen Ersatz. Grüße",
    ),
}
NAMES = [
    "Anna Bērziņa",
    "Иван Петров",
    "محمد علي",
    "Siti Aminah",
    "Jonas Kazlauskas",
    "Jürgen Müller",
    "Mary O'Brien",
    "Chen Wei",
]
DOMAINS = ["example.com", "acme.lv", "firma.de", "shop.my", "uzn.lt", "mail.ru"]


def generate(n: int, seed: int = 4) -> list[bytes]:
    """`n` mails: ~55% plain, ~15% HTML-only or alternative, ~10% with an attachment,
    ~20% replies (In-Reply-To/References) to an earlier mail of the set; 7 languages."""
    rng = random.Random(seed)
    out: list[bytes] = []
    sent: list[tuple[str, str, str]] = []  # (message-id, subject, sender)
    start = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
    for i in range(n):
        lang = rng.choice(list(TEXTS))
        subject, body = TEXTS[lang]
        name = rng.choice(NAMES)
        sender = f"customer{rng.randrange(n // 3 + 1)}@{rng.choice(DOMAINS)}"
        m = EmailMessage()
        mid = make_msgid(idstring=f"b{i}", domain="bench.example")
        kind = rng.random()
        refs: list[str] = []
        if kind < 0.2 and sent:
            parent_id, parent_subject, parent_sender = sent[rng.randrange(len(sent))]
            subject = "Re: " + parent_subject
            sender = parent_sender
            refs = [parent_id]
            body = "Any news on this? It is still not working.\n\n> " + body.replace("\n", "\n> ")
        else:
            subject = f"{subject} ({i})"
        m["From"] = f"{name} <{sender}>"
        m["To"] = "support@help.test"
        m["Subject"] = subject
        m["Date"] = format_datetime(start + timedelta(seconds=37 * i))
        m["Message-ID"] = mid
        if refs:
            m["In-Reply-To"] = refs[-1]
            m["References"] = " ".join(refs)
        text = f"{body}\n\n-- \n{name}\n"
        if 0.2 <= kind < 0.35:
            html = (
                f"<html><body><p>{body}</p><p><b>{name}</b><br>"
                f"<a href='https://{sender.split('@')[1]}'>{sender}</a></p></body></html>"
            )
            if kind < 0.27:
                m.set_content(html, subtype="html")
            else:
                m.set_content(text)
                m.add_alternative(html, subtype="html")
        else:
            m.set_content(text)
        if 0.35 <= kind < 0.45:
            size = rng.randrange(2_000, 60_000)
            m.add_attachment(
                rng.randbytes(size),
                maintype="application",
                subtype="pdf",
                filename=f"scan-{i}.pdf",
            )
        out.append(m.as_bytes())
        sent.append((mid, subject.removeprefix("Re: "), sender))
    return out


def append_all(acct: ImapAccount, folder: str, raws: list[bytes]) -> None:
    """APPEND every mail (MULTIAPPEND, 200 per command)."""
    with acct.connect(timeout=120) as c:
        if folder.upper() != "INBOX" and not c.folder_exists(folder):
            c.create_folder(folder)
        for i in range(0, len(raws), 200):
            c.multiappend(folder, raws[i : i + 200])


# ----------------------------------------------------------------------------- runners
def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by name (`/proc/self/task`)."""
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        name = names.get(int(task.name), name)
        if "connection_worker" in name:
            name = "sqlite"
        key = name.rstrip("0123456789_") or name
        out[key] = out.get(key, 0.0) + cpu
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, all cores (`/proc/stat`)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / tick, idle / tick


ACK_TEMPLATE = (
    "Hello {{customer.name}}, we have your request as ticket {{ticket.number}} "
    "({{ticket.subject}}). {{agent.name}}"
)


async def run_helpdesk(
    url: str, acct: ImapAccount, batch: int, profile: Path | None, ack: bool = False
) -> dict[str, Any]:
    db = Database(url)
    await upgrade(db)
    service = Service(db)
    await service.add_queue("Support", ["support@help.test"])
    if ack:  # the queue acknowledges new tickets (RFC 3834 rules, 3 per sender and hour)
        from store.models import Queue

        await service.add_canned("ack", ACK_TEMPLATE)
        async with db.write() as s:
            queue = (await s.execute(select(Queue))).scalar_one()
            queue.settings = {"ack": "ack", "ack_limit_per_hour": 3}
    os.environ[PASSWORD_VAR] = acct.password
    await add_account(
        db,
        "bench",
        host=acct.host,
        port=acct.port,
        security="plain",
        username=acct.user,
        password_env=PASSWORD_VAR,
        folders=["INBOX"],
        queue="Support",
    )
    info = await get_account(db, "bench")
    engine = SyncEngine(db, info, settings=SyncSettings(batch_size=batch))
    from mail_sync.parse import warm_up

    warm_up()
    load_before = load()
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, idle0 = machine_cpu()
    threads0 = thread_cpu()
    if prof:
        prof.enable()
    report = await engine.sync_once()
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    main_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    busy1, idle1 = machine_cpu()
    threads1 = thread_cpu()
    await asyncio.sleep(1.0)  # the stopped pool's workers are reaped (their CPU counted)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    kids_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    if prof and profile:
        prof.dump_stats(str(profile))
    async with db.read() as s:
        counts = {
            "acks_queued": (
                await s.execute(
                    select(func.count()).select_from(Outbox).where(Outbox.kind == "ack")
                )
            ).scalar_one(),
            "tickets": (await s.execute(select(func.count()).select_from(Ticket))).scalar_one(),
            "articles": (await s.execute(select(func.count()).select_from(Article))).scalar_one(),
            "quarantined": (
                await s.execute(select(func.count()).select_from(Quarantine))
            ).scalar_one(),
        }
    await db.dispose()
    totals = report.totals()
    if not report.ok:
        raise SystemExit(f"sync failed: {[f.error or f.stopped for f in report.folders]}")
    return {
        "seconds": elapsed,
        "main_process_cpu_s": round(main_cpu, 2),
        # the parse workers (reaped when the engine stops its pool at the end of the sync)
        "worker_cpu_s": round(kids_cpu, 2),
        # the engine's threads by name (python: the event loop; the SQLite thread is
        # aiosqlite's; asyncio_N run IMAP calls), threads that ended are not counted
        "thread_cpu_s": {
            k: round(v - threads0.get(k, 0.0), 2)
            for k, v in sorted(threads1.items(), key=lambda kv: -kv[1])
            if v - threads0.get(k, 0.0) >= 0.05
        },
        # every process of the machine (Dovecot included), and the share of both cores used
        "machine_cpu_s": round(busy1 - busy0, 2),
        "machine_busy": round((busy1 - busy0) / max(1e-9, busy1 - busy0 + idle1 - idle0), 3),
        "totals": totals,
        "counts": counts,
        "load_before": load_before,
    }


def run_child(tree: Path, url: str, acct: ImapAccount, batch: int, ack: bool) -> dict[str, Any]:
    """`run_helpdesk` in a new interpreter importing the code of `tree` (see `--compare`)."""
    job = {"url": url, "batch": batch, "ack": ack, **acct._asdict()}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
        env={**os.environ, "HELPDESK_BENCH_CODE": str(tree.resolve())},
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["code"] = str(tree)
    return out


def run_mbsync(acct: ImapAccount, work: Path) -> float:
    """mbsync pulling INBOX into a fresh Maildir (default FSync yes)."""
    box = work / "maildir"
    shutil.rmtree(work, ignore_errors=True)
    box.mkdir(parents=True)
    cfg = work / "mbsyncrc"
    cfg.write_text(
        f"IMAPAccount bench\nHost {acct.host}\nPort {acct.port}\nUser {acct.user}\n"
        f"Pass {acct.password}\nSSLType None\nAuthMechs LOGIN\n\n"
        f"IMAPStore remote\nAccount bench\n\n"
        f"MaildirStore local\nPath {box}/\nInbox {box}/INBOX\n\n"
        f"Channel bench\nFar :remote:INBOX\nNear :local:INBOX\nSync Pull\nCreate Near\n"
        f"SyncState {work}/state/\n"
    )
    (work / "state").mkdir()
    t0 = time.perf_counter()
    subprocess.run(["mbsync", "-q", "-c", str(cfg), "bench"], check=True)
    elapsed = time.perf_counter() - t0
    n = len(list((box / "INBOX" / "new").iterdir())) + len(list((box / "INBOX" / "cur").iterdir()))
    return elapsed if n else float("nan")


def mbsync_count(work: Path) -> int:
    box = work / "maildir" / "INBOX"
    return sum(len(list((box / d).iterdir())) for d in ("new", "cur"))


def run_offlineimap(acct: ImapAccount, work: Path, timeout: float) -> tuple[float, int]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = work / "offlineimaprc"
    cfg.write_text(
        "[general]\naccounts = bench\nmetadata = " + str(work / "meta") + "\n\n"
        "[Account bench]\nlocalrepository = local\nremoterepository = remote\n\n"
        f"[Repository local]\ntype = Maildir\nlocalfolders = {work / 'maildir'}\n\n"
        f"[Repository remote]\ntype = IMAP\nremotehost = {acct.host}\nremoteport = {acct.port}\n"
        f"remoteuser = {acct.user}\nremotepass = {acct.password}\nssl = no\n"
        "starttls = no\nfolderfilter = lambda f: f == 'INBOX'\n"
    )
    t0 = time.perf_counter()
    subprocess.run(
        ["offlineimap", "-c", str(cfg), "-o", "-u", "quiet"], check=True, timeout=timeout
    )
    elapsed = time.perf_counter() - t0
    box = work / "maildir" / "INBOX"
    n = sum(len(list((box / d).iterdir())) for d in ("new", "cur") if (box / d).is_dir())
    return elapsed, n


def durable_postgres() -> Any:
    """The tests' throwaway PostgreSQL, but durable (fsync, synchronous_commit and full page
    writes on, as in production), so it is compared fairly with mbsync's FSync."""
    from tests.services.postgres import PostgresServer

    class DurablePostgres(PostgresServer):
        def _popen(self, args: list[str], **kwargs: Any) -> Any:
            if args and args[0].endswith("/postgres"):
                args = [*args, "-c", "fsync=on", "-c", "synchronous_commit=on"]
                args += ["-c", "full_page_writes=on"]
            return super()._popen(args, **kwargs)

    return DurablePostgres()


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--batch", type=int, default=SyncSettings().batch_size, help="UIDs per FETCH")
    ap.add_argument("--no-mbsync", action="store_true")
    ap.add_argument("--no-offlineimap", action="store_true")
    ap.add_argument("--offlineimap-timeout", type=float, default=900)
    ap.add_argument("--profile", type=Path, help="cProfile the first SQLite run into this file")
    ap.add_argument(
        "--ack", action="store_true", help="the queue sends acknowledgements (3 per sender/hour)"
    )
    ap.add_argument("--out", type=Path, default=DATA / "ingest-results.json")
    ap.add_argument(
        "--compare",
        type=Path,
        help="also ingest with the code of this tree (runs alternate, each in a child process)",
    )
    ap.add_argument(
        "--compare-batch",
        type=int,
        help="UIDs per FETCH for the --compare runs (default: --batch); with --compare . this "
        "compares two batch sizes of the same code",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one ingest for --compare: JSON in, JSON out
        job = json.loads(args.child)
        os.environ[PASSWORD_VAR] = job["password"]
        acct = ImapAccount(job["host"], job["port"], job["user"], job["password"])
        out = asyncio.run(run_helpdesk(job["url"], acct, job["batch"], None, job["ack"]))
        print(json.dumps(out))
        return

    DATA.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    raws = generate(args.messages)
    size = sum(len(r) for r in raws)
    print(f"generated {len(raws)} mails, {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s")
    results: dict[str, Any] = {
        "messages": len(raws),
        "bytes": size,
        "batch": args.batch,
        "ack": args.ack,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": {},
    }
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if args.compare:
        backends = [x for b in backends for x in (b, f"{b}@compare")]
    pg = None
    with DovecotServer() as dovecot:
        acct = dovecot.account()
        t0 = time.perf_counter()
        append_all(acct, "INBOX", raws)
        print(f"appended to Dovecot in {time.perf_counter() - t0:.1f}s")
        if "postgresql" in backends:
            pg = durable_postgres()
            pg.start()
        try:
            work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=DATA))
            for run in range(args.runs):
                order = list(backends) + ([] if args.no_mbsync else ["mbsync"])
                for what in order:
                    entry: dict[str, Any] = {"run": run, "load_before": load()}
                    if what == "mbsync":
                        busy0, idle0 = machine_cpu()
                        secs = run_mbsync(acct, work / "mbsync")
                        busy1, idle1 = machine_cpu()
                        entry.update(
                            seconds=secs,
                            count=mbsync_count(work / "mbsync"),
                            machine_cpu_s=round(busy1 - busy0, 2),
                            machine_busy=round(
                                (busy1 - busy0) / max(1e-9, busy1 - busy0 + idle1 - idle0), 3
                            ),
                        )
                    else:
                        if what.startswith("sqlite"):
                            url = f"sqlite+aiosqlite:///{work / f'store-{run}.db'}"
                        else:
                            assert pg is not None
                            url = pg.create_database()
                        prof = (
                            args.profile
                            if (args.profile and run == 0 and what == "sqlite")
                            else None
                        )
                        if args.compare:
                            tree = args.compare if what.endswith("@compare") else ROOT
                            batch = (
                                args.compare_batch or args.batch
                                if what.endswith("@compare")
                                else args.batch
                            )
                            entry.update(run_child(tree, url, acct, batch, args.ack))
                            entry["batch"] = batch
                        else:
                            entry.update(
                                asyncio.run(run_helpdesk(url, acct, args.batch, prof, args.ack))
                            )
                        if what.startswith("sqlite"):
                            for p in work.glob(f"store-{run}.db*"):
                                p.unlink()
                    entry["load_after"] = load()
                    entry["msg_per_s"] = len(raws) / entry["seconds"]
                    results["runs"].setdefault(what, []).append(entry)
                    print(
                        f"run {run} {what:10s} {entry['seconds']:7.1f}s "
                        f"{entry['msg_per_s']:7.0f} msg/s  load {entry['load_before']} -> "
                        f"{entry['load_after']}  {entry.get('totals') or entry.get('count')} "
                        f"cpu: main {entry.get('main_process_cpu_s')} workers {entry.get('worker_cpu_s')} "
                        f"machine {entry.get('machine_cpu_s')} busy {entry.get('machine_busy')} "
                        f"threads {entry.get('thread_cpu_s')}",
                        flush=True,
                    )
            if not args.no_offlineimap:
                entry = {"load_before": load()}
                try:
                    secs, n = run_offlineimap(acct, work / "offlineimap", args.offlineimap_timeout)
                    entry.update(seconds=secs, count=n, msg_per_s=n / secs)
                except (OSError, subprocess.SubprocessError) as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["load_after"] = load()
                results["runs"]["offlineimap"] = [entry]
                print(f"offlineimap {entry}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
        finally:
            if pg is not None:
                pg.close()
    summary: dict[str, Any] = {}
    for what, entries in results["runs"].items():
        rates = [e["msg_per_s"] for e in entries if "msg_per_s" in e]
        if rates:
            summary[what] = {"median_msg_per_s": statistics.median(rates), "all": rates}
    if "mbsync" in summary:
        mb = summary["mbsync"]["median_msg_per_s"]
        for what in summary:
            summary[what]["ratio_to_mbsync"] = summary[what]["median_msg_per_s"] / mb
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))
    if args.profile:
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
