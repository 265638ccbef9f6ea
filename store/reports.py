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

Speed (a year on 1,000,000 tickets is timed by ``bench/report_bench.py``): the database
does the per-ticket work and Python gets a few rows per (queue, agent) group. The created
and the solved tickets are each read in one grouped query: counts as SQL sums, per-ticket
hours and times as comma-separated text (``group_concat`` / ``string_agg``) that JSON's
parser turns into integers. Times arrive as whole units (milliseconds on SQLite,
microseconds on PostgreSQL; durations subtracted in SQL), hours of the day as UTC hour
numbers. On SQLite both reads are answered by migration 0007's covering indexes
(`CREATED_INDEX`, `SOLVED_INDEX`), which hold the epoch milliseconds of the times as the
very expressions `_units_sql` writes, so no date text is parsed, and are grouped by queue
and agent, so the grouping needs no sort. For a long period the SLA figure walks the SLA
rows and finds each ticket by its key; first-contact resolution is one probe of the
articles' (ticket, kind, time) index per solved ticket, the costliest part, so it runs on a
second connection while the first reads the rest and Python computes with it (the two read
snapshots may be a moment apart). Reopens and CSAT ratings come from two small partial
indexes (`store.models.REOPEN_WHERE`, `CSAT_WHERE`), joined to their tickets by key.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from operator import sub
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Text,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from store import businesstime as bt
from store.engine import Database, StoreError, sqlite_path
from store.models import (
    ACTIVE_STATUSES,
    CSAT_WHERE,
    REOPEN_WHERE,
    Agent,
    Article,
    ArticleKind,
    AuditEvent,
    Queue,
    Status,
    Ticket,
)
from store.sanitize import clean_line
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


def _per_second(dialect: str) -> int:
    """Times come back from SQL as whole units: milliseconds on SQLite (its date functions
    keep milliseconds), microseconds on PostgreSQL. Sums of whole units are exact."""
    return 1000 if dialect == "sqlite" else 1_000_000


def _name(col: Any) -> str:
    return f"{col.table.name}.{col.name}"


def _units_sql(expr: str, dialect: str) -> str:
    if dialect == "sqlite":
        # round() without digits is cheap (with digits it formats text), and exact here:
        # julianday() holds whole milliseconds and is off by far less than half of one.
        return f"CAST(round((julianday({expr}) - 2440587.5) * 86400000.0) AS INTEGER)"
    return f"CAST(round(extract(epoch FROM {expr}) * 1000000) AS BIGINT)"


def _units(expr: str, dialect: str) -> ColumnElement[int]:
    """The SQL datetime `expr` as whole time units since 1970 (UTC), NULL for NULL."""
    return literal_column(_units_sql(expr, dialect), type_=BigInteger)


def _hour_sql(col: Any, dialect: str) -> str:
    """The UTC hour of `col`, counted in hours since 1970 (SQL text)."""
    if dialect == "sqlite":
        return f"CAST({_units_sql(_name(col), dialect)} / 3600000.0 AS INTEGER)"
    return f"CAST(floor(extract(epoch FROM {_name(col)}) / 3600) AS BIGINT)"


def _plain(col: Any, dialect: str) -> Any:
    """`col` such that SQLite will not use an index for it (the unary ``+`` idiom)."""
    if dialect != "sqlite":
        return col
    return literal_column(f"+{_name(col)}", type_=col.type)


def _end_expr() -> ColumnElement[datetime]:
    """When an inactive ticket ended (its last solve, else close, else its merge)."""
    return func.coalesce(Ticket.solved_at, Ticket.closed_at, Ticket.updated_at)


_END_SQL = "coalesce(tickets.solved_at, tickets.closed_at, tickets.updated_at)"


def _driver_sql(stmt: Select, dialect: Any) -> tuple[str, list[Any]]:
    """The SQL text and positional, bind-processed parameters of `stmt`."""
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params()
    params: list[Any] = []
    for name in compiled.positiontup or ():
        value = values[name]
        bind = compiled.binds.get(name)  # (expanded IN values have none: plain strings)
        process = bind.type.bind_processor(dialect) if bind is not None else None
        params.append(process(value) if process is not None else value)
    return compiled.string, params


#: The covering indexes of migration 0007 (SQLite), named in the reads they serve.
CREATED_INDEX = "ix_tickets_report_created"
SOLVED_INDEX = "ix_tickets_report_solved"


def _indexed_by(sql: str, index: str) -> str:
    """`sql` with ``INDEXED BY index`` on its (outermost) ``FROM tickets``."""
    hinted, n = re.subn(r"\bFROM tickets\b", f"FROM tickets INDEXED BY {index}", sql, count=1)
    if not n:  # pragma: no cover - a programming error
        raise AssertionError(f"no FROM tickets to hint in {sql!r}")
    return hinted


async def _fetch(
    conn: AsyncConnection, stmt: Select, index: str | None = None
) -> list[Sequence[Any]]:
    """All rows of `stmt`, as tuples.

    On SQLite straight from the driver, inside the connection's transaction: SQLAlchemy's
    Row objects would double the cost of reading a million rows. `index` names the
    tickets index SQLite must use (its planner misjudges these wide covering indexes
    when a queue or an agent is filtered on); other databases choose for themselves.
    """
    if conn.dialect.name != "sqlite":
        return list((await conn.execute(stmt)).all())
    sql, params = _driver_sql(stmt, conn.dialect)
    if index is not None:
        sql = _indexed_by(sql, index)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    return list(await driver.execute_fetchall(sql, params))


async def _fetch_apart(
    db: Database, conn: AsyncConnection, stmt: Select, index: str | None = None
) -> list[Sequence[Any]]:
    """`_fetch` on another connection of the store (on `conn` for an in-memory SQLite).

    A separate read transaction: its snapshot may be a moment apart from the other
    queries', which a report over a period can live with.
    """
    if db.is_sqlite and sqlite_path(db.url) is None:
        return await _fetch(conn, stmt, index)
    async with db.read() as session:
        return await _fetch(await session.connection(), stmt, index)


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite aggregates lose the column type
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def _share(
    conn: AsyncConnection, col: Any, lo: datetime | None, hi: datetime | None
) -> float:
    """Roughly which share of the tickets has `col` in ``[lo, hi)``.

    From the column's smallest and largest values (two index probes) and an even spread:
    enough to choose between an index range and a plain scan.
    """
    first, last = (await conn.execute(select(func.min(col), func.max(col)))).one()
    if first is None or last is None:
        return 0.0
    first, last = _aware(first), _aware(last)
    a = first if lo is None else max(first, lo)
    b = last if hi is None else min(last, hi)
    total = (last - first).total_seconds()
    if total <= 0:
        return 1.0 if a <= first <= b else 0.0
    return max(0.0, (b - a).total_seconds()) / total


#: Above this (estimated) share of the table SQLite reads a range by a plain scan: walking
#: an index and then the table row by row is several times slower for big ranges.
_SCAN_SHARE = 0.125


# --- building ----------------------------------------------------------------------------

Key = tuple[int | None, int | None]  # (queue_id, assignee_id)


class _Acc:
    """Per-group values collected before the figures are computed (durations in units)."""

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
        self.frt: list[int] = []
        self.res: list[int] = []
        self.fcr = 0
        self.sla_base = 0
        self.sla_met = 0
        self.ever_solved = 0
        self.reopened = 0
        self.csat: list[int] = []

    def add(self, other: _Acc) -> None:
        self.created += other.created
        self.solved += other.solved
        self.frt += other.frt
        self.res += other.res
        self.fcr += other.fcr
        self.sla_base += other.sla_base
        self.sla_met += other.sla_met
        self.ever_solved += other.ever_solved
        self.reopened += other.reopened
        self.csat += other.csat

    def figures(self, key: str, label: str, backlog: int, per_hour: int) -> Figures:
        return Figures(
            key=key,
            label=label,
            created=self.created,
            solved=self.solved,
            backlog=backlog,
            first_response=_stats(self.frt, per_hour),
            resolution=_stats(self.res, per_hour),
            fcr=Rate(self.fcr, self.solved),
            sla=Rate(self.sla_met, self.sla_base),
            reopen=Rate(self.reopened, self.ever_solved),
            csat_average=math.fsum(self.csat) / len(self.csat) if self.csat else None,
            csat_count=len(self.csat),
        )


def _stats(units: list[int], per_hour: int) -> DurationStats:
    """`DurationStats` in hours of durations in whole time units (sorts `units` in place).

    The lists are concatenations of sorted per-group runs, which Python's (run-merging)
    sort handles in near-linear time.
    """
    n = len(units)
    if n == 0:
        return DurationStats()
    units.sort()
    mid = n // 2
    median = units[mid] if n % 2 else (units[mid - 1] + units[mid]) / 2
    p90 = units[max(1, math.ceil(0.9 * n - 1e-9)) - 1]
    return DurationStats(n, median / per_hour, sum(units) / n / per_hour, p90 / per_hour)


def _business_at(calendar: bt.Calendar, per_second: int, lo: int, hi: int) -> Any:
    """A function: moment in time units -> business microseconds since the timeline start.

    The calendar's prefix-summed timeline (`store.businesstime`), covering `lo`..`hi`:
    one bisect per moment instead of building datetimes, which matters for a million.
    """
    to_us = 1_000_000 // per_second
    tl = bt._timeline(calendar)
    tl.cover(lo * to_us)
    tl.cover(hi * to_us)
    starts, ends, cum = tl.starts, tl.ends, tl.cum
    find = bisect_right

    def at(moment: int) -> int:
        us = moment * to_us
        i = find(starts, us) - 1
        if i < 0:
            return 0
        end = ends[i]
        return cum[i] + (us if us < end else end) - starts[i]

    return at


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


@dataclass
class _Rows:
    """What the queries of one report return (times in units, hours since 1970).

    The cohorts come grouped by (queue, agent), their per-ticket values as comma-separated
    text (`_concat`): hours as UTC hour numbers; times as durations, or for business hours
    as ``created,other`` pairs.
    """

    queues: dict[int, str]
    agents: dict[int, str]
    queue_id: int | None
    agent_id: int | None
    #: (queue, agent, created, ever solved, active at until, hours, first response times)
    created: list[Sequence[Any]]
    #: (queue, agent, tickets with an SLA, of which breached)
    sla: list[Sequence[Any]]
    #: (queue, agent, count) of the tickets created before `since` and active at `until`
    older_active: list[Sequence[Any]]
    #: (queue, agent, solved, hours, resolution times)
    solved: list[Sequence[Any]]
    #: (queue, agent, count) of the solved ones resolved at first contact: still running
    #: when the rest is read (its database work overlaps the Python work on the rest)
    fcr: asyncio.Future[list[Sequence[Any]]]
    merged_ends: list[Sequence[Any]]
    start_active: int
    #: (ticket, at, id, action, old, new, queue, agent, created, solved now 1/0): the status
    #: history of reopened tickets and the CSAT rows, with their ticket's values
    audit: list[Sequence[Any]]


def _concat(sql: str, dialect: str) -> ColumnElement[str]:
    """The aggregate of the SQL integer expression `sql` as comma-separated text, NULLs
    skipped (None for none). Order does not matter to the callers: a pair is one item."""
    if dialect == "sqlite":
        return literal_column(f"group_concat({sql})", type_=Text)
    return literal_column(f"string_agg(CAST({sql} AS TEXT), ',')", type_=Text)


def _pair_sql(a: str, b: str) -> str:
    """``a,b`` as text (NULL when either is NULL), one item of a `_concat`."""
    return f"CAST({a} AS TEXT) || ',' || CAST({b} AS TEXT)"


def _ints(text_: str | None) -> list[int]:
    """The integers of a `_concat` (JSON's parser reads them twice as fast as int())."""
    return json.loads(f"[{text_}]") if text_ else []


def _count_if(cond: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((cond, 1), else_=0))


async def _query(
    db: Database, flt: ReportFilter, since: datetime, until: datetime, now: datetime, wall: bool
) -> _Rows:
    dialect = db.dialect
    async with db.read() as session:
        queue_id, agent_id = await _ids(session, flt)
        conn = await session.connection()
        conds: list[ColumnElement[bool]] = []
        if queue_id is not None:
            conds.append(Ticket.queue_id == queue_id)
        if agent_id is not None:
            conds.append(Ticket.assignee_id == agent_id)
        scope = and_(true(), *conds)
        queues = {r[0]: r[1] for r in (await conn.execute(select(Queue.id, Queue.name)))}
        agents = {r[0]: r[1] for r in (await conn.execute(select(Agent.id, Agent.login)))}

        before_col: Any = Ticket.created_at
        sla_join: ColumnElement[bool] = Ticket.id == TicketSla.ticket_id
        if dialect == "sqlite":
            if await _share(conn, Ticket.created_at, None, since) > _SCAN_SHARE:
                before_col = _plain(Ticket.created_at, dialect)
            if await _share(conn, Ticket.created_at, since, until) > _SCAN_SHARE:
                # Walk the SLA rows and find each ticket by its key, not the other way round.
                sla_join = Ticket.id == _plain(TicketSla.ticket_id, dialect)
        status_col = _plain(Ticket.status, dialect)
        end = _end_expr()
        active_at_until = or_(status_col.not_in(_INACTIVE), end >= until)
        group = (Ticket.queue_id, Ticket.assignee_id)
        solved_in_period = and_(
            status_col.in_(_SOLVED), Ticket.solved_at >= since, Ticket.solved_at < until, scope
        )

        # First-contact resolution (no mail from the customer or an agent after the first
        # agent reply): one index probe per solved ticket, the costliest part, so it runs
        # on a connection of its own while this one reads the rest and `build_report`
        # computes with it (it returns a few rows).
        later = (
            select(Article.id)
            .where(
                Article.ticket_id == Ticket.id,
                Article.kind.in_((ArticleKind.EMAIL_IN.value, ArticleKind.EMAIL_OUT.value)),
                Article.created_at > Ticket.first_response_at,
                # Mail after the solve (a satisfaction survey and its answer) is not a
                # second contact about the problem.
                Article.created_at <= Ticket.solved_at,
            )
            .correlate(Ticket)
            .exists()
        )
        fcr_task = asyncio.ensure_future(
            _fetch_apart(
                db,
                conn,
                select(*group, func.count())
                .where(solved_in_period, Ticket.first_response_at.is_not(None), ~later)
                .group_by(*group),
                SOLVED_INDEX,
            )
        )

        try:
            # 1. Tickets created in the period, per group: counts, UTC hours, first response
            # times (on SQLite all from migration 0007's covering index, whose epoch expressions
            # are the very `_units` ones: no date is parsed).
            c_u = _units_sql(_name(Ticket.created_at), dialect)
            f_u = _units_sql(_name(Ticket.first_response_at), dialect)
            created = await _fetch(
                conn,
                select(
                    *group,
                    func.count(),
                    _count_if(Ticket.solved_at.is_not(None)),
                    _count_if(active_at_until),
                    _concat(_hour_sql(Ticket.created_at, dialect), dialect),
                    _concat(f"{f_u} - {c_u}" if wall else _pair_sql(c_u, f_u), dialect),
                )
                .where(Ticket.created_at >= since, Ticket.created_at < until, scope)
                .group_by(*group),
                CREATED_INDEX,
            )
            # Their SLA: breached (sticky flag, or a running clock past due at `now`) or met.
            breached = or_(
                TicketSla.breached == true(),
                and_(Ticket.next_due_at.is_not(None), Ticket.next_due_at <= now),
            )
            sla_rows = await _fetch(
                conn,
                select(*group, func.count(), _count_if(breached))
                .select_from(TicketSla)
                .join(Ticket, sla_join)
                .where(
                    TicketSla.policy_id.is_not(None),
                    Ticket.created_at >= since,
                    Ticket.created_at < until,
                    scope,
                )
                .group_by(*group),
            )
            # Older tickets still active at `until` (the backlog per group).
            older_active = await _fetch(
                conn,
                select(*group, func.count())
                .where(before_col < since, active_at_until, scope)
                .group_by(*group),
            )

            # 2. Tickets solved in the period, per group: UTC hours and resolution times.
            s_u = _units_sql(_name(Ticket.solved_at), dialect)
            solved = await _fetch(
                conn,
                select(
                    *group,
                    func.count(),
                    _concat(_hour_sql(Ticket.solved_at, dialect), dialect),
                    _concat(f"{s_u} - {c_u}" if wall else _pair_sql(c_u, s_u), dialect),
                )
                .where(solved_in_period)
                .group_by(*group),
                SOLVED_INDEX,
            )
            # Merged tickets leave the backlog too (few: the status index finds them).
            merged_ends = await _fetch(
                conn,
                select(_units(_END_SQL, dialect)).where(
                    Ticket.status == Status.MERGED.value, end >= since, end < until, scope
                ),
            )

            # 3. Active at `since`: the backlog's start.
            start_active = int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(Ticket)
                        .where(
                            before_col < since,
                            or_(status_col.not_in(_INACTIVE), end >= since),
                            scope,
                        )
                    )
                ).scalar_one()
            )

            # 4. The audit log: the status history of the tickets reopened since `since`
            # (an earlier reopen changes nothing in the period; the partial index holds only
            # reopens), and the CSAT ratings given in the period; each with its ticket's
            # values, found by primary key (the scope applies there).
            audit_cols = (
                AuditEvent.ticket_id,
                _units(_name(AuditEvent.created_at), dialect),
                AuditEvent.id,
                AuditEvent.action,
                AuditEvent.old_value,
                AuditEvent.new_value,
                *group,
                _units(_name(Ticket.created_at), dialect),
                case((Ticket.solved_at.is_not(None), 1), else_=0),
            )
            reopened = select(AuditEvent.ticket_id).where(
                text(REOPEN_WHERE), AuditEvent.created_at >= since
            )
            audit = await _fetch(
                conn,
                select(*audit_cols)
                .join(Ticket, Ticket.id == AuditEvent.ticket_id)
                .where(
                    AuditEvent.ticket_id.in_(reopened.scalar_subquery()),
                    AuditEvent.field == "status",
                    scope,
                ),
            )
            audit += await _fetch(
                conn,
                select(*audit_cols)
                .join(Ticket, Ticket.id == AuditEvent.ticket_id)
                .where(
                    text(CSAT_WHERE),  # literal: the partial index's condition
                    AuditEvent.created_at >= since,
                    AuditEvent.created_at < until,
                    scope,
                ),
            )
            if db.is_sqlite and sqlite_path(db.url) is None:
                await fcr_task  # it runs on this session's connection
        except BaseException:
            fcr_task.cancel()
            raise
    return _Rows(
        queues=queues,
        agents=agents,
        queue_id=queue_id,
        agent_id=agent_id,
        created=created,
        sla=sla_rows,
        older_active=older_active,
        solved=solved,
        fcr=fcr_task,
        merged_ends=merged_ends,
        start_active=start_active,
        audit=audit,
    )


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
    rows = await _query(db, flt, since, until, now, calendar is None)

    per_second = _per_second(db.dialect)
    hour_units = 3600 * per_second
    since_u = round(since.timestamp() * per_second)
    until_u = round(until.timestamp() * per_second)
    groups: dict[Key, _Acc] = defaultdict(_Acc)
    end_backlog: Counter[Key] = Counter()
    for q, a, n in rows.older_active:
        end_backlog[(q, a)] += n

    # --- created and solved cohorts: counts from SQL, hours and times parsed from text
    created_hours: Counter[str] = Counter()
    solved_hours: Counter[str] = Counter()
    frt_times: dict[Key, list[int]] = {}
    res_times: dict[Key, list[int]] = {}
    for q, a, n, ever, active, hours, times in rows.created:
        acc = groups[(q, a)]
        acc.created += n
        acc.ever_solved += ever
        if active:
            end_backlog[(q, a)] += active
        if hours:
            created_hours.update(hours.split(","))
        frt_times[(q, a)] = _ints(times)
    for q, a, n, breached in rows.sla:
        acc = groups[(q, a)]
        acc.sla_base += n
        acc.sla_met += n - breached
    for q, a, n, hours, times in rows.solved:
        groups[(q, a)].solved += n
        if hours:
            solved_hours.update(hours.split(","))
        res_times[(q, a)] = _ints(times)

    if calendar is None:
        per_hour = hour_units
    else:
        # The times are (created, other) pairs: durations in business time.
        per_hour = 3_600_000_000  # business microseconds
        starts = [xs[0::2] for xs in res_times.values()]
        firsts = [xs[1::2] for xs in frt_times.values()]
        lo = min(since_u, min((min(xs) for xs in starts if xs), default=since_u))
        hi = max(
            until_u,
            round(now.timestamp() * per_second),
            max((max(xs) for xs in firsts if xs), default=until_u),
        )
        at = _business_at(calendar, per_second, lo, hi)
        for times_of in (frt_times, res_times):
            for key, xs in times_of.items():
                times_of[key] = list(map(sub, map(at, xs[1::2]), map(at, xs[0::2])))
    # Sorted per group, the queue/agent/overall lists below are concatenations of sorted
    # runs, which the (run-merging) sort in _stats handles in near-linear time.
    for key, values in frt_times.items():
        values.sort()
        groups[key].frt = values
    for key, values in res_times.items():
        values.sort()
        groups[key].res = values

    # --- audit: reopen spans (backlog corrections), reopen rate, CSAT
    corrections: list[tuple[int, int, Key]] = []  # (solved at, reopened at, group)
    csat_latest: dict[int, tuple[int, int, Key]] = {}
    current: int | None = None
    state_active = True
    last_end: int | None = None
    reopened_seen = False
    ticket_info: tuple[Key, int, int] | None = None

    def close_ticket() -> None:
        if current is None or not reopened_seen or ticket_info is None:
            return
        key, created_u, solved_now = ticket_info
        if since_u <= created_u < until_u:
            acc = groups[key]
            acc.reopened += 1
            if not solved_now:
                acc.ever_solved += 1  # reopened and not solved again: solved once all the same

    audit_rows = sorted(map(tuple, rows.audit))
    for tid, at_u, _id, action, old, new, q, a, c_u, solved_now in audit_rows:
        if action == "csat":
            try:
                value = int(str(new).strip())
            except ValueError:
                continue
            if 1 <= value <= 5:
                prev = csat_latest.get(tid)
                if prev is None or at_u >= prev[0]:
                    csat_latest[tid] = (at_u, value, (q, a))
            continue
        if tid != current:
            close_ticket()
            current, state_active, last_end, reopened_seen = tid, True, None, False
            ticket_info = ((q, a), c_u, solved_now)
        new_v = str(new or "")
        if new_v in _SOLVED or new_v.startswith("merged"):
            if state_active:
                last_end = at_u
            state_active = False
        elif new_v in _ACTIVE:
            if old in _SOLVED:
                reopened_seen = True
                if not state_active and last_end is not None:
                    corrections.append((last_end, at_u, (q, a)))
            state_active = True
    close_ticket()
    for _at, value, key in csat_latest.values():
        groups[key].csat.append(value)
    for q, a, n in await rows.fcr:
        groups[(q, a)].fcr += n

    # --- series: local days and hours (UTC hour buckets, shifted into the time zone)
    first_day = since.astimezone(tz).date()
    last_day = (until - timedelta(microseconds=1)).astimezone(tz).date()
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    day_index = {d: i for i, d in enumerate(days)}
    created_per_day = [0] * len(days)
    solved_per_day = [0] * len(days)
    per_hour_of_day = [0] * 24
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
        i, hour = local(int(bucket))
        per_hour_of_day[hour] += n
        if i is not None:
            created_per_day[i] += n
            delta[i] += n
    for bucket, n in solved_hours.items():
        i, _hour = local(int(bucket))
        if i is not None:
            solved_per_day[i] += n
            delta[i] -= n
    for (merged_u,) in rows.merged_ends:
        i, _hour = local(merged_u // hour_units)
        if i is not None:
            delta[i] -= 1

    start = rows.start_active
    for e_u, r_u, _key in corrections:
        # inactive during [e, r): the columns counted it active
        if e_u < since_u <= r_u:
            start -= 1
        for moment, sign in ((e_u, -1), (r_u, +1)):
            if since_u <= moment < until_u:
                d = datetime.fromtimestamp(moment / per_second, UTC).astimezone(tz).date()
                i = day_index.get(d)
                if i is not None:
                    delta[i] += sign
    backlog: list[tuple[date, int]] = []
    running = start
    for i, d in enumerate(days):
        running += delta[i]
        backlog.append((d, running))

    # --- backlog at `until` per group
    for e_u, r_u, key in corrections:
        if e_u < until_u <= r_u:
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

    queues, agents = rows.queues, rows.agents

    def queue_label(qid: int | None) -> str:
        return queues.get(qid, f"queue {qid}") if qid is not None else "(no queue)"

    def agent_label(aid: int | None) -> str:
        return agents.get(aid, f"agent {aid}") if aid is not None else "(unassigned)"

    queue_figs = [
        by_queue[qid].figures(queue_label(qid), queue_label(qid), backlog_q[qid], per_hour)
        for qid in by_queue
    ]
    agent_figs = [
        by_agent[aid].figures(agent_label(aid), agent_label(aid), backlog_a[aid], per_hour)
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
        queue=queue_label(rows.queue_id) if rows.queue_id is not None else None,
        agent=agent_label(rows.agent_id) if rows.agent_id is not None else None,
        overall=overall.figures("all", "All tickets", sum(end_backlog.values()), per_hour),
        created_per_day=list(zip(days, created_per_day, strict=True)),
        created_per_hour=per_hour_of_day,
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


def hours_text(value: float | None) -> str:
    """A duration in hours for people: '-', '45m', '4.2h', '3.1d'."""
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
            hours_text(st.median),
            f"median; mean {hours_text(st.mean)}, p90 {hours_text(st.p90)}, n={st.count}",
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
                Text(clean_line(f.label)),
                str(f.created),
                str(f.solved),
                str(f.backlog),
                hours_text(f.first_response.median),
                hours_text(f.resolution.median),
                _pct(f.fcr.rate),
                _pct(f.sla.rate) if f.sla.base else "-",
                _pct(f.reopen.rate),
                _csat(f),
            )
        parts += [Text(""), t]
    return Group(*parts)
