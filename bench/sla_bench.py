#!/usr/bin/env python3
"""SLA recompute benchmark (issue 6): `store.sla.recompute_all` on a store, wall and CPU time.

    flock /work/bench.lock python bench/sla_bench.py --db bench/data/reports-1000000.db \\
        [--runs 3] [--reference /tmp/sla_head.py [--reference-bt /tmp/bt_head.py]] [--profile]

Uses the calendar and the two policies of ``bench/report_bench.py`` (``tag:vip``, then
everything; Mon-Fri 09:00-17:00 Europe/Riga with Latvian holidays; added once). Each run
empties ``ticket_sla`` and ``next_due_at`` (then checkpoints the WAL, so the timed part does
not pay for the deletion), times a recompute from scratch, then a refresh with nothing
changed. Time is wall-clock and CPU (user + system of this process, all threads: the
driver's thread included, plus the worker process when one ran), so a loaded machine shows
as wall >> CPU.

``--reference`` loads another version of ``store/sla.py`` (``git show HEAD:store/sla.py``)
as a separate module and alternates it with this tree's, run by run, for a before/after
ratio under the same load (``--reference-bt`` likewise for ``store/businesstime.py``).
``--profile`` prints a cProfile of one from-scratch run of this tree instead of timing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import json
import os
import pstats
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sqlalchemy import text  # noqa: E402

from store import sla  # noqa: E402
from store.engine import Database  # noqa: E402

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, once ended
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def _empty(db: Database) -> None:
    async with db.write() as s:
        await s.execute(text("DELETE FROM ticket_sla"))
        await s.execute(text("UPDATE tickets SET next_due_at = NULL WHERE next_due_at IS NOT NULL"))
    async with db.write() as s:
        pass
    conn = await db.engine.connect()
    try:
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await conn.close()


async def _timed(module: Any, db: Database, **kw: Any) -> dict[str, Any]:
    await _empty(db)
    out: dict[str, Any] = {}
    for case in ("scratch", "refresh"):
        w0, c0 = time.perf_counter(), _cpu()
        stats = await module.recompute_all(db, NOW, **kw)
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        out[case] = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "tickets": stats.tickets,
            "written": stats.changed,
            "load": round(os.getloadavg()[0], 2),
        }
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reference", type=Path, help="another store/sla.py to alternate with")
    ap.add_argument("--reference-bt", type=Path, help="another store/businesstime.py for it")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--batch", type=int, help="recompute_all's batch size (default: its own)")
    ap.add_argument(
        "--worker",
        choices=("auto", "yes", "no"),
        default="auto",
        help="this tree's worker process (auto: from 50,000 active tickets and 2 CPUs)",
    )
    ap.add_argument("--json", type=Path, help="write the samples here")
    args = ap.parse_args()

    import report_bench

    worker = {"auto": None, "yes": True, "no": False}[args.worker]

    db = Database(f"sqlite+aiosqlite:///{args.db}")
    try:
        await report_bench.ensure_policies(db)
        if args.profile:
            await _empty(db)
            prof = cProfile.Profile()
            prof.enable()
            stats = await sla.recompute_all(db, NOW)
            prof.disable()
            print(f"{stats.tickets:,} tickets")
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            return
        variants: list[tuple[str, Any]] = [("current", sla)]
        if args.reference:
            ref = _load(args.reference, "reference_sla")
            if args.reference_bt:
                ref.bt = _load(args.reference_bt, "reference_businesstime")
            variants.insert(0, ("reference", ref))
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
        for run in range(args.runs):
            for name, module in variants:
                kw: dict[str, Any] = {} if args.batch is None else {"batch": args.batch}
                if module is sla:
                    kw["worker"] = worker
                result = await _timed(module, db, **kw)
                samples[name].append(result)
                print(
                    f"run {run + 1} {name:9}: "
                    + "; ".join(
                        f"{case} {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, "
                        f"{r['tickets']:,} tickets, {r['written']:,} written, load {r['load']}"
                        for case, r in result.items()
                    ),
                    flush=True,
                )
        for name, runs in samples.items():
            for case in ("scratch", "refresh"):
                wall = statistics.median(r[case]["wall_s"] for r in runs)
                cpu = statistics.median(r[case]["cpu_s"] for r in runs)
                n = runs[0][case]["tickets"]
                print(
                    f"{name:9} {case}: median {wall:.2f} s wall ({n / wall:,.0f} tickets/s), "
                    f"{cpu:.2f} s CPU"
                )
        if args.json:
            args.json.write_text(json.dumps(samples, indent=1))
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
