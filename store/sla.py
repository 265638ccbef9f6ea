"""The SLA engine: which policy applies to a ticket, its due times, pauses, warning and breach.

Three clocks per ticket, each counting business time of the policy's calendar only:

* first response: from the ticket's creation until the first agent reply;
* next response: from the customer's latest message (after the first response) until
  the agent's next reply;
* resolution: from creation until the ticket is solved (time while solved, before a
  reopen, is not counted).

Pending (waiting on the customer) always pauses the clocks, on-hold (waiting on a third
party) only where the policy says so, postponed never. Pauses are kept as a log on the
ticket's `TicketSla` row, filled in as `recompute_ticket` sees status changes, and the
due times are computed from that log, so a pause moves a due time later by exactly the
paused business time.

`recompute_ticket` runs after each ticket change (one cached query when no policy
exists); `recompute_all` refreshes every active ticket in keyset batches (the daemon's
minute tick and `helpdesk sla recompute`). On SQLite it reads and writes plain tuples
through the driver, in SQLAlchemy's stored forms, so an unchanged row is recognised by
comparing stored values; on a large store a worker process computes part of each batch.
`bench/sla_check.py` checks that it leaves the same table as the ORM path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from store import businesstime as bt
from store.engine import Database, NotFoundError, StoreError
from store.models import (
    ACTIVE_STATUSES,
    Article,
    ArticleKind,
    AuditEvent,
    Priority,
    Setting,
    Status,
    Ticket,
    utcnow,
)
from store.query import Query, QueryContext, QueryError, compile_where, parse
from store.sla_models import CLOCKS, SlaPolicy, TicketSla
from store.sla_models import Calendar as CalendarRow

__all__ = [
    "CLOCK_LABELS",
    "WARNING_FRACTION",
    "ClockState",
    "PolicyInfo",
    "SlaError",
    "SlaResult",
    "add_calendar",
    "add_holidays",
    "add_policy",
    "calendar_of",
    "compute",
    "explain",
    "get_policy",
    "import_ics",
    "list_calendars",
    "list_policies",
    "parse_duration",
    "parse_targets",
    "recompute_all",
    "recompute_ticket",
    "recompute_tickets",
    "remove_calendar",
    "remove_holidays",
    "remove_policy",
]

log = logging.getLogger(__name__)

#: A clock is in warning when less than this share of its target is left.
WARNING_FRACTION = 0.2
#: The settings key holding a random token that changes with every policy/calendar edit.
VERSION_KEY = "sla_version"
CLOCK_LABELS = {
    "first_response": "first response",
    "next_response": "next response",
    "resolution": "resolution",
}
_STOPPED = frozenset({Status.SOLVED.value, Status.CLOSED.value, Status.MERGED.value})
#: Statuses recorded in the pause log (whether they pause depends on the policy).
_LOGGED = frozenset(
    {Status.PENDING.value, Status.ON_HOLD.value, Status.SOLVED.value, Status.CLOSED.value}
)
_MAX_PAUSES = 200
#: Active tickets per `recompute_all` transaction. Larger batches write each index page
#: fewer times (on a 1M-ticket SQLite store, 25,000 per batch took 23% less CPU from
#: scratch than 5,000); the write lock is held about 2 s per batch there.
RECOMPUTE_BATCH = 20_000
_ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)


class SlaNotFound(NotFoundError):
    """No such calendar, policy or ticket."""


class SlaError(StoreError):
    """A bad SLA policy or calendar (unknown name, bad target, bad condition...)."""


# --- configuration (cached per store version) -----------------------------------------


@dataclass(frozen=True)
class PolicyInfo:
    """A policy ready to apply: parsed condition, calendar, targets in minutes."""

    id: int
    name: str
    position: int
    condition: str
    query: Query | None
    calendar_name: str
    calendar: bt.Calendar
    targets: Mapping[str, Mapping[str, int]]
    pause_on_hold: bool
    calendar_desc: str = ""

    def target(self, priority: int, clock: str) -> timedelta | None:
        found = self._targets.get((priority, clock))
        return found[0] if found else None

    @cached_property
    def _json_head(self) -> str:
        """The explanation's JSON up to the clocks (see `SlaResult.explanation_json`)."""
        head = json.dumps(
            {
                "policy": self.name,
                "policy_id": self.id,
                "calendar": self.calendar_name,
                "calendar_desc": self.calendar_desc,
                "pause_on_hold": self.pause_on_hold,
            }
        )
        return head[:-1] + ', "clocks": {'

    @cached_property
    def _targets(self) -> dict[tuple[int, str], tuple[timedelta, timedelta]]:
        """(priority, clock) -> (target, the target less its warning share), built once."""
        out: dict[tuple[int, str], tuple[timedelta, timedelta]] = {}
        for priority, label in _PRIORITY_LABELS.items():
            for clock, minutes in self.targets.get(label, {}).items():
                if minutes:
                    target = timedelta(minutes=minutes)
                    out[(priority, clock)] = (target, target * (1 - WARNING_FRACTION))
        return out

    def pauses_for(self, status: str) -> bool:
        if status == Status.ON_HOLD.value:
            return self.pause_on_hold
        return status in _LOGGED


_CACHE: dict[str, list[PolicyInfo]] = {}
_PRIORITY_LABELS = {int(p): p.label for p in Priority}


def calendar_of(row: CalendarRow) -> bt.Calendar:
    """The arithmetic calendar for a stored calendar row."""
    try:
        return bt.Calendar.build(
            timezone=row.timezone,
            hours=row.hours,
            country=row.country,
            subdivision=row.subdivision,
            holidays=row.extra_holidays or (),
            name=row.name,
        )
    except (bt.CalendarError, ValueError) as exc:
        raise SlaError(f"calendar {row.name!r} is broken: {exc}") from None


async def _policies(session: AsyncSession) -> list[PolicyInfo]:
    """The policies in order; one query when unchanged since the last call (or none exist)."""
    token = (
        await session.execute(select(Setting.value).where(Setting.key == VERSION_KEY))
    ).scalar_one_or_none()
    if token is None:
        return []
    cached = _CACHE.get(str(token))
    if cached is not None:
        return cached
    calendars = {c.id: c for c in (await session.execute(select(CalendarRow))).scalars().all()}
    rows = (
        await session.execute(select(SlaPolicy).order_by(SlaPolicy.position, SlaPolicy.id))
    ).scalars()
    out: list[PolicyInfo] = []
    for p in rows:
        cal_row = calendars[p.calendar_id]
        out.append(
            PolicyInfo(
                id=p.id,
                name=p.name,
                position=p.position,
                condition=p.condition,
                query=parse(p.condition) if p.condition.strip() else None,
                calendar_name=cal_row.name,
                calendar=calendar_of(cal_row),
                targets={k: dict(v) for k, v in (p.targets or {}).items()},
                pause_on_hold=p.pause_on_hold,
                calendar_desc=calendar_of(cal_row).describe(),
            )
        )
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[str(token)] = out
    return out


async def _bump_version(session: AsyncSession) -> None:
    token = uuid.uuid4().hex
    row = await session.get(Setting, VERSION_KEY)
    if row is None:
        session.add(Setting(key=VERSION_KEY, value=token))
    else:
        row.value = token


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def _match(
    session: AsyncSession, ticket_id: int, policies: Sequence[PolicyInfo], now: datetime
) -> PolicyInfo | None:
    ctx = QueryContext(me_agent_id=None, now=now, dialect=_dialect(session))
    for policy in policies:
        if policy.query is None:
            return policy
        cond = compile_where(policy.query, ctx)
        found = (
            await session.execute(select(Ticket.id).where(Ticket.id == ticket_id, cond))
        ).scalar_one_or_none()
        if found is not None:
            return policy
    return None


# --- the computation (pure) -----------------------------------------------------------


@dataclass
class Facts:
    """What the clocks depend on, read from the ticket (and its latest agent reply)."""

    id: int
    status: str
    priority: int
    created_at: datetime
    first_response_at: datetime | None
    solved_at: datetime | None
    last_customer_at: datetime | None
    last_agent_reply_at: datetime | None = None

    @property
    def needs_last_reply(self) -> bool:
        return (
            self.first_response_at is not None
            and self.last_customer_at is not None
            and self.last_customer_at > self.first_response_at
        )


@dataclass
class ClockState:
    """One clock's outcome. `state`: running, paused, met, stopped (never met: solved)."""

    name: str
    state: str
    start: datetime
    target: timedelta
    due: datetime | None = None
    met_at: datetime | None = None
    breached: bool = False
    warning_at: datetime | None = None
    #: Business time left while paused.
    remaining: timedelta | None = None
    #: (from, until or None, status, paused business time) of each pause that counted.
    pauses: list[tuple[datetime, datetime | None, str, timedelta]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "start": _iso(self.start),
            "target_min": int(self.target.total_seconds() // 60),
            "due": _iso(self.due),
            "met_at": _iso(self.met_at),
            "breached": self.breached,
            "warning_at": _iso(self.warning_at),
            "remaining_s": None if self.remaining is None else int(self.remaining.total_seconds()),
            "pauses": [
                [_iso(a), _iso(b), status, int(d.total_seconds())]
                for a, b, status, d in self.pauses
            ],
        }


@dataclass
class SlaResult:
    """The whole SLA state of a ticket at a moment."""

    policy: PolicyInfo | None
    clocks: dict[str, ClockState]
    next_due_at: datetime | None
    warning_at: datetime | None
    paused_since: datetime | None
    paused_status: str | None

    def due(self, clock: str) -> datetime | None:
        c = self.clocks.get(clock)
        return c.due if c else None

    def breached(self, clock: str) -> bool:
        c = self.clocks.get(clock)
        return bool(c and c.breached)

    def explanation(self) -> dict[str, Any]:
        if self.policy is None:
            return {"policy": None}
        return {
            "policy": self.policy.name,
            "policy_id": self.policy.id,
            "calendar": self.policy.calendar_name,
            "calendar_desc": self.policy.calendar_desc,
            "pause_on_hold": self.policy.pause_on_hold,
            "clocks": {name: c.to_json() for name, c in self.clocks.items()},
        }

    def explanation_json(self) -> str:
        """``json.dumps(self.explanation())``, character for character, built directly (the
        bulk recompute writes one per ticket): the policy part is rendered once per policy,
        the clocks hold only times, numbers, booleans and fixed words."""
        if self.policy is None:
            return '{"policy": null}'
        clocks = ", ".join(f'"{name}": {_clock_json(c)}' for name, c in self.clocks.items())
        return f"{self.policy._json_head}{clocks}}}}}"


def _js_time(value: datetime | None) -> str:
    """`_iso` as JSON text."""
    if value is None:
        return "null"
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return f'"{value.isoformat()}"'


def _clock_json(c: ClockState) -> str:
    """``json.dumps(c.to_json())``."""
    pauses = ", ".join(
        f"[{_js_time(a)}, {_js_time(b)}, {json.dumps(status)}, {int(d.total_seconds())}]"
        for a, b, status, d in c.pauses
    )
    remaining = "null" if c.remaining is None else str(int(c.remaining.total_seconds()))
    return (
        f'{{"state": {json.dumps(c.state)}, "start": {_js_time(c.start)}, '
        f'"target_min": {int(c.target.total_seconds() // 60)}, "due": {_js_time(c.due)}, '
        f'"met_at": {_js_time(c.met_at)}, "breached": {"true" if c.breached else "false"}, '
        f'"warning_at": {_js_time(c.warning_at)}, "remaining_s": {remaining}, '
        f'"pauses": [{pauses}]}}'
    )


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def update_pauses(pauses: list[dict[str, Any]], status: str, now: datetime) -> list[dict[str, Any]]:
    """The pause log after seeing the ticket in `status` at `now` (a new list when changed)."""
    open_entry = pauses[-1] if pauses and pauses[-1].get("until") is None else None
    if open_entry is not None and open_entry["status"] == status:
        return pauses
    out = [dict(p) for p in pauses]
    if open_entry is not None:
        out[-1]["until"] = _iso(now)
    if status in _LOGGED:
        out.append({"from": _iso(now), "until": None, "status": status})
    if len(out) > _MAX_PAUSES:  # keep the log bounded: merge the oldest entries' spans away
        out = out[-_MAX_PAUSES:]
    return out


def _walk(
    cal: bt.Calendar,
    start: datetime,
    target: timedelta,
    pauses: Sequence[tuple[datetime, datetime | None, str]],
) -> tuple[datetime | None, timedelta, list[tuple[datetime, datetime | None, str, timedelta]]]:
    """When `target` business time has run from `start`, skipping `pauses` (sorted).

    Returns (due or None when the time runs out inside an open pause, business time left
    at that pause, the pauses that moved the due time with their business length).
    """
    cursor, remaining = start, target
    applied: list[tuple[datetime, datetime | None, str, timedelta]] = []
    for p0, p1, status in pauses:
        if p1 is not None and p1 <= cursor:
            continue
        p0 = max(p0, cursor)
        available = bt.business_time_between(cal, cursor, p0)
        if available >= remaining:
            break
        remaining -= available
        if p1 is None:
            applied.append((p0, None, status, timedelta(0)))
            return None, remaining, applied
        applied.append((p0, p1, status, bt.business_time_between(cal, p0, p1)))
        cursor = p1
    return bt.add_business_time(cal, cursor, remaining), remaining, applied


def compute(
    policy: PolicyInfo | None,
    facts: Facts,
    pauses: Sequence[Mapping[str, Any]],
    now: datetime,
    *,
    next_response_breached_before: bool = False,
    next_response_due_before: datetime | None = None,
) -> SlaResult:
    """The SLA state of a ticket at `now` under `policy` (pure; no database)."""
    if policy is None or facts.status == Status.MERGED.value:
        return SlaResult(policy, {}, None, None, None, None)
    cal = policy.calendar
    counted = [
        (f, _dt(p.get("until")), p["status"])
        for p in pauses
        if policy.pauses_for(p["status"]) and (f := _dt(p["from"])) is not None
    ]
    stopped = facts.status in _STOPPED
    clocks: dict[str, ClockState] = {}

    def run(
        name: str, start: datetime, targets: tuple[timedelta, timedelta], met_at: datetime | None
    ) -> ClockState:
        target = targets[0]
        if not counted:  # no pauses (most tickets): due and warning in one timeline lookup
            if met_at is not None:
                at = bt.add_business_time(cal, start, target)
                return ClockState(
                    name, "met", start, target, due=at, met_at=met_at, breached=met_at > at
                )
            if stopped:
                return ClockState(name, "stopped", start, target)
            at, warn_at = bt.add_business_times(cal, start, targets)
            return ClockState(
                name, "running", start, target, due=at, breached=at <= now, warning_at=warn_at
            )
        if met_at is not None:
            before = [
                (a, b if b is not None and b <= met_at else met_at, s)
                for a, b, s in counted
                if a < met_at
            ]
            due, _, applied = _walk(cal, start, target, before)
            return ClockState(
                name,
                "met",
                start,
                target,
                due=due,
                met_at=met_at,
                breached=due is not None and met_at > due,
                pauses=applied,
            )
        if stopped:
            return ClockState(name, "stopped", start, target)
        due, remaining, applied = _walk(cal, start, target, counted)
        if due is None:
            return ClockState(name, "paused", start, target, remaining=remaining, pauses=applied)
        warn, _, _ = _walk(cal, start, targets[1], counted)
        return ClockState(
            name,
            "running",
            start,
            target,
            due=due,
            breached=due <= now,
            warning_at=warn,
            pauses=applied,
        )

    targets = policy._targets
    fr = targets.get((facts.priority, "first_response"))
    if fr is not None and (facts.last_customer_at is not None or facts.first_response_at):
        clocks["first_response"] = run(
            "first_response", facts.created_at, fr, facts.first_response_at
        )
    nr = targets.get((facts.priority, "next_response"))
    if nr is not None and facts.needs_last_reply:
        assert facts.last_customer_at is not None
        reply = facts.last_agent_reply_at
        met = reply if reply is not None and reply >= facts.last_customer_at else None
        clock = run("next_response", facts.last_customer_at, nr, met)
        # Earlier cycles are gone from the facts: a breach seen before stays.
        if next_response_breached_before or (
            met is not None
            and next_response_due_before is not None
            and met > next_response_due_before
        ):
            clock.breached = True
        clocks["next_response"] = clock
    rs = targets.get((facts.priority, "resolution"))
    if rs is not None:
        solved = facts.solved_at if stopped else None
        clocks["resolution"] = run("resolution", facts.created_at, rs, solved)

    running = [c for c in clocks.values() if c.state == "running"]
    next_due = min((c.due for c in running if c.due is not None), default=None)
    warning_at = min((c.warning_at for c in running if c.warning_at is not None), default=None)
    paused_since: datetime | None = None
    paused_status: str | None = None
    if counted and counted[-1][1] is None and counted[-1][2] not in _STOPPED:
        paused_since, paused_status = counted[-1][0], counted[-1][2]
    return SlaResult(policy, clocks, next_due, warning_at, paused_since, paused_status)


def _row_values(result: SlaResult, pauses: list[dict[str, Any]]) -> dict[str, Any]:
    """TicketSla column values for a result (without ticket_id / computed_at)."""
    return {
        "policy_id": result.policy.id if result.policy else None,
        "first_response_due": result.due("first_response"),
        "next_response_due": result.due("next_response"),
        "resolution_due": result.due("resolution"),
        "first_response_breached": result.breached("first_response"),
        "next_response_breached": result.breached("next_response"),
        "resolution_breached": result.breached("resolution"),
        "breached": any(c.breached for c in result.clocks.values()),
        "warning_at": result.warning_at,
        "paused_since": result.paused_since,
        "paused_status": result.paused_status,
        "pauses": pauses,
        "explanation": result.explanation(),
    }


# --- hooks ----------------------------------------------------------------------------


async def _last_agent_reply(session: AsyncSession, ticket_id: int) -> datetime | None:
    value = (
        await session.execute(
            select(func.max(Article.created_at)).where(
                Article.ticket_id == ticket_id, Article.kind == ArticleKind.EMAIL_OUT.value
            )
        )
    ).scalar_one_or_none()
    if isinstance(value, str):  # SQLite without type info on an aggregate
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


async def recompute_ticket(
    session: AsyncSession, ticket: Ticket, now: datetime
) -> SlaResult | None:
    """Refresh one ticket's SLA state and `ticket.next_due_at` inside the caller's transaction.

    Call after every change to a ticket (status, priority, queue, tags...) and after each
    customer message or agent reply. Costs one query when no policy exists.
    Returns the result (None when there are no policies at all).
    """
    policies = await _policies(session)
    if not policies:
        if ticket.next_due_at is not None:
            ticket.next_due_at = None
            await session.execute(delete(TicketSla).where(TicketSla.ticket_id == ticket.id))
        return None
    await session.flush()
    row = await session.get(TicketSla, ticket.id)
    old_pauses: list[dict[str, Any]] = list(row.pauses) if row is not None else []
    pauses = update_pauses(old_pauses, ticket.status, now)
    policy = (
        await _match(session, ticket.id, policies, now)
        if ticket.status != Status.MERGED.value
        else None
    )
    facts = _facts(ticket)
    if policy is not None and facts.needs_last_reply:
        facts.last_agent_reply_at = await _last_agent_reply(session, ticket.id)
    result = compute(
        policy,
        facts,
        pauses,
        now,
        next_response_breached_before=bool(row and row.next_response_breached),
        next_response_due_before=row.next_response_due if row else None,
    )
    values = _row_values(result, pauses)
    if row is None:
        row = TicketSla(ticket_id=ticket.id, computed_at=now, **values)
        session.add(row)
    else:
        for key, value in values.items():
            setattr(row, key, value)
        row.computed_at = now
    if ticket.next_due_at != result.next_due_at:
        ticket.next_due_at = result.next_due_at
    return result


def _facts(t: Any) -> Facts:
    return Facts(
        id=t.id,
        status=t.status,
        priority=t.priority,
        created_at=t.created_at,
        first_response_at=t.first_response_at,
        solved_at=t.solved_at,
        last_customer_at=t.last_customer_at,
    )


async def recompute_tickets(
    session: AsyncSession, ticket_ids: Sequence[int], now: datetime
) -> None:
    """`recompute_ticket` for many tickets at once, inside the caller's transaction.

    For batch changes (`store.rules.assign_backlog`) that wrote the tickets with plain
    statements: reads them back (after a flush), and leaves the same `TicketSla` rows and
    `next_due_at` as a `recompute_ticket` call per ticket would (every row written, with
    `computed_at` = `now`). Tickets must not be loaded as ORM objects in the session.
    """
    if not ticket_ids:
        return
    policies = await _policies(session)
    await session.flush()
    for i in range(0, len(ticket_ids), 500):
        part = list(ticket_ids[i : i + 500])
        rows = (await session.execute(select(*_TICKET_COLS).where(Ticket.id.in_(part)))).all()
        if not policies:
            stale = [r.id for r in rows if r.next_due_at is not None]
            if stale:
                await session.execute(
                    update(Ticket).where(Ticket.id.in_(stale)).values(next_due_at=None)
                )
                await session.execute(delete(TicketSla).where(TicketSla.ticket_id.in_(stale)))
            continue
        existing = {
            r.ticket_id: r._asdict()
            for r in (await session.execute(select(_SLA).where(_SLA.c.ticket_id.in_(part)))).all()
        }
        facts = {r.id: _facts(r) for r in rows}
        chosen = await _choose_policies(
            session,
            policies,
            now,
            {k: f for k, f in facts.items() if f.status != Status.MERGED.value},
            None,
            active_only=False,
        )
        await _fill_last_replies(session, facts, chosen)
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        due_updates: list[dict[str, Any]] = []
        for r in rows:
            old = existing.get(r.id)
            pauses = update_pauses(list(old["pauses"]) if old else [], r.status, now)
            result = compute(
                chosen.get(r.id),
                facts[r.id],
                pauses,
                now,
                next_response_breached_before=bool(old and old["next_response_breached"]),
                next_response_due_before=old["next_response_due"] if old else None,
            )
            values = _row_values(result, pauses)
            if old is None:
                inserts.append({"ticket_id": r.id, "computed_at": now, **values})
            else:
                updates.append({"b_ticket_id": r.id, "computed_at": now, **values})
            if r.next_due_at != result.next_due_at:
                due_updates.append({"b_id": r.id, "next_due_at": result.next_due_at})
        if inserts:
            await session.execute(insert(_SLA), inserts)
        if updates:
            await session.execute(
                update(_SLA).where(_SLA.c.ticket_id == bindparam("b_ticket_id")), updates
            )
        if due_updates:
            await session.execute(
                update(_TICKETS).where(_TICKETS.c.id == bindparam("b_id")), due_updates
            )


@dataclass
class RecomputeStats:
    """What `recompute_all` did."""

    tickets: int = 0
    changed: int = 0
    newly_breached: list[int] = field(default_factory=list)
    seconds: float = 0.0


async def recompute_all(
    db: Database,
    now: datetime,
    batch: int = RECOMPUTE_BATCH,
    *,
    driver: bool | None = None,
    worker: bool | None = None,
) -> RecomputeStats:
    """Refresh the SLA state of every active ticket, in keyset batches of `batch` by id.

    Each batch is one short write transaction; only rows whose state changed are written.
    Returns counts and the ids of tickets that became breached (for escalation/notify).
    `driver`: False forces the ORM path on SQLite too (for checking the two agree).
    `worker`: on SQLite, compute part of each batch in a second process (default: with
    two or more CPUs and at least `_WORKER_MIN_TICKETS` active tickets).
    """
    import time

    started = time.perf_counter()
    stats = RecomputeStats()
    async with db.read() as session:
        policies = await _policies(session)
    if not policies:
        async with db.write() as session:
            await session.execute(
                update(Ticket).where(Ticket.next_due_at.is_not(None)).values(next_due_at=None)
            )
            await session.execute(delete(TicketSla))
        stats.seconds = time.perf_counter() - started
        return stats
    # Which tickets each policy's condition matches: one query per policy for the whole
    # run (per batch, a condition such as ``tag:vip`` would rebuild its subquery every
    # time). Tickets created since are matched per batch; a ticket changed during the run
    # was recomputed by its own change and gets its due times right at the next run.
    matches: dict[int, set[int]] = {}
    async with db.read() as session:
        known = int((await session.execute(select(func.max(Ticket.id)))).scalar() or 0)
        ctx = QueryContext(me_agent_id=None, now=now, dialect=_dialect(session))
        for policy in policies:
            if policy.query is not None:
                cond = compile_where(policy.query, ctx)
                matches[policy.id] = set(
                    (
                        await session.execute(select(Ticket.id).where(Ticket.id <= known, cond))
                    ).scalars()
                )
    if driver is None:
        driver = db.is_sqlite
    if driver and worker is None:
        worker = (os.cpu_count() or 1) >= 2 and await _active_count(db) >= _WORKER_MIN_TICKETS
    pool = (
        ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(policies,),
        )
        if driver and worker
        else None
    )
    try:
        last_id = 0
        while True:
            async with db.write() as session:
                last = await _recompute_batch(
                    session,
                    policies,
                    now,
                    last_id,
                    batch,
                    stats,
                    matches=(known, matches),
                    driver=driver,
                    pool=pool,
                )
            if last is None:
                break
            last_id = last
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    stats.seconds = time.perf_counter() - started
    return stats


async def _active_count(db: Database) -> int:
    async with db.read() as session:
        return int(
            (
                await session.execute(
                    select(func.count()).select_from(Ticket).where(Ticket.status.in_(_ACTIVE))
                )
            ).scalar_one()
        )


_TICKET_COLS = (
    Ticket.id,
    Ticket.status,
    Ticket.priority,
    Ticket.created_at,
    Ticket.first_response_at,
    Ticket.solved_at,
    Ticket.last_customer_at,
    Ticket.next_due_at,
)
_SLA = cast(Table, TicketSla.__table__)
_TICKETS = cast(Table, Ticket.__table__)
_STATE_COLS = [c.name for c in _SLA.columns if c.name not in ("ticket_id", "computed_at")]


def _status_col(session: AsyncSession) -> Any:
    """The status column; on SQLite written so that no index is used for it (the unary
    ``+``): with 40% of tickets active, walking the primary key and skipping the others
    is far cheaper than reading a status index and sorting by id."""
    if _dialect(session) != "sqlite":
        return Ticket.status
    return literal_column("+tickets.status", type_=Ticket.status.type)


async def _recompute_batch(
    session: AsyncSession,
    policies: Sequence[PolicyInfo],
    now: datetime,
    after_id: int,
    size: int,
    stats: RecomputeStats,
    *,
    matches: tuple[int, Mapping[int, set[int]]] | None = None,
    driver: bool | None = None,
    pool: Executor | None = None,
) -> int | None:
    """Recompute the next `size` active tickets after `after_id`; returns the last id.

    `matches`: (highest ticket id known, ids matched per policy id) from `recompute_all`;
    tickets above that id, and policies not in it, are matched here by a query.
    `driver`: on SQLite (the default there) rows are read and written as plain tuples
    through the driver (`_recompute_batch_sqlite`); the ORM/Core path below is what
    PostgreSQL runs, and the reference the SQLite path is checked against.
    """
    if driver is None:
        driver = _dialect(session) == "sqlite"
    if driver:
        return await _recompute_batch_sqlite(
            session, policies, now, after_id, size, stats, matches=matches, pool=pool
        )
    rows = (
        await session.execute(
            select(*_TICKET_COLS)
            .where(Ticket.id > after_id, _status_col(session).in_(_ACTIVE))
            .order_by(Ticket.id)
            .limit(size)
        )
    ).all()
    if not rows:
        return None
    lo, hi = rows[0].id, rows[-1].id
    existing = {
        r.ticket_id: r._asdict()
        for r in (
            await session.execute(
                select(_SLA).where(_SLA.c.ticket_id >= lo, _SLA.c.ticket_id <= hi)
            )
        ).all()
    }
    facts = {r.id: _facts(r) for r in rows}
    chosen = await _choose_policies(session, policies, now, facts, matches)
    await _fill_last_replies(session, facts, chosen)

    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    due_updates: list[dict[str, Any]] = []
    for r in rows:
        old = existing.get(r.id)
        old_pauses = list(old["pauses"]) if old else []
        pauses = update_pauses(old_pauses, r.status, now)
        result = compute(
            chosen.get(r.id),
            facts[r.id],
            pauses,
            now,
            next_response_breached_before=bool(old and old["next_response_breached"]),
            next_response_due_before=old["next_response_due"] if old else None,
        )
        values = _row_values(result, pauses)
        stats.tickets += 1
        if old is None:
            inserts.append({"ticket_id": r.id, "computed_at": now, **values})
        elif any(old[k] != values[k] for k in _STATE_COLS):
            updates.append({"b_ticket_id": r.id, "computed_at": now, **values})
        else:
            continue
        stats.changed += 1
        if values["breached"] and not (old and old["breached"]):
            stats.newly_breached.append(r.id)
        if r.next_due_at != result.next_due_at:
            due_updates.append({"b_id": r.id, "next_due_at": result.next_due_at})
    if inserts:
        await session.execute(insert(_SLA), inserts)
    if updates:
        await session.execute(
            update(_SLA).where(_SLA.c.ticket_id == bindparam("b_ticket_id")),
            updates,
        )
    if due_updates:
        await session.execute(
            update(_TICKETS).where(_TICKETS.c.id == bindparam("b_id")),
            due_updates,
        )
    return int(hi)


async def _choose_policies(
    session: AsyncSession,
    policies: Sequence[PolicyInfo],
    now: datetime,
    facts: Mapping[int, Any],
    matches: tuple[int, Mapping[int, set[int]]] | None,
    *,
    active_only: bool = True,
) -> dict[int, PolicyInfo]:
    """The first matching policy per ticket of a batch: one query per policy with a
    condition, unless `recompute_all` matched it for the whole run already."""
    chosen: dict[int, PolicyInfo] = {}
    if not facts:
        return chosen
    left = set(facts)
    lo, hi = min(left), max(left)
    ctx = QueryContext(me_agent_id=None, now=now, dialect=_dialect(session))
    for policy in policies:
        if not left:
            break
        if policy.query is None:
            matched = set(left)
        elif matches is not None and policy.id in matches[1] and hi <= matches[0]:
            matched = left & matches[1][policy.id]
        else:
            cond = compile_where(policy.query, ctx)
            matched = (
                set(
                    (
                        await session.execute(
                            select(Ticket.id).where(
                                Ticket.id >= lo,
                                Ticket.id <= hi,
                                Ticket.status.in_(_ACTIVE) if active_only else true(),
                                cond,
                            )
                        )
                    ).scalars()
                )
                & left
            )
        for tid in matched:
            chosen[tid] = policy
        left -= matched
    return chosen


async def _fill_last_replies(
    session: AsyncSession, facts: Mapping[int, Facts], chosen: Mapping[int, PolicyInfo]
) -> None:
    """Set `last_agent_reply_at` on the facts whose next-response clock needs it."""
    need = [tid for tid, f in facts.items() if tid in chosen and f.needs_last_reply]
    for tid, value in (await _last_replies(session, need)).items():
        facts[tid].last_agent_reply_at = value


# The SQLite path: plain SQL and tuples through the driver. Values are written exactly as
# SQLAlchemy writes them there (UTC datetimes as "YYYY-MM-DD HH:MM:SS.ffffff", booleans as
# 0/1, JSON as `json.dumps` text), so a row compares equal to what the ORM path would have
# stored, and an unchanged row is recognised by comparing the stored forms.
_SQL_TICKETS = (
    "SELECT id, status, priority, created_at, first_response_at, solved_at, last_customer_at,"
    " next_due_at FROM tickets WHERE id > ? AND +status IN ("
    + ", ".join("?" for _ in _ACTIVE)
    + ") ORDER BY id LIMIT ?"
)
_SQL_SLA_READ = (
    f"SELECT ticket_id, {', '.join(_STATE_COLS)} FROM ticket_sla"
    " WHERE ticket_id >= ? AND ticket_id <= ?"
)
_SQL_SLA_INSERT = (
    f"INSERT INTO ticket_sla (ticket_id, {', '.join(_STATE_COLS)}, computed_at)"
    f" VALUES ({', '.join('?' for _ in range(len(_STATE_COLS) + 2))})"
)
_SQL_SLA_UPDATE = (
    f"UPDATE ticket_sla SET {', '.join(f'{c} = ?' for c in _STATE_COLS)}, computed_at = ?"
    " WHERE ticket_id = ?"
)
_SQL_DUE = "UPDATE tickets SET next_due_at = ? WHERE id = ?"
_I_NR_DUE = _STATE_COLS.index("next_response_due")
_I_NR_BREACHED = _STATE_COLS.index("next_response_breached")
_I_BREACHED = _STATE_COLS.index("breached")
_I_PAUSES = _STATE_COLS.index("pauses")


def _db_dt(value: datetime | None) -> str | None:
    """A datetime in SQLAlchemy's SQLite storage form (naive UTC, microseconds)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _py_dt(value: str | None) -> datetime | None:
    """The inverse of `_db_dt` (what `UTCDateTime` returns on SQLite)."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _stored_row(result: SlaResult, pauses_json: str) -> tuple[Any, ...]:
    """`_row_values` in SQLite's stored form, in `_STATE_COLS` order."""
    clocks = result.clocks
    fr = clocks.get("first_response")
    nr = clocks.get("next_response")
    rs = clocks.get("resolution")
    return (
        result.policy.id if result.policy else None,
        _db_dt(fr.due) if fr else None,
        _db_dt(nr.due) if nr else None,
        _db_dt(rs.due) if rs else None,
        1 if fr and fr.breached else 0,
        1 if nr and nr.breached else 0,
        1 if rs and rs.breached else 0,
        1 if any(c.breached for c in clocks.values()) else 0,
        _db_dt(result.warning_at),
        _db_dt(result.paused_since),
        result.paused_status,
        pauses_json,
        result.explanation_json(),
    )


async def _recompute_batch_sqlite(
    session: AsyncSession,
    policies: Sequence[PolicyInfo],
    now: datetime,
    after_id: int,
    size: int,
    stats: RecomputeStats,
    *,
    matches: tuple[int, Mapping[int, set[int]]] | None = None,
    pool: Executor | None = None,
) -> int | None:
    """`_recompute_batch` on SQLite without the ORM: same reads, same results, same rows.

    With `pool` (one worker process), the worker computes the first part of the batch
    while this process computes the rest, both inside this batch's transaction.
    """
    conn = await session.connection()
    rows: Sequence[Any] = (
        await conn.exec_driver_sql(_SQL_TICKETS, (after_id, *_ACTIVE, size))
    ).all()
    if not rows:
        return None
    lo, hi = rows[0][0], rows[-1][0]
    existing: dict[int, tuple[Any, ...]] = {
        r[0]: tuple(r[1:]) for r in (await conn.exec_driver_sql(_SQL_SLA_READ, (lo, hi))).all()
    }
    ids = {r[0]: r for r in rows}
    chosen = await _choose_policies(session, policies, now, ids, matches)
    need = [
        r[0]
        for r in rows
        if r[0] in chosen
        and r[4] is not None
        and r[6] is not None
        and cast(datetime, _py_dt(r[6])) > cast(datetime, _py_dt(r[4]))
    ]
    replies = await _last_replies(session, need)
    items = [
        (
            *r,
            replies.get(r[0]),
            chosen[r[0]].id if r[0] in chosen else None,
            existing.get(r[0]),
        )
        for r in rows
    ]
    remote: asyncio.Future[_Computed] | None = None
    theirs_items: list[tuple[Any, ...]] = []
    if pool is not None and len(items) >= 2 * _WRITE_CHUNK:
        split = int(len(items) * _WORKER_SHARE)
        try:
            remote = asyncio.get_running_loop().run_in_executor(
                pool, _compute_items, items[:split], now, None
            )
            theirs_items, items = items[:split], items[split:]
        except BrokenExecutor:  # it died in an earlier batch: all of it here
            remote = None
    by_id = {p.id: p for p in policies}
    # Computed in chunks; a chunk's rows are written while the next one is computed (the
    # driver runs SQLite in its own thread, without the GIL), all in this transaction.
    pending: asyncio.Future[None] | None = None
    own: list[_Computed] = []
    try:
        for first in range(0, len(items), _WRITE_CHUNK):
            done = _compute_items(items[first : first + _WRITE_CHUNK], now, by_id)
            own.append(done)
            if pending is not None:
                await pending
                pending = None
            pending = asyncio.ensure_future(_write_rows(conn, done))
            await asyncio.sleep(0)  # hand the first statement to the driver's thread
        if pending is not None:
            await pending
            pending = None
        if remote is not None:
            try:
                theirs = await remote
            except BrokenExecutor:  # the worker died: compute its part here
                log.warning("SLA worker process failed; computing without it")
                theirs = _compute_items(theirs_items, now, by_id)
            remote = None
            await _write_rows(conn, theirs)
            own.insert(0, theirs)  # lower ids first, as without the worker
    finally:
        for left in (pending, remote):
            if left is not None:  # an error: let the other work finish, then raise
                await asyncio.gather(left, return_exceptions=True)
    for done in own:
        stats.tickets += done.tickets
        stats.changed += done.changed
        stats.newly_breached.extend(done.newly_breached)
    return int(hi)


async def _last_replies(session: AsyncSession, ids: Sequence[int]) -> dict[int, datetime]:
    """The newest agent reply per ticket (tickets without one are left out)."""
    out: dict[int, datetime] = {}
    for i in range(0, len(ids), 900):
        part = ids[i : i + 900]
        for tid, value in (
            await session.execute(
                select(Article.ticket_id, func.max(Article.created_at))
                .where(Article.ticket_id.in_(part), Article.kind == ArticleKind.EMAIL_OUT.value)
                .group_by(Article.ticket_id)
            )
        ).all():
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if value is not None and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            if value is not None:
                out[tid] = value
    return out


@dataclass
class _Computed:
    """What `_compute_items` found for a run of tickets: rows to write, and counts."""

    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    due_updates: list[tuple[Any, ...]] = field(default_factory=list)
    tickets: int = 0
    changed: int = 0
    newly_breached: list[int] = field(default_factory=list)


#: Tickets computed between two writes.
_WRITE_CHUNK = 1000
#: The share of a batch the worker process computes (this process also reads and writes).
_WORKER_SHARE = 0.55
#: Worker process only from this many active tickets (starting one costs about a second).
_WORKER_MIN_TICKETS = 50_000
#: The policies in a worker process, set when it starts (`_worker_init`).
_WORKER_POLICIES: dict[int, PolicyInfo] = {}


def _worker_init(policies: Sequence[PolicyInfo]) -> None:
    _WORKER_POLICIES.clear()
    _WORKER_POLICIES.update({p.id: p for p in policies})


def _compute_items(
    items: Sequence[tuple[Any, ...]], now: datetime, policies: Mapping[int, PolicyInfo] | None
) -> _Computed:
    """Compute tickets read by `_recompute_batch_sqlite` (pure; also runs in the worker).

    An item is the ticket row (id, status, priority, created_at, first_response_at,
    solved_at, last_customer_at, next_due_at as stored), the last agent reply, the policy
    id (None: no policy) and the old `ticket_sla` values (None: no row yet).
    """
    by_id = _WORKER_POLICIES if policies is None else policies
    computed_at = _db_dt(now)
    out = _Computed()
    for tid, status, priority, c, fr, sv, lc, next_due, reply, policy_id, old in items:
        facts = Facts(
            tid, status, priority, cast(datetime, _py_dt(c)), _py_dt(fr), _py_dt(sv), _py_dt(lc)
        )
        facts.last_agent_reply_at = reply
        old_pauses_json = old[_I_PAUSES] if old is not None else "[]"
        old_pauses: list[dict[str, Any]] = (
            [] if old_pauses_json in ("[]", None) else json.loads(old_pauses_json)
        )
        pauses = update_pauses(old_pauses, status, now)
        result = compute(
            by_id[policy_id] if policy_id is not None else None,
            facts,
            pauses,
            now,
            next_response_breached_before=bool(old and old[_I_NR_BREACHED]),
            next_response_due_before=_py_dt(old[_I_NR_DUE]) if old else None,
        )
        pauses_json = (
            old_pauses_json
            if pauses is old_pauses and old_pauses_json is not None
            else json.dumps(pauses)
        )
        values = _stored_row(result, pauses_json)
        out.tickets += 1
        if old is None:
            out.inserts.append((tid, *values, computed_at))
        elif old != values:
            out.updates.append((*values, computed_at, tid))
        else:
            continue
        out.changed += 1
        if values[_I_BREACHED] and not (old and old[_I_BREACHED]):
            out.newly_breached.append(tid)
        due = _db_dt(result.next_due_at)
        if due != next_due:
            out.due_updates.append((due, tid))
    return out


async def _write_rows(conn: Any, done: _Computed) -> None:
    if done.inserts:
        await conn.exec_driver_sql(_SQL_SLA_INSERT, done.inserts)
    if done.updates:
        await conn.exec_driver_sql(_SQL_SLA_UPDATE, done.updates)
    if done.due_updates:
        await conn.exec_driver_sql(_SQL_DUE, done.due_updates)


# --- explain ----------------------------------------------------------------------------


def _local(moment: datetime | None, cal: bt.Calendar) -> str:
    if moment is None:
        return "-"
    local = moment.astimezone(cal.tz)
    return f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}"


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    h, m = divmod(abs(minutes), 60)
    sign = "-" if minutes < 0 else ""
    if h and m:
        return f"{sign}{h}h {m:02d}m"
    return f"{sign}{h}h" if h else f"{sign}{m}m"


async def explain(db: Database, number: int, now: datetime | None = None) -> list[str]:
    """Human lines: which policy applied to ticket #number and how each due time came about."""
    now = now or utcnow()
    async with db.read() as session:
        ticket = (
            (await session.execute(select(Ticket).where(Ticket.number == number)))
            .unique()
            .scalar_one_or_none()
        )
        if ticket is None:
            raise SlaNotFound(f"no ticket #{number}")
        policies = await _policies(session)
        if not policies:
            return [f"#{number}: no SLA policies exist; add one with `helpdesk sla add`"]
        row = await session.get(TicketSla, ticket.id)
        pauses = update_pauses(list(row.pauses) if row else [], ticket.status, now)
        policy = await _match(session, ticket.id, policies, now)
        facts = _facts(ticket)
        if policy is not None and facts.needs_last_reply:
            facts.last_agent_reply_at = await _last_agent_reply(session, ticket.id)
        result = compute(
            policy,
            facts,
            pauses,
            now,
            next_response_breached_before=bool(row and row.next_response_breached),
            next_response_due_before=row.next_response_due if row else None,
        )
    lines = [
        f"#{number} {ticket.subject!r}: status {ticket.status}, priority "
        f"{Priority(ticket.priority).label}"
    ]
    if policy is None:
        tried = ", ".join(f"{p.name!r} ({p.condition or 'all'})" for p in policies)
        lines.append(f"No SLA policy matches (tried in order: {tried}).")
        return lines
    skipped = [
        p.name
        for p in policies
        if p.position < policy.position or (p.position == policy.position and p.id < policy.id)
    ]
    lines.append(
        f"Policy {policy.name!r} applies (condition: {policy.condition or 'every ticket'})"
        + (f"; earlier policies not matching: {', '.join(skipped)}" if skipped else "")
        + "."
    )
    cal = policy.calendar
    lines.append(f"Calendar {policy.calendar_name!r}: {cal.describe()}.")
    pause_rule = "pending pauses the clocks" + (
        ", on-hold too" if policy.pause_on_hold else "; on-hold does not (policy)"
    )
    lines.append(f"Pauses: {pause_rule}; postponed never pauses.")
    if not result.clocks:
        lines.append("No clock applies (no targets for this priority, or nothing to respond to).")
    for name in CLOCKS:
        c = result.clocks.get(name)
        if c is None:
            continue
        label = CLOCK_LABELS[name]
        lines.append(
            f"- {label}: target {_span(c.target)} of business time from "
            f"{_local(c.start, cal)}"
            + (" (customer's last message)" if name == "next_response" else " (created)")
        )
        for a, b, status, d in c.pauses:
            if b is None:
                lines.append(f"    paused since {_local(a, cal)} ({status})")
            else:
                lines.append(
                    f"    paused {_local(a, cal)} .. {_local(b, cal)} ({status}): "
                    f"+{_span(d)} business time"
                )
        if c.state == "met":
            verdict = "BREACHED" if c.breached else "in time"
            lines.append(f"    due {_local(c.due, cal)}; met {_local(c.met_at, cal)} ({verdict})")
        elif c.state == "paused":
            rem = c.remaining or timedelta(0)
            lines.append(f"    paused with {_span(rem)} of business time left")
        elif c.state == "stopped":
            lines.append("    stopped: the ticket was solved before this was met")
        else:
            left = bt.business_time_between(cal, now, c.due) if c.due else timedelta(0)
            state = (
                "BREACHED"
                if c.breached
                else (
                    "WARNING (under 20% left)"
                    if c.warning_at and c.warning_at <= now
                    else "running"
                )
            )
            lines.append(f"    due {_local(c.due, cal)}; {_span(left)} business time left; {state}")
    return lines


# --- configuration: calendars -----------------------------------------------------------


def _audit(session: AsyncSession, actor: str, action: str, name: str, new: str | None) -> None:
    session.add(
        AuditEvent(
            ticket_id=None,
            actor=actor,
            action=action,
            field=None,
            old_value=name,
            new_value=new,
            created_at=utcnow(),
        )
    )


async def _calendar_by_name(session: AsyncSession, name: str) -> CalendarRow:
    row = (
        await session.execute(
            select(CalendarRow).where(func.lower(CalendarRow.name) == name.lower())
        )
    ).scalar_one_or_none()
    if row is None:
        raise SlaNotFound(f"no calendar {name!r}; add one with `helpdesk calendar add {name!r}`")
    return row


async def add_calendar(
    db: Database,
    name: str,
    *,
    timezone: str = "UTC",
    hours: str = "mon-fri 09:00-17:00",
    country: str | None = None,
    subdivision: str | None = None,
    holidays: Iterable[str] = (),
    actor: str = "system:helpdesk",
) -> CalendarRow:
    """A new business calendar (hours like ``"mon-fri 09:00-17:00; sat 10:00-14:00"``)."""
    name = name.strip()
    if not name:
        raise SlaError("a calendar needs a name")
    try:
        cal = bt.Calendar.build(
            timezone=timezone,
            hours=hours,
            country=country,
            subdivision=subdivision,
            holidays=bt.dates_from(list(holidays)),
            name=name,
        )
    except bt.CalendarError as exc:
        raise SlaError(str(exc)) from None
    async with db.write() as session:
        exists = (
            await session.execute(
                select(CalendarRow.id).where(func.lower(CalendarRow.name) == name.lower())
            )
        ).scalar_one_or_none()
        if exists is not None:
            raise SlaError(f"a calendar named {name!r} exists already")
        row = CalendarRow(
            name=name,
            timezone=cal.timezone,
            hours=bt.hours_to_json(cal.hours),
            country=cal.country,
            subdivision=cal.subdivision,
            extra_holidays=sorted(d.isoformat() for d in cal.extra_holidays),
            created_at=utcnow(),
        )
        session.add(row)
        _audit(session, actor, "calendar-added", name, cal.describe())
        await _bump_version(session)
        await session.flush()
        return row


async def list_calendars(db: Database) -> list[CalendarRow]:
    """All calendars by name."""
    async with db.read() as session:
        return list(
            (await session.execute(select(CalendarRow).order_by(CalendarRow.name))).scalars()
        )


async def _change_holidays(
    db: Database, calendar: str, add: Iterable[str], remove: Iterable[str], actor: str
) -> CalendarRow:
    plus = {d.isoformat() for d in bt.dates_from(list(add))}
    minus = {d.isoformat() for d in bt.dates_from(list(remove))}
    async with db.write() as session:
        row = await _calendar_by_name(session, calendar)
        dates = (set(row.extra_holidays or []) | plus) - minus
        row.extra_holidays = sorted(dates)
        _audit(
            session,
            actor,
            "calendar-holidays",
            row.name,
            f"+{','.join(sorted(plus))} -{','.join(sorted(minus))}",
        )
        await _bump_version(session)
        return row


async def add_holidays(
    db: Database, calendar: str, dates: Iterable[str], actor: str = "system:helpdesk"
) -> CalendarRow:
    """Add holiday dates (ISO) by hand."""
    return await _change_holidays(db, calendar, dates, (), actor)


async def remove_holidays(
    db: Database, calendar: str, dates: Iterable[str], actor: str = "system:helpdesk"
) -> CalendarRow:
    """Remove dates added by hand (public holidays from the country stay)."""
    return await _change_holidays(db, calendar, (), dates, actor)


async def import_ics(
    db: Database, calendar: str, path: str | Path, actor: str = "system:helpdesk"
) -> bt.IcsResult:
    """Add the all-day dates of an iCalendar file to a calendar's holidays."""
    try:
        result = bt.parse_ics(Path(path))
    except OSError as exc:
        raise SlaError(f"cannot read {path}: {exc.strerror or exc}") from None
    await _change_holidays(db, calendar, sorted(d.isoformat() for d in result.dates), (), actor)
    return result


async def remove_calendar(db: Database, name: str, actor: str = "system:helpdesk") -> None:
    """Delete a calendar no policy uses."""
    async with db.write() as session:
        row = await _calendar_by_name(session, name)
        users = (
            (await session.execute(select(SlaPolicy.name).where(SlaPolicy.calendar_id == row.id)))
            .scalars()
            .all()
        )
        if users:
            raise SlaError(f"calendar {row.name!r} is used by policy {', '.join(users)}")
        await session.delete(row)
        _audit(session, actor, "calendar-removed", row.name, None)
        await _bump_version(session)


# --- configuration: policies ------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(hours?|h|minutes?|mins?|m)?", re.I)


def parse_duration(text: str) -> int:
    """Business minutes from ``90``, ``90m``, ``90min``, ``2h``, ``1h30m``, ``1.5h``."""
    s = text.strip().lower().replace(" ", "")
    if not s:
        raise SlaError("empty duration")
    if s.endswith(("d", "w", "days", "day")):
        raise SlaError(
            f"{text!r}: give business time in hours or minutes (e.g. 8h for one working day)"
        )
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        unit = (m.group(2) or "m")[0]
        total += float(m.group(1)) * (60 if unit == "h" else 1)
        pos = m.end()
    if pos != len(s) or total <= 0:
        raise SlaError(f"not a duration: {text!r} (e.g. 30min, 4h, 1h30min)")
    return round(total)


def parse_targets(
    first_response: str | None = None,
    next_response: str | None = None,
    resolution: str | None = None,
) -> dict[str, dict[str, int]]:
    """Targets from CLI text: ``"urgent=1h,high=4h,normal=8h,low=16h"`` or ``"4h"`` (all)."""
    out: dict[str, dict[str, int]] = {}
    for clock, spec in (
        ("first_response", first_response),
        ("next_response", next_response),
        ("resolution", resolution),
    ):
        if not spec:
            continue
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                prio, _, dur = part.partition("=")
                labels = [p.label for p in Priority]
                if prio.strip().lower() not in labels:
                    raise SlaError(f"unknown priority {prio!r} (one of: {', '.join(labels)})")
                targets = [prio.strip().lower()]
            else:
                dur, targets = part, [p.label for p in Priority]
            minutes = parse_duration(dur)
            for label in targets:
                out.setdefault(label, {})[clock] = minutes
    if not out:
        raise SlaError("a policy needs at least one target (--first-response, --resolution...)")
    return out


def _check_targets(targets: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    labels = {p.label for p in Priority}
    out: dict[str, dict[str, int]] = {}
    for prio, per in targets.items():
        if prio not in labels:
            raise SlaError(f"unknown priority {prio!r} in targets")
        for clock, minutes in per.items():
            if clock not in CLOCKS:
                raise SlaError(f"unknown clock {clock!r} (one of: {', '.join(CLOCKS)})")
            if not isinstance(minutes, int) or minutes <= 0:
                raise SlaError(f"target {prio}/{clock} must be a positive number of minutes")
            out.setdefault(prio, {})[clock] = minutes
    if not out:
        raise SlaError("a policy needs at least one target")
    return out


async def add_policy(
    db: Database,
    name: str,
    *,
    calendar: str,
    targets: Mapping[str, Mapping[str, int]],
    condition: str = "",
    pause_on_hold: bool = False,
    position: int | None = None,
    actor: str = "system:helpdesk",
) -> SlaPolicy:
    """A new SLA policy; `position` None puts it last (the first match in order applies)."""
    name = name.strip()
    if not name:
        raise SlaError("a policy needs a name")
    try:
        if condition.strip():
            parse(condition)
    except QueryError as exc:
        raise SlaError(f"condition: {exc}") from None
    checked = _check_targets(targets)
    async with db.write() as session:
        cal = await _calendar_by_name(session, calendar)
        calendar_of(cal)
        exists = (
            await session.execute(
                select(SlaPolicy.id).where(func.lower(SlaPolicy.name) == name.lower())
            )
        ).scalar_one_or_none()
        if exists is not None:
            raise SlaError(f"an SLA policy named {name!r} exists already")
        if position is None:
            top = (await session.execute(select(func.max(SlaPolicy.position)))).scalar()
            position = (top or 0) + 10
        policy = SlaPolicy(
            name=name,
            position=position,
            condition=condition.strip(),
            calendar_id=cal.id,
            targets=checked,
            pause_on_hold=pause_on_hold,
            created_at=utcnow(),
        )
        session.add(policy)
        _audit(session, actor, "sla-policy-added", name, condition.strip() or "(all)")
        await _bump_version(session)
        await session.flush()
        return policy


async def list_policies(db: Database) -> list[tuple[SlaPolicy, str]]:
    """Policies in the order they are tried, with their calendar's name."""
    async with db.read() as session:
        rows = (
            await session.execute(
                select(SlaPolicy, CalendarRow.name)
                .join(CalendarRow, CalendarRow.id == SlaPolicy.calendar_id)
                .order_by(SlaPolicy.position, SlaPolicy.id)
            )
        ).all()
        return [(p, c) for p, c in rows]


async def get_policy(db: Database, name: str) -> tuple[SlaPolicy, CalendarRow]:
    """One policy by name (any case) with its calendar, for `helpdesk sla show`."""
    async with db.read() as session:
        policy = (
            await session.execute(
                select(SlaPolicy).where(func.lower(SlaPolicy.name) == name.strip().lower())
            )
        ).scalar_one_or_none()
        if policy is None:
            raise SlaNotFound(f"no SLA policy {name!r}; see `helpdesk sla list`")
        cal = await session.get(CalendarRow, policy.calendar_id)
        assert cal is not None
        return policy, cal


async def remove_policy(db: Database, name: str, actor: str = "system:helpdesk") -> None:
    """Delete a policy; tickets it applied to get another policy at the next recompute."""
    async with db.write() as session:
        policy = (
            await session.execute(
                select(SlaPolicy).where(func.lower(SlaPolicy.name) == name.strip().lower())
            )
        ).scalar_one_or_none()
        if policy is None:
            raise SlaNotFound(f"no SLA policy {name!r}; see `helpdesk sla list`")
        await session.delete(policy)
        _audit(session, actor, "sla-policy-removed", policy.name, None)
        await _bump_version(session)


def format_targets(targets: Mapping[str, Mapping[str, int]]) -> list[str]:
    """``urgent: first response 1h, next response 2h, resolution 8h`` lines."""
    lines = []
    for p in sorted(Priority, reverse=True):
        per = targets.get(p.label)
        if not per:
            continue
        parts = [
            f"{CLOCK_LABELS[c]} {_span(timedelta(minutes=per[c]))}" for c in CLOCKS if c in per
        ]
        lines.append(f"{p.label}: {', '.join(parts)}")
    return lines
