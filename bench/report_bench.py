#!/usr/bin/env python3
"""Report benchmark (issue 6): a full `helpdesk report` for a year on a 1,000,000-ticket store.

    python bench/report_bench.py [--tickets 1000000] [--db PATH] [--runs 3] [--seed-only]
                                 [--skip-reports] [--skip-sla]

1. Builds the store (unless `--db PATH` names one that already has tickets): a migrated
   SQLite file seeded by ``store.demo.seed_demo`` (several minutes for 1,000,000 tickets).
2. ``seed_demo`` writes no audit rows, so the script adds the ones a real store would have
   (once; skipped when the store already has ``created`` audit rows), with plain
   ``INSERT ... SELECT`` statements: a ``created`` row per ticket; for every solved/closed
   ticket an ``open -> solved`` status row at ``solved_at`` and for closed ones a
   ``solved -> closed`` row at ``closed_at``; for every 20th solved/closed ticket an earlier
   solve and a reopen (``solved -> open``) in between; and for every 10th solved/closed
   ticket a CSAT rating (``action='csat'``, ``new_value`` 1-5). Then ``ANALYZE``.
3. Times ``store.reports.build_report`` for the year before "now" (now = the day after the
   newest ticket), a fresh read each call, median of `--runs` (3) after one warm-up:
   whole team in wall-clock hours (the benchmark target: under 5 s), whole team in
   business hours (a Mon-Fri 09:00-17:00 Europe/Riga calendar), and one queue.
4. Times ``store.sla.recompute_all`` (what ``helpdesk sla recompute`` runs; target under
   60 s): adds a calendar and two policies once (``tag:vip``, then everything), then per
   run empties ``ticket_sla`` / ``next_due_at`` and recomputes every active ticket from
   scratch (median of `--runs`, tickets/s); then one refresh with nothing changed.
   ``--skip-reports`` / ``--skip-sla`` time one part only.

Results are printed (and written as JSON to ``bench/data/report-<N>.json``); they are not
added to RESULTS.md by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402

from store.engine import Database  # noqa: E402
from store.migrate import current_revision, head_revision, upgrade  # noqa: E402
from store.models import AuditEvent, Ticket  # noqa: E402
from store.service import Service  # noqa: E402

DATA = ROOT / "bench" / "data"
SEED_NOW = datetime(2026, 11, 1, tzinfo=UTC)

AUDIT_SQL = [
    # every ticket was created
    """INSERT INTO audit_events (ticket_id, actor, action, field, old_value, new_value, created_at)
       SELECT id, 'mail:sync', 'created', NULL, NULL, '#' || number, created_at FROM tickets""",
    # every 20th solved/closed ticket: solved half-way, reopened at three quarters
    """INSERT INTO audit_events (ticket_id, actor, action, field, old_value, new_value, created_at)
       SELECT id, 'agent:anna', 'status', 'status', 'answered', 'solved',
              strftime('%Y-%m-%d %H:%M:%S',
                       julianday(created_at) + (julianday(solved_at) - julianday(created_at)) / 2)
       FROM tickets WHERE status IN ('solved', 'closed') AND id % 20 = 0""",
    """INSERT INTO audit_events (ticket_id, actor, action, field, old_value, new_value, created_at)
       SELECT id, 'mail:sync', 'status', 'status', 'solved', 'open',
              strftime('%Y-%m-%d %H:%M:%S',
                       julianday(created_at) + (julianday(solved_at) - julianday(created_at)) * 3 / 4)
       FROM tickets WHERE status IN ('solved', 'closed') AND id % 20 = 0""",
    # the (final) solve of every solved/closed ticket
    """INSERT INTO audit_events (ticket_id, actor, action, field, old_value, new_value, created_at)
       SELECT id, 'agent:anna', 'status', 'status', 'open', 'solved', solved_at
       FROM tickets WHERE status IN ('solved', 'closed')""",
    """INSERT INTO audit_events (ticket_id, actor, action, field, old_value, new_value, created_at)
       SELECT id, 'system:helpdesk', 'auto-closed', 'status', 'solved', 'closed', closed_at
       FROM tickets WHERE status = 'closed'""",
    # a CSAT rating on every 10th solved/closed ticket
    """INSERT INTO audit_events (ticket_id, actor, action, field, old_value, new_value, created_at)
       SELECT id, 'mail:sync', 'csat', 'csat', NULL, CAST(1 + (id * 7) % 5 AS TEXT), solved_at
       FROM tickets WHERE status IN ('solved', 'closed') AND id % 10 = 3""",
]


def _progress(done: int, total: int) -> None:
    if done % 50_000 == 0 or done == total:
        print(f"  seeded {done:,}/{total:,}", flush=True)


async def build_store(db: Database, tickets: int) -> dict[str, float]:
    """Seed an empty store if needed and add the audit rows; returns timings."""
    times: dict[str, float] = {}
    before = await current_revision(db)
    t0 = time.perf_counter()
    await upgrade(db)
    if before is not None and before != head_revision():
        # An existing store brought up to date (e.g. 0007's report indexes): timed.
        times[f"upgrade_{before}_to_{head_revision()}_s"] = round(time.perf_counter() - t0, 1)
    async with db.read() as s:
        have = int((await s.execute(select(func.count()).select_from(Ticket))).scalar_one())
    if have == 0:
        print(f"seeding {tickets:,} tickets with store.demo.seed_demo (slow) ...", flush=True)
        from store.demo import seed_demo

        t0 = time.perf_counter()
        await seed_demo(
            Service(db, clock=lambda: SEED_NOW),
            tickets=tickets,
            me="benchme",
            now=SEED_NOW,
            progress=_progress,
        )
        times["seed_s"] = round(time.perf_counter() - t0, 1)
    async with db.read() as s:
        created_rows = int(
            (
                await s.execute(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.action == "created")
                )
            ).scalar_one()
        )
    if created_rows == 0:
        print("adding audit rows (created, status changes, reopens, CSAT) ...", flush=True)
        t0 = time.perf_counter()
        async with db.write() as s:
            for sql in AUDIT_SQL:
                await s.execute(text(sql))
        times["audit_s"] = round(time.perf_counter() - t0, 1)
    if db.is_sqlite and ("seed_s" in times or "audit_s" in times):
        t0 = time.perf_counter()
        async with db.write() as s:
            await s.execute(text("ANALYZE"))
        times["analyze_s"] = round(time.perf_counter() - t0, 1)
    return times


async def time_reports(db: Database, runs: int) -> dict[str, Any]:
    from store import businesstime as bt
    from store.reports import ReportFilter, build_report

    async with db.read() as s:
        newest = (await s.execute(select(func.max(Ticket.created_at)))).scalar_one()
        n_tickets = int((await s.execute(select(func.count()).select_from(Ticket))).scalar_one())
        n_audit = int((await s.execute(select(func.count()).select_from(AuditEvent))).scalar_one())
        queue = (await s.execute(text("SELECT name FROM queues ORDER BY id LIMIT 1"))).scalar()
    now = datetime(newest.year, newest.month, newest.day, tzinfo=UTC) + timedelta(days=1)
    year = ReportFilter(since=now - timedelta(days=365), until=now, queue=None, agent=None)
    riga = bt.Calendar.build(timezone="Europe/Riga", hours="mon-fri 09:00-17:00", name="riga")
    cases: list[tuple[str, ReportFilter, bt.Calendar | None]] = [
        ("year, all, wall-clock hours", year, None),
        ("year, all, business hours (Europe/Riga)", year, riga),
        (
            f"year, queue {queue!r}",
            ReportFilter(since=year.since, until=year.until, queue=queue, agent=None),
            None,
        ),
    ]
    out: dict[str, Any] = {
        "tickets": n_tickets,
        "audit_rows": n_audit,
        "now": now.isoformat(),
        "cases": {},
    }
    for label, flt, cal in cases:
        await build_report(db, flt, now=now, calendar=cal)  # warm-up (page cache)
        samples = []
        report = None
        for _ in range(runs):
            t0 = time.perf_counter()
            report = await build_report(db, flt, now=now, calendar=cal)
            samples.append(time.perf_counter() - t0)
        assert report is not None
        med = statistics.median(samples)
        out["cases"][label] = {
            "median_s": round(med, 3),
            "samples_s": [round(x, 3) for x in samples],
            "created": report.overall.created,
            "solved": report.overall.solved,
        }
        print(
            f"{label:45s} median {med:6.2f} s  (runs: "
            + ", ".join(f"{x:.2f}" for x in samples)
            + f"; created {report.overall.created:,}, solved {report.overall.solved:,})",
            flush=True,
        )
    return out


async def ensure_policies(db: Database) -> None:
    """The benchmark's calendar and two SLA policies (added once)."""
    from store import sla

    if not await sla.list_calendars(db):
        await sla.add_calendar(
            db, "bench-riga", timezone="Europe/Riga", hours="mon-fri 09:00-17:00", country="LV"
        )
    have = {p.name for p, _ in await sla.list_policies(db)}
    if "vip" not in have:
        await sla.add_policy(
            db,
            "vip",
            calendar="bench-riga",
            condition="tag:vip",
            targets=sla.parse_targets(
                first_response="urgent=30min,high=1h,normal=2h,low=4h",
                next_response="4h",
                resolution="24h",
            ),
            position=10,
        )
    if "standard" not in have:
        await sla.add_policy(
            db,
            "standard",
            calendar="bench-riga",
            targets=sla.parse_targets(
                first_response="urgent=1h,high=2h,normal=4h,low=8h",
                next_response="8h",
                resolution="40h",
            ),
            position=20,
        )


async def time_sla(db: Database, runs: int) -> dict[str, Any]:
    """Time `store.sla.recompute_all` (what `helpdesk sla recompute` runs) from scratch.

    Adds a calendar (Mon-Fri 09:00-17:00 Europe/Riga, Latvian holidays) and two policies
    once (VIP-tagged tickets, then everything else) with first-response, next-response and
    resolution targets. Each run first empties ``ticket_sla`` and ``next_due_at`` so that
    every active ticket is computed and written again; then one more run with nothing
    changed (the daemon's periodic refresh) is timed.
    """
    from store import sla

    await ensure_policies(db)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    samples: list[float] = []
    stats: Any = None
    for _ in range(runs):
        async with db.write() as s:
            await s.execute(text("DELETE FROM ticket_sla"))
            await s.execute(
                text("UPDATE tickets SET next_due_at = NULL WHERE next_due_at IS NOT NULL")
            )
        t0 = time.perf_counter()
        stats = await sla.recompute_all(db, now)
        samples.append(time.perf_counter() - t0)
        print(
            f"SLA recompute from scratch: {samples[-1]:6.2f} s, {stats.tickets:,} active tickets "
            f"({stats.tickets / samples[-1]:,.0f}/s)",
            flush=True,
        )
    t0 = time.perf_counter()
    again = await sla.recompute_all(db, now)
    refresh = time.perf_counter() - t0
    print(f"SLA refresh, nothing changed: {refresh:6.2f} s ({again.changed:,} rows written)")
    med = statistics.median(samples)
    return {
        "median_s": round(med, 3),
        "samples_s": [round(x, 3) for x in samples],
        "tickets": stats.tickets,
        "tickets_per_s": round(stats.tickets / med),
        "refresh_s": round(refresh, 3),
        "refresh_written": again.changed,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, help="SQLite file to build or reuse")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed-only", action="store_true")
    ap.add_argument("--skip-reports", action="store_true", help="time the SLA recompute only")
    ap.add_argument("--skip-sla", action="store_true", help="time the reports only")
    args = ap.parse_args()
    path: Path = args.db or DATA / f"reports-{args.tickets}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        result: dict[str, Any] = {"db": str(path), "build": await build_store(db, args.tickets)}
        if result["build"]:
            print("build:", result["build"], flush=True)
        if not args.seed_only:
            if not args.skip_reports:
                result.update(await time_reports(db, args.runs))
            if not args.skip_sla:
                result["sla_recompute"] = await time_sla(db, args.runs)
            out = DATA / f"report-{result.get('tickets', args.tickets)}.json"
            out.write_text(json.dumps(result, indent=1))
            print(f"written {out}")
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
