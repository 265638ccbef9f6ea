"""Eight processes writing the same tickets of one SQLite file (the store issue's concurrency test).

No 'database is locked' (or any other unexpected error) may escape, every lost race must be a
ConflictError, and the audit log must account for every successful write.
HELPDESK_CONCURRENCY_SECONDS shortens the run locally (default 20 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from store.engine import Database
from store.migrate import upgrade
from store.models import AuditEvent, Tag, Ticket, TicketTag
from store.service import Actor, ArticleInput, Service

WORKERS = 8
TICKETS = 10
WORKER = Path(__file__).with_name("concurrency_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _seconds() -> float:
    return float(os.environ.get("HELPDESK_CONCURRENCY_SECONDS", "20"))


async def _seed(url: str) -> list[int]:
    from store.models import ArticleKind

    db = Database(url)
    try:
        await upgrade(db)
        service = Service(db)
        for i in range(WORKERS):
            await service.add_agent(f"w{i}", f"Worker {i}")
        boss = await service.agent("w0")
        actor = Actor("agent", boss.login, boss.id)
        numbers = []
        for i in range(TICKETS):
            t = await service.create_ticket(
                actor,
                subject=f"Contended ticket {i}",
                customer_email=f"c{i}@example.com",
                article=ArticleInput(kind=ArticleKind.PHONE, body="hello"),
            )
            numbers.append(t.number)
        return numbers
    finally:
        await db.dispose()


async def _final_state(url: str) -> dict[str, Any]:
    db = Database(url)
    try:
        async with db.read() as s:
            versions = dict((await s.execute(select(Ticket.number, Ticket.version))).all())
            audit_rows = (
                await s.execute(
                    select(Ticket.number, AuditEvent.actor, AuditEvent.action)
                    .join(Ticket, Ticket.id == AuditEvent.ticket_id)
                    .where(AuditEvent.field == "tags")
                )
            ).all()
            hot = set(
                (
                    await s.execute(
                        select(Ticket.number)
                        .join(TicketTag, TicketTag.ticket_id == Ticket.id)
                        .join(Tag, Tag.id == TicketTag.tag_id)
                        .where(Tag.name == "hot")
                    )
                ).scalars()
            )
            other_audit = (
                await s.execute(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.ticket_id.is_not(None), AuditEvent.action != "created")
                    .where(AuditEvent.field.is_(None) | (AuditEvent.field != "tags"))
                )
            ).scalar_one()
        return {"versions": versions, "audit": audit_rows, "hot": hot, "other_audit": other_audit}
    finally:
        await db.dispose()


@pytest.mark.slow
def test_eight_processes_updating_the_same_tickets_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    numbers = asyncio.run(_seed(url))
    seconds = _seconds()
    start_at = time.time() + 3.0  # every worker has imported and connected by then
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, f"w{i}", str(seconds), str(start_at)]
            + [str(n) for n in numbers],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(WORKERS)
    ]
    reports: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=seconds + 240)
        if p.returncode != 0 or not out.strip():
            problems.append(f"worker w{i} exited {p.returncode}:\n{err[-3000:]}")
            continue
        if "Traceback" in err or "database is locked" in err:
            problems.append(f"worker w{i} stderr:\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert not problems, "\n".join(problems)

    # no 'database is locked' or any other unexpected exception escaped in any worker
    errors = [e for r in reports for e in r["errors"]]
    locked = [e for e in errors if "database is locked" in e]
    assert not locked, f"{len(locked)} 'database is locked' errors, e.g.:\n{locked[0]}"
    assert not errors, f"{len(errors)} unexpected errors, e.g.:\n{errors[0]}"

    # every lost race was reported as a ConflictError naming the newer version ...
    assert not [c for r in reports for c in r["odd_conflicts"]]
    # ... and no write based on a stale read was applied silently
    assert not [x for r in reports for x in r["lost_updates"]]

    successes: Counter[int] = Counter()
    per_worker: Counter[str] = Counter()
    for r in reports:
        for n, count in r["successes"].items():
            successes[int(n)] += count
            per_worker[f"agent:{r['login']}"] += count
    total = sum(successes.values())
    conflicts = sum(r["conflicts"] for r in reports)
    assert total > 0, "no write succeeded at all"
    assert all(per_worker[f"agent:w{i}"] > 0 for i in range(WORKERS)), per_worker
    if seconds >= 10:
        assert conflicts > 0, "8 writers racing on 10 tickets for 10+ s should see conflicts"

    state = asyncio.run(_final_state(url))
    # the audit log accounts for every successful write: one 'tags' row each, by its author
    audit_per_ticket = Counter(n for n, _actor, _action in state["audit"])
    audit_per_actor = Counter(actor for _n, actor, _action in state["audit"])
    assert len(state["audit"]) == total, (len(state["audit"]), total)
    assert dict(audit_per_ticket) == {n: c for n, c in successes.items() if c}
    assert dict(audit_per_actor) == {k: v for k, v in per_worker.items() if v}
    assert state["other_audit"] == 0, "only tag changes were made"
    # versions: 1 at creation, + 1 per successful write
    assert state["versions"] == {n: 1 + successes[n] for n in numbers}
    # each success toggled the tag: an odd number of writes leaves it on
    assert state["hot"] == {n for n in numbers if successes[n] % 2 == 1}
    print(f"\n{total} writes, {conflicts} conflicts in {seconds:.0f} s by {WORKERS} processes")
