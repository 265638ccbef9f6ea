#!/usr/bin/env python3
"""Check that two SLA recompute paths leave identical ``ticket_sla`` and ``next_due_at``.

    python bench/sla_check.py --db bench/data/reports-20000.db [--reference generic]
    python bench/sla_check.py --db ... --reference /tmp/sla_head.py [--reference-bt /tmp/bt_head.py]

Copies the store twice (the original is not touched), then on each copy runs the same
scenario with ``recompute_all``: from scratch, then status/priority/customer-reply changes
(pending, on-hold, reopen, solve) and recomputes at later moments, then a refresh with
nothing changed. One copy uses this tree's ``store.sla`` as it runs on SQLite (plain
tuples through the driver; ``--worker yes`` with part of each batch computed in the worker
process, as on large stores); the other the reference:

* ``generic`` (default): this tree's ORM/Core path (``driver=False``, what PostgreSQL runs);
* a path to another version of ``store/sla.py`` (e.g. ``git show HEAD:store/sla.py``),
  loaded as a separate module; ``--reference-bt`` likewise swaps in another
  ``store/businesstime.py`` for it.

Policies (added to both copies): ``tag:vip`` on a Riga calendar with Latvian holidays,
on-hold pausing; ``priority:urgent`` on a New York calendar with split hours; then every
ticket on the Riga calendar. Prints the row counts, the stats of each step, and the first
differences; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from store import sla  # noqa: E402
from store.engine import Database  # noqa: E402

STEPS: list[tuple[datetime, list[str]]] = [
    (datetime(2026, 11, 2, 10, 0, tzinfo=UTC), []),
    (
        datetime(2026, 11, 5, 15, 30, tzinfo=UTC),
        [
            "UPDATE tickets SET status = 'pending' WHERE id % 7 = 0"
            " AND status IN ('new', 'open', 'answered')",
            "UPDATE tickets SET status = 'on-hold' WHERE id % 11 = 0 AND status = 'open'",
            "UPDATE tickets SET priority = (priority + 1) % 4 WHERE id % 13 = 0",
            "UPDATE tickets SET last_customer_at = '2026-11-03 08:00:00.000000'"
            " WHERE id % 5 = 0 AND first_response_at IS NOT NULL"
            " AND status IN ('new', 'open', 'answered', 'pending', 'on-hold')",
        ],
    ),
    (
        datetime(2026, 11, 12, 9, 15, 30, 250000, tzinfo=UTC),
        [
            "UPDATE tickets SET status = 'open' WHERE id % 14 = 0 AND status = 'pending'",
            "UPDATE tickets SET status = 'answered' WHERE id % 22 = 0 AND status = 'on-hold'",
            "UPDATE tickets SET status = 'solved', solved_at = '2026-11-10 12:00:00.000000'"
            " WHERE id % 17 = 0 AND status IN ('new', 'open', 'answered')",
            "UPDATE tickets SET status = 'open' WHERE id % 19 = 0 AND status = 'solved'",
            "UPDATE tickets SET status = 'postponed' WHERE id % 23 = 0 AND status = 'open'",
        ],
    ),
    (datetime(2026, 11, 24, tzinfo=UTC), []),
    (datetime(2026, 11, 24, tzinfo=UTC), []),  # refresh, nothing changed
]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def _policies(db: Database) -> None:
    await sla.add_calendar(
        db, "check-riga", timezone="Europe/Riga", hours="mon-fri 09:00-17:00", country="LV"
    )
    await sla.add_calendar(
        db,
        "check-ny",
        timezone="America/New_York",
        hours="mon-fri 08:00-12:00,13:00-18:00; sat 10:00-14:00",
        country="US",
    )
    await sla.add_policy(
        db,
        "check-vip",
        calendar="check-riga",
        condition="tag:vip",
        pause_on_hold=True,
        targets=sla.parse_targets(
            first_response="urgent=30min,high=1h,normal=2h,low=4h",
            next_response="4h",
            resolution="24h",
        ),
        position=1,
    )
    await sla.add_policy(
        db,
        "check-urgent",
        calendar="check-ny",
        condition="priority:urgent",
        targets=sla.parse_targets(first_response="45min", next_response="90min", resolution="6h"),
        position=2,
    )
    await sla.add_policy(
        db,
        "check-rest",
        calendar="check-riga",
        targets=sla.parse_targets(
            first_response="urgent=1h,high=2h,normal=4h,low=8h",
            next_response="8h",
            resolution="40h",
        ),
        position=3,
    )


async def _run(path: Path, recompute: Any, label: str) -> tuple[list[Any], list[Any], list[str]]:
    db = Database(f"sqlite+aiosqlite:///{path}")
    log: list[str] = []
    try:
        async with db.write() as s:
            await s.execute(text("DELETE FROM ticket_sla"))
            await s.execute(text("DELETE FROM sla_policies"))
            await s.execute(text("DELETE FROM calendars"))
            await s.execute(text("UPDATE tickets SET next_due_at = NULL"))
        await _policies(db)
        for i, (now, changes) in enumerate(STEPS):
            if changes:
                async with db.write() as s:
                    for sql in changes:
                        await s.execute(text(sql))
            t0 = time.perf_counter()
            stats = await recompute(db, now)
            log.append(
                f"step {i} at {now:%Y-%m-%d %H:%M}: {stats.tickets} tickets, {stats.changed} "
                f"written, {len(stats.newly_breached)} newly breached "
                f"(sum of ids {sum(stats.newly_breached)})"
            )
            print(f"  {label}: {log[-1]} in {time.perf_counter() - t0:.1f} s", flush=True)
        async with db.read() as s:
            rows = list(
                (await s.execute(text("SELECT * FROM ticket_sla ORDER BY ticket_id"))).all()
            )
            dues = list(
                (await s.execute(text("SELECT id, next_due_at FROM tickets ORDER BY id"))).all()
            )
        return rows, dues, log
    finally:
        await db.dispose()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", type=Path, required=True, help="a SQLite store (copied, not changed)")
    ap.add_argument("--reference", default="generic", help="'generic' or a path to a sla.py")
    ap.add_argument("--reference-bt", type=Path, help="a businesstime.py for the reference")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument(
        "--worker",
        choices=("auto", "yes", "no"),
        default="auto",
        help="this tree's worker process (auto: from 50,000 active tickets)",
    )
    args = ap.parse_args()

    if args.reference == "generic":

        async def reference(db: Database, now: datetime) -> Any:
            return await sla.recompute_all(db, now, args.batch, driver=False)

    else:
        ref = _load(Path(args.reference), "reference_sla")
        if args.reference_bt:
            ref.bt = _load(args.reference_bt, "reference_businesstime")  # type: ignore[attr-defined]

        async def reference(db: Database, now: datetime) -> Any:
            return await ref.recompute_all(db, now, args.batch)

    worker = {"auto": None, "yes": True, "no": False}[args.worker]

    async def current(db: Database, now: datetime) -> Any:
        return await sla.recompute_all(db, now, args.batch, worker=worker)

    with tempfile.TemporaryDirectory(dir=args.db.parent) as tmp:
        copies = [Path(tmp) / "current.db", Path(tmp) / "reference.db"]
        for copy in copies:
            shutil.copyfile(args.db, copy)
        cur_rows, cur_dues, cur_log = await _run(copies[0], current, "current")
        ref_rows, ref_dues, ref_log = await _run(copies[1], reference, "reference")

    bad = 0
    if cur_log != ref_log:
        bad += 1
        print("step stats differ:", *ref_log, "vs", *cur_log, sep="\n  ")
    for what, a, b in (("ticket_sla", cur_rows, ref_rows), ("next_due_at", cur_dues, ref_dues)):
        if len(a) != len(b):
            bad += 1
            print(f"{what}: {len(a)} rows vs {len(b)} in the reference")
        diffs = [(x, y) for x, y in zip(a, b, strict=False) if tuple(x) != tuple(y)]
        bad += len(diffs)
        for x, y in diffs[:5]:
            print(f"{what} differs:\n  current   {tuple(x)}\n  reference {tuple(y)}")
        print(f"{what}: {len(a)} rows compared, {len(diffs)} differ")
    paused = sum(1 for r in cur_rows if r.paused_since is not None)
    with_pauses = sum(1 for r in cur_rows if r.pauses != "[]")
    nr = sum(1 for r in cur_rows if r.next_response_due is not None)
    print(f"coverage: {paused} paused now, {with_pauses} with a pause log, {nr} next-response dues")
    print("IDENTICAL" if not bad else f"DIFFERENT ({bad})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
