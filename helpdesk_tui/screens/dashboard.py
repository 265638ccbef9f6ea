"""The report dashboard: the team's figures, charts and per-queue/per-agent tables, filtered."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from helpdesk_tui.commands import PaletteCommand, ScreenCommands
from helpdesk_tui.screens.confirm import ChoiceScreen, PromptScreen
from helpdesk_tui.text import notify_safe, safe_line
from store.engine import Database, StoreError
from store.reports import (
    Figures,
    Report,
    ReportFilter,
    build_report,
    hours_text,
    sparkline,
    squeeze,
)
from store.sanitize import clean_line

#: The period presets (days back from now), in the order of the period picker and keys 1-4.
PRESETS: tuple[int, ...] = (7, 30, 90, 365)
DEFAULT_DAYS = 30
#: Below this width the charts stack and the figure cards go three to a row.
NARROW = 110
#: Rows of the hour-of-day column chart.
HOUR_ROWS = 5
_COLUMN_PARTS = " ▁▂▃▄▅▆▇█"


# --------------------------------------------------------------------------- the filter
@dataclass(frozen=True)
class DashboardFilter:
    """What the dashboard shows: a preset (days back) or a custom range, queue, agent, calendar."""

    days: int | None = DEFAULT_DAYS
    #: A custom range (since, until) in UTC; used when `days` is None.
    since: datetime | None = None
    until: datetime | None = None
    queue: str | None = None
    agent: str | None = None
    calendar: str | None = None

    def report_filter(self, now: datetime) -> ReportFilter:
        """The store's filter for this dashboard filter as of `now`."""
        if self.days is not None:
            return ReportFilter(
                since=now - timedelta(days=self.days), until=now, queue=self.queue, agent=self.agent
            )
        return ReportFilter(since=self.since, until=self.until, queue=self.queue, agent=self.agent)

    def period_text(self) -> str:
        if self.days is not None:
            return f"last {self.days} days"
        since = f"{self.since:%Y-%m-%d}" if self.since else "…"
        until = f"{self.until - timedelta(days=1):%Y-%m-%d}" if self.until else "now"
        return f"{since} – {until}"


_DAYS = re.compile(r"^(\d{1,4})\s*(d|w)$")


def parse_period(text: str, now: datetime) -> DashboardFilter:
    """`7d`, `4w`, `2026-10-01..2026-10-31` (both days included), `2026-10-01..` -> a filter.

    Dates are UTC days. Raises ValueError saying what is accepted.
    """
    value = text.strip().lower()
    m = _DAYS.match(value)
    if m:
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
        if days <= 0:
            raise ValueError("the period must be at least one day")
        return DashboardFilter(days=days)
    if ".." not in value:
        raise ValueError(
            f"cannot read the period {text!r}; use 30d, 4w, 2026-10-01..2026-10-31 or 2026-10-01.."
        )
    left, _, right = value.partition("..")
    try:
        since = _day(left) if left.strip() else None
        until = _day(right) + timedelta(days=1) if right.strip() else None
    except ValueError:
        raise ValueError(f"cannot read the dates in {text!r}; use YYYY-MM-DD..YYYY-MM-DD") from None
    if since is None:
        raise ValueError("the period needs a first day, e.g. 2026-10-01..")
    if until is not None and until <= since:
        raise ValueError("the period ends before it starts")
    if since >= now:
        raise ValueError("the period starts in the future")
    return DashboardFilter(days=None, since=since, until=until)


def _day(value: str) -> datetime:
    return datetime.combine(date.fromisoformat(value.strip()), datetime.min.time(), UTC)


# --------------------------------------------------------------------------- formatting
def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def csat_text(f: Figures) -> str:
    return "-" if f.csat_average is None else f"{f.csat_average:.1f}"


@dataclass(frozen=True)
class Card:
    """One headline figure: a label, the value, a dim detail."""

    ident: str
    label: str
    value: str
    detail: str


def cards(f: Figures) -> list[Card]:
    """The headline figures of `f`, in display order."""
    sla_value = pct(f.sla.rate) if f.sla.base else "no SLA"
    return [
        Card("created", "Created", str(f.created), "tickets"),
        Card("solved", "Solved", str(f.solved), "tickets"),
        Card("backlog", "Backlog", str(f.backlog), "active at end"),
        Card(
            "frt",
            "First response",
            hours_text(f.first_response.median),
            f"p90 {hours_text(f.first_response.p90)}",
        ),
        Card(
            "resolution",
            "Resolution",
            hours_text(f.resolution.median),
            f"p90 {hours_text(f.resolution.p90)}",
        ),
        Card("fcr", "First contact", pct(f.fcr.rate), f"{f.fcr.count} of {f.fcr.base}"),
        Card("sla", "SLA met", sla_value, f"{f.sla.count} of {f.sla.base}" if f.sla.base else ""),
        Card("reopen", "Reopened", pct(f.reopen.rate), f"{f.reopen.count} of {f.reopen.base}"),
        Card("csat", "CSAT", csat_text(f), f"{f.csat_count} ratings"),
    ]


def columns(values: Sequence[float], rows: int = HOUR_ROWS) -> list[str]:
    """A vertical column chart, top row first: one character per value, eighth-row steps."""
    top = max(values, default=0)
    lines = []
    for row in range(rows - 1, -1, -1):
        line = []
        for v in values:
            eighths = round(max(0.0, v) / top * rows * 8) if top > 0 else 0
            if v > 0 and eighths == 0:
                eighths = 1  # a non-zero hour never looks empty
            fill = min(8, max(0, eighths - row * 8))
            line.append(_COLUMN_PARTS[fill])
        lines.append("".join(line))
    return lines


def day_chart(report: Report, width: int) -> Content:
    """Created, solved and backlog per day as sparklines `width` cells wide at most."""
    created = [float(n) for _, n in report.created_per_day]
    solved = [float(n) for _, n in report.solved_per_day]
    backlog = [float(n) for _, n in report.backlog]
    days = len(created)
    chart_w = max(8, width - 9 - 20)
    per = -(-days // chart_w) if days > chart_w else 1
    title = f"Per day ({days} days" + (f", {per} per mark)" if per > 1 else ")")
    parts: list[tuple[str, str] | str] = [(title, "bold"), "\n"]
    for name, series, how, style in (
        ("Created", created, "sum", "$accent"),
        ("Solved", solved, "sum", "$success"),
        ("Backlog", backlog, "last", "$warning"),
    ):
        parts += [(f"{name:<8} ", "bold"), (sparkline(squeeze(series, chart_w, how)), style)]
        if how == "last":
            first = int(series[0]) if series else 0
            last = int(series[-1]) if series else 0
            parts.append((f" {first} → {last}", "$text-muted"))
        else:
            top = int(max(series, default=0))
            parts.append((f" {int(sum(series))} total, max {top}", "$text-muted"))
        parts.append("\n")
    return Content.assemble(*parts[:-1])


def hour_chart(report: Report) -> Content:
    """Tickets created per hour of the day: columns 2 cells wide, hour marks below."""
    values = [float(n) for n in report.created_per_hour]
    parts: list[tuple[str, str] | str] = [
        (f"Created by hour of day ({report.timezone})", "bold"),
        "\n",
    ]
    top = int(max(values, default=0))
    for i, line in enumerate(columns(values)):
        parts.append((f"{top:>4} " if i == 0 else "     ", "$text-muted"))
        parts.append((" ".join(line), "$success"))
        parts.append("\n")
    axis = "".join(f"{h:<6}" for h in range(0, 24, 3))
    parts.append(("     " + axis.rstrip(), "$text-muted"))
    return Content.assemble(*parts)


def breakdown(title: str, rows: Iterable[Figures], *, narrow: bool) -> Table:
    """A per-queue or per-agent table; names come from the store and are shown as plain text."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        expand=True,
        box=None,
        padding=(0, 1),
        header_style="bold",
    )
    table.add_column("", no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
    headers = ["New", "Solved", "Backlog", "1st resp", "Resol.", "FCR", "SLA", "Reopen", "CSAT"]
    if narrow:
        headers = ["New", "Solved", "Backlog", "1st resp", "Resol.", "SLA", "CSAT"]
    for h in headers:
        table.add_column(h, justify="right", no_wrap=True)
    for f in rows:
        cells = {
            "New": str(f.created),
            "Solved": str(f.solved),
            "Backlog": str(f.backlog),
            "1st resp": hours_text(f.first_response.median),
            "Resol.": hours_text(f.resolution.median),
            "FCR": pct(f.fcr.rate),
            "SLA": pct(f.sla.rate) if f.sla.base else "-",
            "Reopen": pct(f.reopen.rate),
            "CSAT": csat_text(f) + (f" ({f.csat_count})" if f.csat_count else ""),
        }
        table.add_row(safe_line(f.label), *(Text(cells[h]) for h in headers))
    return table


# --------------------------------------------------------------------------- computing
async def compute(url: str, flt: DashboardFilter, now: datetime) -> Report:
    """The report for `flt` on its own engine (run in a worker thread: never on the UI loop)."""
    db = Database(url, check_fs=False)
    try:
        calendar = None
        if flt.calendar:
            from store import sla

            rows = {r.name: r for r in await sla.list_calendars(db)}
            if flt.calendar not in rows:
                raise StoreError(f"no calendar {flt.calendar!r}")
            calendar = sla.calendar_of(rows[flt.calendar])
        return await build_report(db, flt.report_filter(now), now=now, calendar=calendar)
    finally:
        await db.dispose()


# --------------------------------------------------------------------------- the screen
class DashboardScreen(Screen[None]):
    """Figures, charts and tables of `store.reports` for a period, queue and agent."""

    CSS_PATH = "../dashboard.tcss"
    HELP_TITLE = "Dashboard"
    PALETTE_PREFIX = "Dashboard"
    COMMANDS = {ScreenCommands}
    AUTO_FOCUS = "#dash-body"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "r", "refresh", "Refresh", id="dashboard.refresh", tooltip="Compute the report again"
        ),
        Binding(
            "p",
            "period",
            "Period",
            id="dashboard.period",
            tooltip="Choose the period: last 7/30/90/365 days or a custom range",
        ),
        Binding(
            "f", "pick_queue", "Queue", id="dashboard.queue", tooltip="Only one queue (or all)"
        ),
        Binding(
            "a",
            "pick_agent",
            "Agent",
            id="dashboard.agent",
            tooltip="Only one agent's tickets (or all)",
        ),
        Binding(
            "c",
            "pick_calendar",
            "Hours",
            show=False,
            id="dashboard.calendar",
            tooltip="Measure times in a calendar's business hours (or wall-clock hours)",
        ),
        Binding(
            "x",
            "clear_filters",
            "Clear",
            show=False,
            id="dashboard.clear",
            tooltip="Back to the last 30 days, all queues and agents",
        ),
        *(
            Binding(
                str(i + 1),
                f"preset({days})",
                f"{days}d",
                show=False,
                id=f"dashboard.preset_{days}",
                tooltip=f"The last {days} days",
            )
            for i, days in enumerate(PRESETS)
        ),
        Binding("j", "scroll(1)", "Down", show=False, id="dashboard.down", tooltip="Scroll down"),
        Binding("k", "scroll(-1)", "Up", show=False, id="dashboard.up", tooltip="Scroll up"),
    ]

    #: Presence: the dashboard is not on a ticket.
    presence_ticket_id: int | None = None
    presence_mode = "viewing"

    def __init__(self, flt: DashboardFilter | None = None) -> None:
        super().__init__()
        #: What is shown (or being computed).
        self.filter = flt or DashboardFilter()
        #: The report on screen (None before the first one arrives).
        self.report: Report | None = None
        #: True while a report is being computed.
        self.computing = False
        #: The last error, shown instead of the figures.
        self.error: str | None = None
        self._serial = 0

    # ----------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dash-body"):
            yield Static(id="dash-title")
            yield Static(id="dash-error")
            with Horizontal(id="dash-cards"):
                for card in cards(Figures()):
                    yield Static(id=f"card-{card.ident}", classes="card")
            with Horizontal(id="dash-charts"):
                yield Static(id="dash-days")
                yield Static(id="dash-hours")
            yield Static(id="dash-queues", classes="breakdown")
            yield Static(id="dash-agents", classes="breakdown")
        yield Footer()

    @property
    def narrow(self) -> bool:
        return self.size.width < NARROW

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < NARROW, "-narrow")
        self.refresh_report()

    def on_resize(self) -> None:
        self.set_class(self.narrow, "-narrow")
        self._draw()

    # ----------------------------------------------------------------- computing
    def refresh_report(self) -> None:
        """Compute the report for the current filter in a worker; the figures follow."""
        self._serial += 1
        self.computing = True
        self.error = None
        self.query_one("#dash-body").loading = self.report is None
        self._draw_title()
        app: Any = self.app
        self._compute(app.service.db.url, self.filter, app.service.clock(), self._serial)

    @work(thread=True, exclusive=True, group="dashboard-report", exit_on_error=False)
    def _compute(self, url: str, flt: DashboardFilter, now: datetime, serial: int) -> None:
        # A thread with its own loop and engine: a year on a big store takes seconds of CPU.
        try:
            report = asyncio.run(compute(url, flt, now))
        except (StoreError, ValueError, OSError) as exc:
            self.app.call_from_thread(self._failed, str(exc), serial)
        except Exception as exc:  # noqa: BLE001 - shown as one line, the console stays up
            self.app.call_from_thread(self._failed, f"{type(exc).__name__}: {exc}", serial)
        else:
            self.app.call_from_thread(self._arrived, report, serial)

    def _arrived(self, report: Report, serial: int) -> None:
        if serial != self._serial or not self.is_mounted:
            return  # an older filter's report, or the screen was closed meanwhile
        self.report = report
        self.computing = False
        self.query_one("#dash-body").loading = False
        self._draw()

    def _failed(self, message: str, serial: int) -> None:
        if serial != self._serial or not self.is_mounted:
            return
        self.computing = False
        self.error = message
        self.query_one("#dash-body").loading = False
        notify_safe(self, message, title="Report failed", severity="error")
        self._draw()

    # ----------------------------------------------------------------- drawing
    def _draw_title(self) -> None:
        flt = self.filter
        parts: list[tuple[str, str] | str] = [("Report ", "bold"), flt.period_text()]
        if self.report is not None:
            r = self.report
            span = f"  {r.since:%Y-%m-%d %H:%M} – {r.until:%Y-%m-%d %H:%M} UTC"
            parts.append((span, "$text-muted"))
        # Queue, agent and calendar names come from the store: literal text, cleaned.
        parts += [
            ("\nqueue ", "$text-muted"),
            (clean_line(flt.queue or "all"), "bold"),
            ("  agent ", "$text-muted"),
            (clean_line(flt.agent or "all"), "bold"),
            ("  times in ", "$text-muted"),
        ]
        if flt.calendar:
            parts.append((f"{clean_line(flt.calendar)} business hours", "bold"))
        else:
            parts.append(("hours", "bold"))
        if self.computing:
            parts.append(("  computing…", "italic $warning"))
        self.query_one("#dash-title", Static).update(Content.assemble(*parts))

    def _draw(self) -> None:
        if not self.is_mounted:
            return
        self._draw_title()
        error = self.query_one("#dash-error", Static)
        error.display = self.error is not None
        error.update(Content(self.error or ""))
        report = self.report
        if report is None:
            return
        for card in cards(report.overall):
            widget = self.query_one(f"#card-{card.ident}", Static)
            widget.border_title = card.label
            widget.update(
                Content.assemble((card.value, "bold"), ("  " + card.detail, "dim"))
                if card.detail
                else Content.styled(card.value, "bold")
            )
        width = self.size.width - 2
        day_width = width if self.narrow else max(30, width - 56)
        self.query_one("#dash-days", Static).update(day_chart(report, day_width))
        self.query_one("#dash-hours", Static).update(hour_chart(report))
        self.query_one("#dash-queues", Static).update(
            breakdown("Per queue", report.by_queue, narrow=self.narrow)
        )
        self.query_one("#dash-agents", Static).update(
            breakdown("Per agent", report.by_agent, narrow=self.narrow)
        )

    # ----------------------------------------------------------------- filters
    def set_filter(self, flt: DashboardFilter) -> None:
        """Show the report for `flt` (computed now)."""
        self.filter = flt
        self.refresh_report()

    def action_refresh(self) -> None:
        self.refresh_report()

    def action_preset(self, days: int) -> None:
        self.set_filter(replace(self.filter, days=days, since=None, until=None))

    def action_clear_filters(self) -> None:
        self.set_filter(DashboardFilter())

    def action_scroll(self, lines: int) -> None:
        self.query_one("#dash-body", VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_period(self) -> None:
        choices: list[tuple[int, str]] = [(d, f"Last {d} days") for d in PRESETS]
        choices.append((0, "Custom range…"))

        def chosen(days: int | None) -> None:
            if days is None:
                return
            if days:
                self.action_preset(days)
            else:
                self._ask_range()

        self.app.push_screen(ChoiceScreen("Period", choices, current=self.filter.days or 0), chosen)

    def _ask_range(self) -> None:
        app: Any = self.app
        now = app.service.clock()

        def check(value: str) -> str | None:
            try:
                parse_period(value, now)
            except ValueError as exc:
                return str(exc)
            return None

        def entered(value: str | None) -> None:
            if not value:
                return
            period = parse_period(value, now)
            self.set_filter(
                replace(self.filter, days=period.days, since=period.since, until=period.until)
            )

        self.app.push_screen(
            PromptScreen(
                "Period",
                placeholder="2026-10-01..2026-10-31",
                help="First..last day (UTC, both included), first.. (until now), or 30d, 4w",
                validate=check,
            ),
            entered,
        )

    async def action_pick_queue(self) -> None:
        app: Any = self.app
        try:
            queues = await app.service.list_queues()
        except StoreError as exc:
            notify_safe(self, str(exc), severity="error")
            return
        choices: list[tuple[str, Text | str]] = [("", "All queues")]
        choices += [(q.name, safe_line(q.name)) for q in queues]

        def chosen(name: str | None) -> None:
            if name is not None:
                self.set_filter(replace(self.filter, queue=name or None))

        self.app.push_screen(
            ChoiceScreen("Queue", choices, current=self.filter.queue or ""), chosen
        )

    async def action_pick_agent(self) -> None:
        app: Any = self.app
        try:
            agents = await app.service.list_agents(include_inactive=True)
        except StoreError as exc:
            notify_safe(self, str(exc), severity="error")
            return
        choices: list[tuple[str, Text | str]] = [("", "All agents")]
        for agent in agents:
            label = safe_line(agent.login, style="bold")
            label.append("  ")
            label.append_text(safe_line(agent.name))
            if not agent.active:
                label.append("  (inactive)", style="dim")
            choices.append((agent.login, label))

        def chosen(login: str | None) -> None:
            if login is not None:
                self.set_filter(replace(self.filter, agent=login or None))

        self.app.push_screen(
            ChoiceScreen("Agent", choices, current=self.filter.agent or ""), chosen
        )

    async def action_pick_calendar(self) -> None:
        from store import sla

        app: Any = self.app
        try:
            rows = await sla.list_calendars(app.service.db)
        except StoreError as exc:
            notify_safe(self, str(exc), severity="error")
            return
        choices: list[tuple[str, Text | str]] = [("", "Wall-clock hours")]
        choices += [(r.name, safe_line(r.name)) for r in rows]

        def chosen(name: str | None) -> None:
            if name is not None:
                self.set_filter(replace(self.filter, calendar=name or None))

        self.app.push_screen(
            ChoiceScreen("Measure times in", choices, current=self.filter.calendar or ""), chosen
        )

    def palette_commands(self) -> Iterable[PaletteCommand]:
        """Period presets by name (the keys 1-4 do the same)."""
        for days in PRESETS:
            yield PaletteCommand(
                f"Dashboard: last {days} days",
                f"Report on the last {days} days",
                partial(self.action_preset, days),
            )
