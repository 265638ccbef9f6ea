"""Team reports: volumes, backlog, response and resolution times, FCR, SLA, reopens, CSAT.

`build_report(db, ReportFilter(...), now=...)` returns a `Report`; `Report.to_json()` /
`Report.to_csv_rows()` serialise it and `render_text(report)` draws it with rich (tables,
bar charts and sparklines) for `helpdesk report`. `sparkline` and `bars` are shared with
the console dashboard. Nothing here imports textual.

What each figure means (the period is ``[since, until)``; `until` defaults to `now`,
`since` to 30 days before `until`; `queue` and `agent` filter on the ticket's *current*
queue and assignee, and the breakdowns group by them too):

* **created** (per day, per hour of the day 0-23): tickets whose ``created_at`` is in the
  period. Days and hours are in the calendar's time zone when a calendar is given, else
  UTC (grouped by UTC hour in SQL, then shifted; exact for whole-hour offsets).
* **solved** (per day): tickets now solved or closed whose ``solved_at`` (the last solve)
  is in the period.
* **backlog**: active tickets (new, open, answered, pending, on-hold, postponed) at the end
  of each day (the last day ends at `until`). A ticket is active from its creation until
  it ends (``solved_at``, else ``closed_at``, else for merged ones ``updated_at``), except
  between a solve and a reopen, which the audit log records.
* **first response time**: from ``created_at`` to ``first_response_at`` (the first agent
  reply), for tickets created in the period that have one.
* **resolution time**: from ``created_at`` to ``solved_at``, for the solved tickets above.
* Times are hours: business hours of the given calendar (`store.businesstime`), else
  wall-clock hours. Median (the middle value, the mean of the two middle ones for an even
  count), mean, and p90 by the *nearest-rank* method: the smallest value with at least
  90% of the values at or below it, i.e. ``sorted(values)[ceil(0.9 * n) - 1]``.
* **first-contact resolution**: of the solved tickets, the share with exactly one agent
  reply and no customer follow-up: a first response, and no ``email_out`` or ``email_in``
  article after it (internal notes do not count).
* **SLA compliance**: of the tickets created in the period that have an SLA
  (a ``ticket_sla`` row with a policy), the share none of whose clocks was breached
  (the sticky ``breached`` flag, or a running clock already past due at `now`). None when
  no ticket has an SLA.
* **reopen rate**: of the tickets created in the period that were ever solved, the share
  that went from solved/closed back to an active status at least once (audit rows
  ``action='status'``, ``old_value`` solved/closed, ``new_value`` an active status).
* **CSAT**: ratings given in the period. They are audit rows ``action='csat'`` with
  ``new_value`` the rating ``'1'`` .. ``'5'`` (``field='csat'``; written by the mail sync
  when a customer answers the satisfaction mail); the latest rating of a ticket counts.
  Average and count.

Speed: each query reads only the columns it needs with Core selects (never ORM objects):
the tickets created in the period and those solved in it come back as plain numbers
(epoch seconds, ids, flags), from which the hourly/daily series, medians and p90s are
computed in Python in one pass; counts that need no per-ticket value (backlog at the
bounds, merged tickets) are aggregated in SQL. On SQLite, ranges covering much of the
table are read with a plain scan instead of an index (much faster there). A year on
1,000,000 tickets is timed by ``bench/report_bench.py``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from store import businesstime as bt
from store.engine import Database, StoreError
from store.models import (
    ACTIVE_STATUSES,
    Agent,
    Article,
    ArticleKind,
    AuditEvent,
    Queue,
    Status,
    Ticket,
)
from store.sla_models import TicketSla

__all__ = [
    "DurationStats",
    "Figures",
    "Rate",
    "Report",
    "ReportError",
    "ReportFilter",
    "bars",
    "build_report",
    "percentile",
    "render_text",
    "sparkline",
]

DEFAULT_DAYS = 30
_ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)
_SOLVED = (Status.SOLVED.value, Status.CLOSED.value)
_INACTIVE = (Status.SOLVED.value, Status.CLOSED.value, Status.MERGED.value)
_UNIX_JD = 2440587.5  # julianday('1970-01-01')


class ReportError(StoreError):
    """A report that cannot be built (unknown queue or agent, empty period...)."""


@dataclass
class ReportFilter:
    """Which tickets a report covers; None means no limit (see the module doc for defaults)."""

    since: datetime | None = None
    until: datetime | None = None
    queue: str | None = None
    agent: str | None = None


# --- figures -----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ascending values: ``sorted_values[ceil(q/100*n) - 1]``."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * n - 1e-9))
    return float(sorted_values[min(n, rank) - 1])


@dataclass
class DurationStats:
    """Median, mean and p90 of a set of durations in hours."""

    count: int = 0
    median: float | None = None
    mean: float | None = None
    p90: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> DurationStats:
        xs = sorted(values)
        n = len(xs)
        if n == 0:
            return cls()
        mid = n // 2
        median = xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2
        return cls(n, float(median), sum(xs) / n, percentile(xs, 90))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "median": _round(self.median),
            "mean": _round(self.mean),
            "p90": _round(self.p90),
        }


@dataclass
class Rate:
    """`count` of `base`, and their ratio (None when the base is empty)."""

    count: int = 0
    base: int = 0

    @property
    def rate(self) -> float | None:
        return self.count / self.base if self.base else None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "base": self.base, "rate": _round(self.rate)}


@dataclass
class Figures:
    """The headline figures for the whole filter, or one agent or queue."""

    key: str = ""
    label: str = ""
    created: int = 0
    solved: int = 0
    backlog: int = 0
    first_response: DurationStats = field(default_factory=DurationStats)
    resolution: DurationStats = field(default_factory=DurationStats)
    fcr: Rate = field(default_factory=Rate)
    #: `count` met of `base` tickets with an SLA; `rate` is the compliance.
    sla: Rate = field(default_factory=Rate)
    reopen: Rate = field(default_factory=Rate)
    csat_average: float | None = None
    csat_count: int = 0

    @property
    def sla_compliance(self) -> float | None:
        return self.sla.rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "created": self.created,
            "solved": self.solved,
            "backlog": self.backlog,
            "first_response_hours": self.first_response.to_dict(),
            "resolution_hours": self.resolution.to_dict(),
            "fcr": self.fcr.to_dict(),
            "sla": {
                "met": self.sla.count,
                "with_sla": self.sla.base,
                "compliance": _round(self.sla.rate),
            },
            "reopen": self.reopen.to_dict(),
            "csat": {"average": _round(self.csat_average), "count": self.csat_count},
        }


@dataclass
class Report:
    """Everything `helpdesk report` and the dashboard show."""

    since: datetime
    until: datetime
    now: datetime
    timezone: str
    business_hours: bool
    calendar_name: str | None
    queue: str | None
    agent: str | None
    overall: Figures
    created_per_day: list[tuple[date, int]]
    created_per_hour: list[int]
    solved_per_day: list[tuple[date, int]]
    backlog: list[tuple[date, int]]
    by_agent: list[Figures]
    by_queue: list[Figures]

    @property
    def unit(self) -> str:
        return "business hours" if self.business_hours else "hours"

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": {
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
                "timezone": self.timezone,
                "queue": self.queue,
                "agent": self.agent,
            },
            "generated_at": self.now.isoformat(),
            "time_unit": "business_hours" if self.business_hours else "hours",
            "calendar": self.calendar_name,
            "summary": self.overall.to_dict(),
            "created_per_day": [
                {"date": d.isoformat(), "count": n} for d, n in self.created_per_day
            ],
            "created_per_hour": [
                {"hour": h, "count": n} for h, n in enumerate(self.created_per_hour)
            ],
            "solved_per_day": [{"date": d.isoformat(), "count": n} for d, n in self.solved_per_day],
            "backlog": [{"date": d.isoformat(), "active": n} for d, n in self.backlog],
            "by_agent": [f.to_dict() for f in self.by_agent],
            "by_queue": [f.to_dict() for f in self.by_queue],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (field names are stable: scripts read them)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_csv_rows(self) -> list[list[str]]:
        """Long-format rows ``section, key, metric, value`` (header first) for `--csv`."""
        rows: list[list[str]] = [["section", "key", "metric", "value"]]

        def figures(section: str, f: Figures) -> None:
            for metric, value in _flatten(f.to_dict()):
                if metric in ("key", "label"):
                    continue
                rows.append([section, f.key, metric, _cell(value)])

        rows.append(["period", "", "since", self.since.isoformat()])
        rows.append(["period", "", "until", self.until.isoformat()])
        rows.append(["period", "", "timezone", self.timezone])
        rows.append(
            ["period", "", "time_unit", "business_hours" if self.business_hours else "hours"]
        )
        figures("summary", self.overall)
        for d, n in self.created_per_day:
            rows.append(["created_per_day", d.isoformat(), "count", str(n)])
        for h, n in enumerate(self.created_per_hour):
            rows.append(["created_per_hour", str(h), "count", str(n)])
        for d, n in self.solved_per_day:
            rows.append(["solved_per_day", d.isoformat(), "count", str(n)])
        for d, n in self.backlog:
            rows.append(["backlog", d.isoformat(), "active", str(n)])
        for f in self.by_agent:
            figures("by_agent", f)
        for f in self.by_queue:
            figures("by_queue", f)
        return rows


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((prefix + k, v))
    return out


# --- SQL helpers -------------------------------------------------------------------------


def _epoch(col: Any, dialect: str) -> ColumnElement[float]:
    """Seconds since 1970 (UTC) as a float, NULL for NULL."""
    if dialect == "sqlite":
        # julianday() keeps milliseconds; rounding drops the float noise of the day scale
        return func.round((func.julianday(col) - _UNIX_JD) * 86400.0, 3)
    return cast(func.extract("epoch", col), Float)


def _plain(col: Any, dialect: str) -> Any:
    """`col` such that SQLite will not use an index for it (the unary ``+`` idiom)."""
    if dialect != "sqlite":
        return col
    return literal_column(f"+{col.table.name}.{col.name}", type_=col.type)


def _end_expr() -> ColumnElement[datetime]:
    """When an inactive ticket ended (its last solve, else close, else its merge)."""
    return func.coalesce(Ticket.solved_at, Ticket.closed_at, Ticket.updated_at)


# --- building ----------------------------------------------------------------------------

Key = tuple[int | None, int | None]  # (queue_id, assignee_id)


class _Acc:
    """Per-ticket values collected for one group before the figures are computed."""

    __slots__ = (
        "created",
        "csat",
        "ever_solved",
        "fcr",
        "frt",
        "reopened",
        "res",
        "sla_base",
        "sla_met",
        "solved",
    )

    def __init__(self) -> None:
        self.created = 0
        self.solved = 0
        self.frt: list[float] = []
        self.res: list[float] = []
        self.fcr = 0
        self.sla_base = 0
        self.sla_met = 0
        self.ever_solved = 0
        self.reopened = 0
        self.csat: list[int] = []

    def add(self, other: _Acc) -> None:
        self.created += other.created
        self.solved += other.solved
        self.frt.extend(other.frt)
        self.res.extend(other.res)
        self.fcr += other.fcr
        self.sla_base += other.sla_base
        self.sla_met += other.sla_met
        self.ever_solved += other.ever_solved
        self.reopened += other.reopened
        self.csat.extend(other.csat)

    def figures(self, key: str, label: str, backlog: int) -> Figures:
        return Figures(
            key=key,
            label=label,
            created=self.created,
            solved=self.solved,
            backlog=backlog,
            first_response=DurationStats.of(self.frt),
            resolution=DurationStats.of(self.res),
            fcr=Rate(self.fcr, self.solved),
            sla=Rate(self.sla_met, self.sla_base),
            reopen=Rate(self.reopened, self.ever_solved),
            csat_average=math.fsum(self.csat) / len(self.csat) if self.csat else None,
            csat_count=len(self.csat),
        )


class _Hours:
    """Turns two epoch-second values into a duration in (business) hours."""

    def __init__(self, calendar: bt.Calendar | None) -> None:
        self.calendar = calendar
        self._at: Any = None

    def prepare(self, lo: float, hi: float) -> None:
        if self.calendar is None:
            return
        # The calendar's prefix-summed timeline (store.businesstime): one bisect per moment
        # instead of building datetimes, which matters for a million tickets.
        tl = bt._timeline(self.calendar)
        tl.cover(int(lo * 1_000_000))
        tl.cover(int(hi * 1_000_000))
        self._at = tl.business_at

    def between(self, a: float, b: float) -> float:
        if self._at is None:
            return (b - a) / 3600.0
        at = self._at
        return (at(int(b * 1_000_000)) - at(int(a * 1_000_000))) / 3_600_000_000


async def _ids(session: AsyncSession, flt: ReportFilter) -> tuple[int | None, int | None]:
    queue_id = agent_id = None
    if flt.queue:
        queue_id = (
            await session.execute(
                select(Queue.id).where(func.lower(Queue.name) == flt.queue.strip().lower())
            )
        ).scalar_one_or_none()
        if queue_id is None:
            raise ReportError(f"no queue {flt.queue!r} (see `helpdesk queue list`)")
    if flt.agent:
        agent_id = (
            await session.execute(select(Agent.id).where(Agent.login == flt.agent.strip()))
        ).scalar_one_or_none()
        if agent_id is None:
            raise ReportError(f"no agent {flt.agent!r} (see `helpdesk agent list`)")
    return queue_id, agent_id


async def build_report(
    db: Database,
    flt: ReportFilter,
    *,
    now: datetime,
    calendar: bt.Calendar | None = None,
) -> Report:
    """Compute the report for `flt` as of `now` (business hours when `calendar` is given)."""
    until = flt.until or now
    since = flt.since or until - timedelta(days=DEFAULT_DAYS)
    if since.tzinfo is None or until.tzinfo is None:
        raise ReportError("report bounds must be timezone-aware")
    if since >= until:
        raise ReportError(
            f"empty period: {since:%Y-%m-%d %H:%M} is not before {until:%Y-%m-%d %H:%M}"
        )
    tz: tzinfo = calendar.tz if calendar is not None else UTC
    dialect = db.dialect
    hours = _Hours(calendar)

    async with db.read() as session:
        queue_id, agent_id = await _ids(session, flt)
        # Core execution: the ORM's row handling would cost seconds on a million rows.
        conn = await session.connection()
        conds: list[ColumnElement[bool]] = []
        if queue_id is not None:
            conds.append(Ticket.queue_id == queue_id)
        if agent_id is not None:
            conds.append(Ticket.assignee_id == agent_id)
        scope = and_(true(), *conds)
        queues = {r[0]: r[1] for r in (await conn.execute(select(Queue.id, Queue.name)))}
        agents = {r[0]: r[1] for r in (await conn.execute(select(Agent.id, Agent.login)))}

        # SQLite walks an index and then the table row by row even when most rows match;
        # a plain scan is several times faster then, so big ranges do not offer the index.
        created_col: Any = Ticket.created_at
        if dialect == "sqlite":
            span = int(
                (
                    await conn.execute(
                        select(func.count()).where(
                            Ticket.created_at >= since, Ticket.created_at < until
                        )
                    )
                ).scalar_one()
            )
            total = int((await conn.execute(select(func.max(Ticket.id)))).scalar() or 0)
            if span * 8 > total:
                created_col = _plain(Ticket.created_at, dialect)
        status_col = _plain(Ticket.status, dialect)
        end = _end_expr()

        # 1. Tickets created in the period: when, first response, ever solved, SLA.
        has_sla = TicketSla.policy_id.is_not(None)
        breached = or_(
            TicketSla.breached == true(),
            and_(Ticket.next_due_at.is_not(None), Ticket.next_due_at <= now),
        )
        created_rows = (
            await conn.execute(
                select(
                    Ticket.queue_id,
                    Ticket.assignee_id,
                    _epoch(Ticket.created_at, dialect),
                    _epoch(Ticket.first_response_at, dialect),
                    case((Ticket.solved_at.is_not(None), 1), else_=0),
                    case((has_sla, case((breached, 1), else_=0)), else_=literal(None)),
                )
                .select_from(Ticket)
                .outerjoin(TicketSla, TicketSla.ticket_id == Ticket.id)
                .where(created_col >= since, created_col < until, scope)
            )
        ).all()

        # 2. Tickets solved in the period: resolution time and first-contact resolution
        # (nothing from the customer or an agent after the first agent reply).
        later = (
            select(Article.id)
            .where(
                Article.ticket_id == Ticket.id,
                Article.created_at > Ticket.first_response_at,
                Article.kind.in_((ArticleKind.EMAIL_IN.value, ArticleKind.EMAIL_OUT.value)),
            )
            .correlate(Ticket)
            .exists()
        )
        fcr = case((and_(Ticket.first_response_at.is_not(None), ~later), 1), else_=0)
        solved_rows = (
            await conn.execute(
                select(
                    Ticket.queue_id,
                    Ticket.assignee_id,
                    _epoch(Ticket.created_at, dialect),
                    _epoch(Ticket.solved_at, dialect),
                    fcr,
                ).where(
                    status_col.in_(_SOLVED),
                    Ticket.solved_at >= since,
                    Ticket.solved_at < until,
                    scope,
                )
            )
        ).all()
        # Merged tickets leave the backlog too (few: the status index finds them).
        merged_ends = (
            await conn.execute(
                select(_epoch(end, dialect)).where(
                    Ticket.status == Status.MERGED.value, end >= since, end < until, scope
                )
            )
        ).all()

        # 3. Active at `since` (the backlog's start) and at `until` per queue/assignee.
        def active_at(moment: datetime, col: Any) -> ColumnElement[bool]:
            return and_(
                col < moment,
                or_(status_col.not_in(_INACTIVE), end >= moment),
                scope,
            )

        # (an index on queue/assignee would give the grouping order, row by row: no)
        group_q = _plain(Ticket.queue_id, dialect)
        group_a = _plain(Ticket.assignee_id, dialect)
        start_active = int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(Ticket)
                    .where(active_at(since, Ticket.created_at))
                )
            ).scalar_one()
        )
        end_active = (
            await conn.execute(
                select(group_q, group_a, func.count())
                .where(active_at(until, _plain(Ticket.created_at, dialect)))
                .group_by(group_q, group_a)
            )
        ).all()

        # 4. The audit log: status history of reopened tickets, and CSAT ratings.
        reopened_ids = select(AuditEvent.ticket_id).where(
            AuditEvent.action == "status",
            AuditEvent.old_value.in_(_SOLVED),
            AuditEvent.new_value.in_(_ACTIVE),
        )
        # Audit rows alone (a join would make SQLite walk the audit table by ticket id),
        # then the few tickets they belong to by primary key; the scope applies there.
        raw_audit = (
            await conn.execute(
                select(
                    AuditEvent.ticket_id,
                    AuditEvent.action,
                    AuditEvent.old_value,
                    AuditEvent.new_value,
                    _epoch(AuditEvent.created_at, dialect),
                    AuditEvent.id,
                ).where(
                    or_(
                        and_(
                            AuditEvent.action == "csat",
                            AuditEvent.created_at >= since,
                            AuditEvent.created_at < until,
                        ),
                        and_(AuditEvent.field == "status", AuditEvent.ticket_id.in_(reopened_ids)),
                    ),
                )
            )
        ).all()
        info: dict[int, tuple[int | None, int | None, float, int]] = {}
        wanted = sorted({r[0] for r in raw_audit if r[0] is not None})
        for chunk_at in range(0, len(wanted), 10_000):
            for tid, q, a, c_s, solved_now in await conn.execute(
                select(
                    Ticket.id,
                    Ticket.queue_id,
                    Ticket.assignee_id,
                    _epoch(Ticket.created_at, dialect),
                    case((Ticket.solved_at.is_not(None), 1), else_=0),
                ).where(Ticket.id.in_(wanted[chunk_at : chunk_at + 10_000]), scope)
            ):
                info[tid] = (q, a, c_s, solved_now)
    audit_rows = sorted(
        (r[0], r[4], r[5], r[1], r[2], r[3]) + info[r[0]] for r in raw_audit if r[0] in info
    )

    since_s, until_s = since.timestamp(), until.timestamp()
    groups: dict[Key, _Acc] = defaultdict(_Acc)

    # --- created cohort
    if calendar is not None:  # the span the business-time timeline must cover
        lo = min([since_s] + [r[2] for r in solved_rows])
        hi = max([now.timestamp(), until_s] + [r[3] for r in created_rows if r[3] is not None])
        hours.prepare(lo, hi)
    between = hours.between
    wall = calendar is None
    created_hours: dict[int, int] = defaultdict(int)
    solved_hours: dict[int, int] = defaultdict(int)
    for q, a, c_s, fr_s, ever_solved, sla_breached in created_rows:
        created_hours[int(c_s // 3600)] += 1
        acc = groups[(q, a)]
        acc.created += 1
        if fr_s is not None:
            acc.frt.append((fr_s - c_s) / 3600.0 if wall else between(c_s, fr_s))
        if ever_solved:
            acc.ever_solved += 1
        if sla_breached is not None:
            acc.sla_base += 1
            if not sla_breached:
                acc.sla_met += 1

    # --- solved cohort
    for q, a, c_s, s_s, first_contact in solved_rows:
        solved_hours[int(s_s // 3600)] += 1
        acc = groups[(q, a)]
        acc.solved += 1
        acc.res.append((s_s - c_s) / 3600.0 if wall else between(c_s, s_s))
        if first_contact:
            acc.fcr += 1
    # Sorted per group, the queue/agent/overall lists below are concatenations of sorted
    # runs, which the (run-merging) sort in DurationStats.of handles in near-linear time.
    for acc in groups.values():
        acc.frt.sort()
        acc.res.sort()

    # --- audit: reopen spans (backlog corrections), reopen rate, CSAT
    corrections: list[tuple[float, float, Key]] = []  # (solved at, reopened at, group)
    csat_latest: dict[int, tuple[float, int, Key]] = {}
    current: int | None = None
    state_active = True
    last_end: float | None = None
    reopened_seen = False
    ticket_info: tuple[Key, float, int] | None = None

    def close_ticket() -> None:
        if current is None or not reopened_seen or ticket_info is None:
            return
        key, created_s, solved_now = ticket_info
        if since_s <= created_s < until_s:
            acc = groups[key]
            acc.reopened += 1
            if not solved_now:
                acc.ever_solved += 1  # reopened and not solved again: solved once all the same

    for tid, at_s, _id, action, old, new, q, a, c_s, solved_now in audit_rows:
        if action == "csat":
            try:
                value = int(str(new).strip())
            except ValueError:
                continue
            if 1 <= value <= 5:
                prev = csat_latest.get(tid)
                if prev is None or at_s >= prev[0]:
                    csat_latest[tid] = (at_s, value, (q, a))
            continue
        if tid != current:
            close_ticket()
            current, state_active, last_end, reopened_seen = tid, True, None, False
            ticket_info = ((q, a), c_s, solved_now)
        new_v = str(new or "")
        if new_v in _SOLVED or new_v.startswith("merged"):
            if state_active:
                last_end = at_s
            state_active = False
        elif new_v in _ACTIVE:
            if old in _SOLVED:
                reopened_seen = True
                if not state_active and last_end is not None:
                    corrections.append((last_end, at_s, (q, a)))
            state_active = True
    close_ticket()
    for _at, value, key in csat_latest.values():
        groups[key].csat.append(value)

    # --- series: local days and hours (UTC hour buckets, shifted into the time zone)
    first_day = since.astimezone(tz).date()
    last_day = (until - timedelta(microseconds=1)).astimezone(tz).date()
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    day_index = {d: i for i, d in enumerate(days)}
    created_per_day = [0] * len(days)
    solved_per_day = [0] * len(days)
    per_hour = [0] * 24
    delta = [0] * len(days)  # backlog change within each local day
    local_cache: dict[int, tuple[int | None, int]] = {}

    def local(bucket: int) -> tuple[int | None, int]:
        """(day index, local hour) of a UTC hour bucket (hours since 1970)."""
        hit = local_cache.get(bucket)
        if hit is None:
            moment = datetime.fromtimestamp(bucket * 3600, UTC).astimezone(tz)
            hit = local_cache[bucket] = (day_index.get(moment.date()), moment.hour)
        return hit

    for bucket, n in created_hours.items():
        i, hour = local(bucket)
        per_hour[hour] += n
        if i is not None:
            created_per_day[i] += n
            delta[i] += n
    for bucket, n in solved_hours.items():
        i, _hour = local(bucket)
        if i is not None:
            solved_per_day[i] += n
            delta[i] -= n
    for (merged_s,) in merged_ends:
        i, _hour = local(int(merged_s // 3600))
        if i is not None:
            delta[i] -= 1

    start = start_active
    for e_s, r_s, _key in corrections:
        # inactive during [e, r): the columns counted it active
        if e_s < since_s <= r_s:
            start -= 1
        for moment, sign in ((e_s, -1), (r_s, +1)):
            if since_s <= moment < until_s:
                d = datetime.fromtimestamp(moment, UTC).astimezone(tz).date()
                i = day_index.get(d)
                if i is not None:
                    delta[i] += sign
    backlog: list[tuple[date, int]] = []
    running = start
    for i, d in enumerate(days):
        running += delta[i]
        backlog.append((d, running))

    # --- backlog at `until` per group
    end_backlog: dict[Key, int] = defaultdict(int)
    for q, a, n in end_active:
        end_backlog[(q, a)] += n
    for e_s, r_s, key in corrections:
        if e_s < until_s <= r_s:
            end_backlog[key] -= 1

    overall = _Acc()
    by_queue: dict[int | None, _Acc] = defaultdict(_Acc)
    by_agent: dict[int | None, _Acc] = defaultdict(_Acc)
    backlog_q: dict[int | None, int] = defaultdict(int)
    backlog_a: dict[int | None, int] = defaultdict(int)
    for key in set(groups) | set(end_backlog):
        acc = groups.get(key) or _Acc()
        overall.add(acc)
        by_queue[key[0]].add(acc)
        by_agent[key[1]].add(acc)
        backlog_q[key[0]] += end_backlog.get(key, 0)
        backlog_a[key[1]] += end_backlog.get(key, 0)

    def queue_label(qid: int | None) -> str:
        return queues.get(qid, f"queue {qid}") if qid is not None else "(no queue)"

    def agent_label(aid: int | None) -> str:
        return agents.get(aid, f"agent {aid}") if aid is not None else "(unassigned)"

    queue_figs = [
        by_queue[qid].figures(queue_label(qid), queue_label(qid), backlog_q[qid])
        for qid in by_queue
    ]
    agent_figs = [
        by_agent[aid].figures(agent_label(aid), agent_label(aid), backlog_a[aid])
        for aid in by_agent
    ]
    queue_figs.sort(key=lambda f: (f.key.startswith("("), f.key.lower()))
    agent_figs.sort(key=lambda f: (f.key.startswith("("), f.key.lower()))

    return Report(
        since=since,
        until=until,
        now=now,
        timezone=calendar.timezone if calendar is not None else "UTC",
        business_hours=calendar is not None,
        calendar_name=(calendar.name or None) if calendar is not None else None,
        queue=queue_label(queue_id) if queue_id is not None else None,
        agent=agent_label(agent_id) if agent_id is not None else None,
        overall=overall.figures("all", "All tickets", sum(end_backlog.values())),
        created_per_day=list(zip(days, created_per_day, strict=True)),
        created_per_hour=per_hour,
        solved_per_day=list(zip(days, solved_per_day, strict=True)),
        backlog=backlog,
        by_agent=agent_figs,
        by_queue=queue_figs,
    )


# --- drawing -----------------------------------------------------------------------------

_SPARKS = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, ▁ (lowest, zero) to █ (highest); None is a blank."""
    present = [v for v in values if v is not None]
    if not present:
        return " " * len(values)
    lo = min(0.0, min(present))
    hi = max(present)
    span = hi - lo
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif span <= 0:
            out.append(_SPARKS[0])
        else:
            out.append(_SPARKS[round((v - lo) / span * (len(_SPARKS) - 1))])
    return "".join(out)


def bars(pairs: Sequence[tuple[str, float]], width: int = 40) -> list[str]:
    """Horizontal bars, one line per (label, value): ``label ████▍ value``.

    The longest bar is `width` cells (eighth-cell resolution); negative values draw none.
    """
    if not pairs:
        return []
    label_w = max(len(label) for label, _ in pairs)
    top = max((v for _, v in pairs), default=0)
    lines = []
    for label, value in pairs:
        eighths = round(max(0.0, value) / top * width * 8) if top > 0 else 0
        full, part = divmod(eighths, 8)
        bar = "█" * full + (_EIGHTHS[part] if part else "")
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        lines.append(f"{label.ljust(label_w)} {bar.ljust(width)} {shown}".rstrip())
    return lines


def squeeze(values: Sequence[float], width: int, how: str = "sum") -> list[float]:
    """Shrink a series to at most `width` points (sum, mean or last of each chunk)."""
    n = len(values)
    if n <= width or width <= 0:
        return list(values)
    out: list[float] = []
    for i in range(width):
        chunk = values[i * n // width : (i + 1) * n // width]
        if not chunk:
            continue
        if how == "last":
            out.append(chunk[-1])
        elif how == "mean":
            out.append(sum(chunk) / len(chunk))
        else:
            out.append(float(sum(chunk)))
    return out


def _hours_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 60:.0f}m"
    if value < 48:
        return f"{value:.1f}h"
    return f"{value / 24:.1f}d"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _csat(f: Figures) -> str:
    return "-" if f.csat_average is None else f"{f.csat_average:.2f} ({f.csat_count})"


def render_text(report: Report, width: int = 60) -> Any:
    """The report as rich renderables (a `rich.console.Group`) for the terminal."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    o = report.overall
    scope = []
    if report.queue:
        scope.append(f"queue {report.queue}")
    if report.agent:
        scope.append(f"agent {report.agent}")
    title = Text.assemble(
        ("Report ", "bold"),
        f"{report.since:%Y-%m-%d %H:%M} - {report.until:%Y-%m-%d %H:%M} UTC",
        f"  {', '.join(scope)}" if scope else "",
        f"  (times in {report.unit}"
        + (f", {report.calendar_name}" if report.calendar_name else "")
        + f"; days in {report.timezone})",
    )

    summary = Table(title="Summary", show_header=False, box=None, pad_edge=False)
    summary.add_column("figure", style="bold")
    summary.add_column("value", justify="right")
    summary.add_column("detail", style="dim")
    summary.add_row("Created", str(o.created), "")
    summary.add_row("Solved", str(o.solved), "")
    summary.add_row("Backlog at end", str(o.backlog), "")
    for name, st in (("First response", o.first_response), ("Resolution", o.resolution)):
        summary.add_row(
            name,
            _hours_text(st.median),
            f"median; mean {_hours_text(st.mean)}, p90 {_hours_text(st.p90)}, n={st.count}",
        )
    summary.add_row("First-contact resolution", _pct(o.fcr.rate), f"{o.fcr.count} of {o.fcr.base}")
    summary.add_row(
        "SLA compliance",
        _pct(o.sla.rate) if o.sla.base else "no SLA",
        f"{o.sla.count} of {o.sla.base}" if o.sla.base else "",
    )
    summary.add_row("Reopen rate", _pct(o.reopen.rate), f"{o.reopen.count} of {o.reopen.base}")
    summary.add_row("CSAT", _csat(o), "average (ratings)")

    created = [float(n) for _, n in report.created_per_day]
    solved = [float(n) for _, n in report.solved_per_day]
    backlog = [float(n) for _, n in report.backlog]
    days = len(report.created_per_day)
    per = f"{days} days" + (f", {math.ceil(days / width)} per mark" if days > width else "")
    trend = Table(title=f"Per day ({per})", show_header=False, box=None, pad_edge=False)
    trend.add_column("series", style="bold")
    trend.add_column("chart", style="cyan", no_wrap=True)
    trend.add_column("range", style="dim")
    for name, series, how in (
        ("Created", created, "sum"),
        ("Solved", solved, "sum"),
        ("Backlog", backlog, "last"),
    ):
        trend.add_row(
            name,
            sparkline(squeeze(series, width, how)),
            f"min {min(series, default=0):g} max {max(series, default=0):g}",
        )

    hour_lines = bars([(f"{h:02d}", n) for h, n in enumerate(report.created_per_hour)], 40)
    hours = Text("Created by hour of day\n", style="bold")
    hours.append("\n".join(hour_lines), style="green")

    parts: list[Any] = [title, Text(""), summary, Text(""), trend, Text(""), hours]
    for caption, rows in (("Per agent", report.by_agent), ("Per queue", report.by_queue)):
        if not rows:
            continue
        t = Table(title=caption)
        t.add_column("")
        for col in ("Created", "Solved", "Backlog", "1st resp. (med)", "Resol. (med)"):
            t.add_column(col, justify="right")
        for col in ("FCR", "SLA", "Reopen", "CSAT"):
            t.add_column(col, justify="right")
        for f in rows:
            t.add_row(
                f.label,
                str(f.created),
                str(f.solved),
                str(f.backlog),
                _hours_text(f.first_response.median),
                _hours_text(f.resolution.median),
                _pct(f.fcr.rate),
                _pct(f.sla.rate) if f.sla.base else "-",
                _pct(f.reopen.rate),
                _csat(f),
            )
        parts += [Text(""), t]
    return Group(*parts)
