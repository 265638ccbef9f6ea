#!/usr/bin/env python3
"""Store benchmark (issues 2 and 8): seed N tickets, then time queue pages and full-text queries.

    python bench/store_bench.py --tickets 1000000 --backend sqlite|postgresql|both

What it measures, per backend:
  * seeding time (``store.demo.seed_demo``: batched Core inserts) and ANALYZE time;
  * queue page ``status:open assignee:me`` in ``updated`` order, 50 rows: first pages and
    next pages (keyset cursors at varying depths) for every agent as "me";
  * the same queue in the "what to do next" order (``order='next'``);
  * full-text queries of 1-3 words (common, medium, rare, no-match) in recency order;
  * database size.

Latencies are wall-clock per ``list_page`` call including parse + compile + a fresh
read session (what the console and CLI pay), in ms; p50/p95 over many samples after a
warm-up. Generated databases live in ``bench/data/`` (gitignored); ``--reuse`` keeps and
re-uses a database seeded by an earlier run with the same ticket count (seeding figures
then come from the stored metadata of that run).

PostgreSQL: a throwaway cluster is created in ``bench/data/pg-<N>/`` from Debian's
binaries (``/usr/lib/postgresql/*/bin``), listening on 127.0.0.1 on a free port with
trust auth, and stopped at exit (deleted too unless ``--reuse``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, select, text  # noqa: E402

from store.engine import Database  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.models import Agent, Ticket  # noqa: E402
from store.service import SYSTEM, Service  # noqa: E402

DATA = ROOT / "bench" / "data"
ME = "benchme"  # the "current Unix user" agent seed_demo adds

#: Full-text queries: (label, query). Frequencies are reported from the data at run time.
FTS_QUERIES: list[tuple[str, str]] = [
    ("common 1w", "printer"),
    ("common 1w", "invoice"),
    ("common 1w", "thanks"),
    ("common 1w (ru)", "принтер"),
    ("medium 1w (lv)", "rēķinā"),
    ("medium 1w (ar)", "الدخول"),
    ("common 2w", "printer floor"),
    ("common 2w", "vpn log"),
    ("common 3w", "account locked password"),
    ("common 3w", "vendor waiting answer"),
    ("rare 1w", "kerberos"),
    ("rare 1w", "thermostat"),
    ("rare 2w", "kerberos ticket"),
    ("rare 3w", "thermostat broken again"),
    ("phrase", '"paper tray"'),
    ("no-match 1w", "zanzibar"),
    ("disjoint 2w (0 hits)", "printer invoice"),
    ("disjoint 3w (0 hits)", "vpn invoice laptop"),
]
#: Rare words are not in the demo vocabulary: the bench adds notes holding them.
RARE_NOTES = [
    ("kerberos", 40, "The Kerberos ticket expired; renewed it with kinit."),
    ("thermostat", 8, "The thermostat in room 4 is broken again, sent facilities."),
]


def pct(values: list[float], p: float) -> float:
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(pct(values, 50), 3),
        "p95": round(pct(values, 95), 3),
        "max": round(max(values), 3) if values else float("nan"),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
    }


# --- PostgreSQL cluster ------------------------------------------------------------------


def pg_bin_dir() -> Path:
    env = os.environ.get("HELPDESK_PG_BIN")
    cands = [Path(env)] if env else []
    cands += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0),
        reverse=True,
    )
    for c in cands:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise SystemExit("PostgreSQL binaries not found (apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    root: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self.bin = pg_bin_dir()
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", TZ="UTC")
        return subprocess.run(cmd, check=check, capture_output=True, text=True, env=env, cwd="/")

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.sock.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth", "trust",
            "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        self.port = free_port()
        opts = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.sock),
            **self.settings,
        }
        o = " ".join(f"-c {k}={v}" for k, v in opts.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", o, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def psql(self, sql: str, db: str = "postgres") -> str:
        res = self._run(
            "psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", "-d", db, "-c", sql,
        )  # fmt: skip
        return res.stdout.strip()

    def url(self, db: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{db}"


# --- seeding -----------------------------------------------------------------------------


def meta_path(backend: str, tickets: int) -> Path:
    return DATA / f"{backend}-{tickets}.meta.json"


def use_table_inserts() -> None:
    """Make store.demo insert via Core ``insert(Table)`` instead of ``insert(OrmEntity)``.

    With an ORM entity SQLAlchemy takes the ORM bulk path, which groups consecutive rows by
    the set of non-None keys; demo rows alternate None/non-None columns (delivery_status,
    solved_at, ...) so it ends up executing ~1 statement per row (~1,000 tickets/s on
    SQLite). ``insert(Model.__table__)`` is one executemany per batch, same rows.
    """
    import sqlalchemy

    import store.demo

    store.demo.insert = lambda entity: sqlalchemy.insert(getattr(entity, "__table__", entity))  # type: ignore[assignment]


async def seed(
    db: Database, tickets: int, backend: str, table_inserts: bool = False
) -> dict[str, Any]:
    from store.demo import seed_demo

    if table_inserts:
        use_table_inserts()

    t0 = time.perf_counter()
    await upgrade(db)
    t_schema = time.perf_counter() - t0
    service = Service(db)
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 15 or done == total:
            last[0] = now
            print(f"  [{backend}] seeded {done:,}/{total:,} ({now - t0:.0f}s)", flush=True)

    t1 = time.perf_counter()
    await seed_demo(service, tickets=tickets, me=ME, progress=progress)
    t_seed = time.perf_counter() - t1
    # A few rare words (not in the demo vocabulary) through the ordinary service path.
    rnd = random.Random(7)
    async with db.read() as s:
        lo, hi = (
            (await s.execute(select(Ticket.number).order_by(Ticket.number).limit(1))).scalar(),
            (
                await s.execute(select(Ticket.number).order_by(Ticket.number.desc()).limit(1))
            ).scalar(),
        )
    for _word, n, body in RARE_NOTES:
        for _ in range(n):
            await service.add_note(SYSTEM, rnd.randint(lo, hi), body)
    t2 = time.perf_counter()
    if db.is_sqlite:
        path = db.engine.url.database
        await db.dispose()
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("ANALYZE")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    else:
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
    t_analyze = time.perf_counter() - t2
    return {
        "tickets": tickets,
        "seeder": "seed_demo with insert(Model.__table__)"
        if table_inserts
        else "seed_demo (as shipped)",
        "schema_s": round(t_schema, 2),
        "seed_s": round(t_seed, 1),
        "analyze_s": round(t_analyze, 1),
        "seeded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- measuring ---------------------------------------------------------------------------


class SqlCapture:
    """Remember the last SQL statement (with parameters) the engine ran, for EXPLAIN."""

    def __init__(self, db: Database) -> None:
        self.last: tuple[str, Any] | None = None
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._hook)

    def _hook(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        # the list query itself (the follow-up tags query has no LIMIT)
        if statement.lstrip().upper().startswith("SELECT") and "LIMIT" in statement.upper():
            self.last = (statement, params)


async def explain(db: Database, stmt: str, params: Any) -> str:
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        drv = raw.driver_connection
        if db.is_sqlite:
            cur = await drv.execute("EXPLAIN QUERY PLAN " + stmt, params)
            rows = await cur.fetchall()
            return "\n".join(f"{r[1]:>3} {r[3]}" for r in rows)
        rows = await drv.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + stmt, *(params or ()))
        return "\n".join(r[0] for r in rows)


async def measure(db: Database, args: argparse.Namespace) -> dict[str, Any]:
    from store import listing
    from store.query import QueryContext, compile_where, parse

    dialect = db.dialect
    now = datetime.now(UTC)
    async with db.read() as s:
        agents = list((await s.execute(select(Agent.id, Agent.login).order_by(Agent.id))).all())
    cap = SqlCapture(db)
    out_load = {"loadavg_before": os.getloadavg()}
    rnd = random.Random(1)
    out: dict[str, Any] = {"queries": {}, **out_load}

    async def page(q: str, me: int | None, order: str, after: Any = None) -> tuple[float, Any]:
        t0 = time.perf_counter()
        where = compile_where(parse(q), QueryContext(me_agent_id=me, now=now, dialect=dialect))
        async with db.read() as session:
            p = await listing.list_page(session, where, order=order, after=after, limit=50)
        return (time.perf_counter() - t0) * 1000, p

    # -- queue pages: status:open assignee:me, in 'updated' and 'next' order
    for order in () if args.skip_queue else ("updated", "next"):
        q = "status:open assignee:me"
        cursors: list[tuple[int, int, Any]] = []  # (agent, depth, cursor for page depth+1)
        for aid, _login in agents:
            cur = None
            for depth in range(args.depth):
                _ms, p = await page(q, aid, order, cur)
                if not p.next_cursor or not p.rows:
                    break
                cur = p.next_cursor
                cursors.append((aid, depth + 1, cur))
        for _ in range(args.warmup):
            await page(q, rnd.choice(agents)[0], order)
        first, nxt = [], []
        for i in range(args.samples):
            aid = agents[i % len(agents)][0]
            ms, p = await page(q, aid, order)
            assert len(p.rows) == 50, f"{order}: only {len(p.rows)} rows"
            first.append(ms)
            a2, depth, c = rnd.choice(cursors)
            ms, p = await page(q, a2, order, c)
            nxt.append(ms)
        plan = await explain(db, *cap.last) if cap.last else ""
        out["queries"][f"queue {order}"] = {
            "query": q,
            "order": order,
            "first": summary(first),
            "next": summary(nxt),
            "all": summary(first + nxt),
            "max_depth": max(d for _, d, _ in cursors) if cursors else 0,
            "plan_next_page": plan,
        }
        print(f"  [{dialect}] queue {order}: {out['queries'][f'queue {order}']['all']}", flush=True)

    # -- full text, recency order ('updated'), first page + next page
    fts: dict[str, Any] = {}
    all_first, all_next = [], []
    me = agents[-1][0]
    for label, q in FTS_QUERIES:
        for _ in range(max(2, args.warmup // 10)):
            await page(q, me, "updated")
        first, nxt = [], []
        _ms, p0 = await page(q, me, "updated")
        for _ in range(args.fts_samples):
            ms, p = await page(q, me, "updated")
            first.append(ms)
            if p.next_cursor and p.rows:
                ms, _ = await page(q, me, "updated", p.next_cursor)
                nxt.append(ms)
        plan = await explain(db, *cap.last) if cap.last else ""
        fts[q] = {
            "label": label,
            "rows_first_page": len(p0.rows),
            "first": summary(first),
            "next": summary(nxt) if nxt else None,
            "plan": plan,
        }
        all_first += first
        all_next += nxt
        print(f"  [{dialect}] fts {q!r} ({label}): first {fts[q]['first']}", flush=True)
    out["fts"] = fts
    out["loadavg_after"] = os.getloadavg()
    out["queries"]["full-text (all queries)"] = {
        "first": summary(all_first),
        "next": summary(all_next),
        "all": summary(all_first + all_next),
    }
    # matching-ticket counts (informational, untimed)
    for q in fts:
        where = compile_where(parse(q), QueryContext(me_agent_id=me, now=now, dialect=dialect))
        async with db.read() as s:
            fts[q]["matching_tickets"] = int(
                (
                    await s.execute(select(text("count(*)")).select_from(Ticket).where(where))
                ).scalar_one()
            )
    return out


# --- per-backend driver ------------------------------------------------------------------


async def timed_upgrade(db: Database) -> float:
    """Bring a reused store to the current schema (e.g. a new search index); seconds taken."""
    t0 = time.perf_counter()
    await upgrade(db)
    took = round(time.perf_counter() - t0, 1)
    print(f"  upgraded the schema in {took}s", flush=True)
    return took


async def run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    path = args.sqlite_path or DATA / f"store-{args.tickets}.db"
    mp = meta_path("sqlite", args.tickets)
    res: dict[str, Any] = {"backend": "sqlite", "sqlite_version": sqlite3.sqlite_version}
    if not (args.reuse and path.exists() and mp.exists()):
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
        db = Database(f"sqlite:///{path}")
        try:
            meta = await seed(db, args.tickets, "sqlite", args.table_inserts)
        finally:
            await db.dispose()
        mp.write_text(json.dumps(meta, indent=1))
    res["seed"] = json.loads(mp.read_text())
    if args.upgrade:
        db = Database(f"sqlite:///{path}")
        try:
            res["upgrade_s"] = await timed_upgrade(db)
        finally:
            await db.dispose()
    res["db_bytes"] = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    res["db_path"] = str(path)
    if args.seed_only:
        return res
    db = Database(f"sqlite:///{path}")
    try:
        res.update(await measure(db, args))
    finally:
        await db.dispose()
    return res


async def run_pg(args: argparse.Namespace) -> dict[str, Any]:
    root = DATA / f"pg-{args.tickets}"
    mp = meta_path("postgresql", args.tickets)
    settings = {"shared_buffers": args.pg_shared_buffers}
    cluster = PgCluster(root, settings)
    reuse = args.reuse and cluster.initialised and mp.exists()
    if not reuse:
        mp.unlink(missing_ok=True)
        cluster.init()
    cluster.start()
    try:
        if not reuse:
            cluster.psql("CREATE DATABASE helpdesk")
        res: dict[str, Any] = {
            "backend": "postgresql",
            "pg_version": cluster.psql("SHOW server_version"),
            "pg_settings": {
                k: cluster.psql(f"SHOW {k}")
                for k in ("shared_buffers", "work_mem", "effective_cache_size", "fsync", "jit")
            },
        }
        url = cluster.url("helpdesk")
        if not reuse:
            db = Database(url)
            try:
                meta = await seed(db, args.tickets, "postgresql", args.table_inserts)
            finally:
                await db.dispose()
            mp.write_text(json.dumps(meta, indent=1))
        res["seed"] = json.loads(mp.read_text())
        if args.upgrade:
            db = Database(url)
            try:
                res["upgrade_s"] = await timed_upgrade(db)
            finally:
                await db.dispose()
        res["db_bytes"] = int(cluster.psql("SELECT pg_database_size('helpdesk')"))
        if not args.seed_only:
            db = Database(url)
            try:
                res.update(await measure(db, args))
            finally:
                await db.dispose()
        return res
    finally:
        cluster.stop()
        if not args.reuse:
            shutil.rmtree(root, ignore_errors=True)
            mp.unlink(missing_ok=True)


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    ap.add_argument(
        "--samples", type=int, default=200, help="queue-page samples (each: first + next page)"
    )
    ap.add_argument("--fts-samples", type=int, default=20, help="samples per full-text query")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument(
        "--depth", type=int, default=20, help="deepest queue page to sample cursors from"
    )
    ap.add_argument(
        "--reuse", action="store_true", help="keep/re-use seeded databases in bench/data/"
    )
    ap.add_argument("--seed-only", action="store_true")
    ap.add_argument(
        "--upgrade",
        action="store_true",
        help="with --reuse: run the schema migrations on the reused store first (timed)",
    )
    ap.add_argument("--skip-queue", action="store_true", help="measure only the full-text queries")
    ap.add_argument(
        "--table-inserts",
        action="store_true",
        help="seed with insert(Model.__table__) instead of insert(Model) (the suggested fix; see README)",
    )
    ap.add_argument("--pg-shared-buffers", default="1GB")
    ap.add_argument(
        "--sqlite-path",
        type=Path,
        help="SQLite file to use (with --reuse: e.g. a copy with an extra index)",
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="only print Markdown tables of a results JSON")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    # SIGTERM -> SystemExit, so the PostgreSQL cluster is stopped by the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    DATA.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/store_bench.py " + " ".join(sys.argv[1:]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "backends": [],
    }
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for b in backends:
        print(f"== {b}, {args.tickets:,} tickets", flush=True)
        r = asyncio.run(run_sqlite(args) if b == "sqlite" else run_pg(args))
        results["backends"].append(r)
        print_summary(r)
    out = args.out or DATA / f"results-{args.backend}-{args.tickets}.json"
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(markdown(results))
    print(f"results: {out}")


def markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables (pasted into bench/RESULTS.md)."""
    bs = results["backends"]
    head = "| | " + " | ".join(b["backend"] for b in bs) + " |\n|---|" + "---|" * len(bs) + "\n"
    lines = [head.rstrip("\n")]

    def row(label: str, f: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(f(b) for b in bs) + " |")

    row("seed (s)", lambda b: f"{b['seed']['seed_s']:.0f}")
    row("ANALYZE (s)", lambda b: f"{b['seed']['analyze_s']:.0f}")
    row("database size", lambda b: f"{b['db_bytes'] / 2**30:.2f} GiB")
    for name in ("queue updated", "queue next", "full-text (all queries)"):
        for part in ("first", "next", "all"):
            row(
                f"{name}: {part} p50 / p95 (ms)",
                lambda b, n=name, p=part: (
                    f"{b['queries'][n][p]['p50']:.1f} / {b['queries'][n][p]['p95']:.1f}"
                    if n in b.get("queries", {})
                    else "-"
                ),
            )
    lines.append("")
    lines.append(
        "| full-text query | kind | "
        + " | ".join(f"{b['backend']} hits, first p50 / p95, next p95 (ms)" for b in bs)
        + " |"
    )
    lines.append("|---|---|" + "---|" * len(bs))
    for q, f0 in bs[0].get("fts", {}).items():
        cells = []
        for b in bs:
            f = b.get("fts", {}).get(q)
            if not f:
                cells.append("-")
                continue
            nx = f"{f['next']['p95']:.1f}" if f.get("next") else "-"
            cells.append(
                f"{f.get('matching_tickets', '?'):,} · {f['first']['p50']:.1f} / {f['first']['p95']:.1f} · {nx}"
            )
        lines.append(f"| `{q}` | {f0['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_summary(r: dict[str, Any]) -> None:
    s = r["seed"]
    print(
        f"{r['backend']}: seed {s['seed_s']}s (+analyze {s['analyze_s']}s), "
        f"size {r['db_bytes'] / 2**30:.2f} GiB"
    )
    for name, q in r.get("queries", {}).items():
        parts = [
            f"{k} p50 {q[k]['p50']:.2f} / p95 {q[k]['p95']:.2f} ms"
            for k in ("first", "next", "all")
            if q.get(k)
        ]
        print(f"  {name}: " + "; ".join(parts))
    for q, f in r.get("fts", {}).items():
        nx = f"; next p95 {f['next']['p95']:.2f}" if f.get("next") else ""
        print(
            f"  fts {q!r:32} {f['label']:22} hits {f.get('matching_tickets', '?'):>8} "
            f"first p50 {f['first']['p50']:.2f} / p95 {f['first']['p95']:.2f} ms{nx}"
        )


if __name__ == "__main__":
    main()
