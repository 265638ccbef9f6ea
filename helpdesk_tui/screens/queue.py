"""The queue screen: views with live counts, the virtual ticket list, the query bar, bulk actions."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static

from helpdesk_tui.app import StoreLoaded
from helpdesk_tui.boot import FirstPageSource
from helpdesk_tui.commands import PaletteCommand, ScreenCommands
from helpdesk_tui.messages import StoreChanged
from helpdesk_tui.text import notify_safe, safe_line
from helpdesk_tui.widgets.sidebar import Sidebar, ViewEntry
from helpdesk_tui.widgets.ticket_list import TicketList
from store.sanitize import clean_line

# The store layer (SQLAlchemy) is imported where it is used: on a fast start the queue is
# painted before it is loaded (see helpdesk_tui.boot).
if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

    from helpdesk_tui.widgets.query_bar import QueryBar
    from store.engine import Database
    from store.models import Ticket
    from store.query import Query, QueryContext
    from store.rows import TicketRow
    from store.service import Service

#: The order cycle of `o`; the first is the default ("what to do next").
ORDER_CYCLE = ("next", "updated", "created", "number")
#: Longest run of tickets `T` marks at once.
MARK_BY_QUERY_LIMIT = 10_000
#: Seconds to wait after a change before re-reading (changes come in bursts).
RELOAD_DEBOUNCE = 0.25
COUNTS_DEBOUNCE = 1.0


def builtin_views(queue_names: Iterable[str]) -> list[ViewEntry]:
    """The views every agent has, then one per queue."""
    views = [
        ViewEntry("mine", "My tickets", "assignee:me is:active"),
        ViewEntry("unassigned", "Unassigned", "is:unassigned is:active"),
        ViewEntry("active", "All active", "is:active"),
        ViewEntry("pending", "Pending", "status:pending"),
        ViewEntry("postponed", "Postponed", "status:postponed"),
        ViewEntry("solved-today", "Solved today", "status:solved solved:today"),
    ]
    for name in queue_names:
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        views.append(ViewEntry(f"queue:{name}", name, f'queue:"{quoted}" is:active', "queue"))
    return views


@dataclass
class SourcePage:
    """A listing page whose rows carry the version they were read at."""

    rows: list[Any]
    next_cursor: Any
    prev_cursor: Any


class ListingSource:
    """`store.listing` pages for one query and order, as the ticket list asks for them.

    The query is compiled again for every page, so relative dates ("today", "<7d") keep
    meaning what they say while the console stays open.
    """

    def __init__(
        self, db: Database, query: Query, context: Callable[[], QueryContext], order: str
    ) -> None:
        self.db = db
        self.query = query
        self.context = context
        self.order = order

    def where(self) -> ColumnElement[bool]:
        from store.query import compile_where

        return compile_where(self.query, self.context())

    async def _versions(self, session: Any, rows: Sequence[TicketRow]) -> list[TicketRow]:
        """The rows with the ticket version they were read at (for conflict detection)."""
        if not rows or rows[0].version is not None:
            return list(rows)
        from sqlalchemy import select

        from store.models import Ticket

        ids = [r.id for r in rows]
        found = dict(
            (
                await session.execute(select(Ticket.id, Ticket.version).where(Ticket.id.in_(ids)))
            ).all()
        )
        for r in rows:
            r.version = found.get(r.id)
        return list(rows)

    async def _page(self, **kwargs: Any) -> SourcePage:
        from store import listing
        from store.query import compile_where, rank_subquery

        ctx = self.context()
        where = compile_where(self.query, ctx)
        if self.order == "relevance":
            kwargs["rank"] = rank_subquery(self.query, ctx)
        async with self.db.read() as session:
            if kwargs.pop("last", False):
                page = await listing.last_page(session, where, order=self.order, **kwargs)
            else:
                page = await listing.list_page(session, where, order=self.order, **kwargs)
            rows = await self._versions(session, page.rows)
        return SourcePage(rows, page.next_cursor, page.prev_cursor)

    async def first(self, limit: int) -> SourcePage:
        return await self._page(limit=limit)

    async def last(self, limit: int) -> SourcePage:
        return await self._page(limit=limit, last=True)

    async def after(self, cursor: Any, limit: int) -> SourcePage:
        return await self._page(after=cursor, limit=limit)

    async def before(self, cursor: Any, limit: int) -> SourcePage:
        return await self._page(before=cursor, limit=limit)

    async def count(self) -> int:
        from store import listing

        async with self.db.read() as session:
            return int(await listing.count(session, self.where()))


@dataclass
class BulkReport:
    """What a bulk action did: which tickets changed and which failed, and why."""

    title: str
    done: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        head = f"{self.title}: {len(self.done)} done"
        if self.failed:
            head += f", {len(self.failed)} failed"
        lines = [head] + [f"#{n}: {why}" for n, why in self.failed]
        return "\n".join(lines)


_DURATION = re.compile(r"^\+?(\d+)\s*(min|h|d|w|mo)$")


def parse_wake_time(text: str, now: datetime) -> datetime:
    """A postpone time: '4h', '2d', '1w', '+3d', '1mo', or a date '2026-12-01' (09:00 UTC)."""
    value = text.strip().lower()
    m = _DURATION.match(value)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        delta = {
            "min": timedelta(minutes=n),
            "h": timedelta(hours=n),
            "d": timedelta(days=n),
            "w": timedelta(weeks=n),
            "mo": timedelta(days=30 * n),
        }[unit]
        return now + delta
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: use 4h, 2d, 1w, 1mo or a date like 2026-12-01"
        ) from None
    return day.replace(hour=9, tzinfo=now.tzinfo)


def parse_tag_changes(text: str) -> tuple[list[str], list[str]]:
    """'+urgent -spam vip' -> (['urgent', 'vip'], ['spam'])."""
    add: list[str] = []
    remove: list[str] = []
    for word in text.split():
        if word.startswith("-") and len(word) > 1:
            remove.append(word[1:])
        elif word.startswith("+") and len(word) > 1:
            add.append(word[1:])
        elif word not in ("+", "-"):
            add.append(word)
    return add, remove


class QueueScreen(Screen[None]):
    """Views on the left, the list on the right; every action also in the palette."""

    HELP_TITLE = "Queue"
    AUTO_FOCUS = "#tickets"
    PALETTE_PREFIX = "Queue"
    COMMANDS = {ScreenCommands}

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "slash",
            "focus_query",
            "Query",
            id="queue.query",
            tooltip="Type a query (store query language); Enter applies it",
        ),
        Binding(
            "escape",
            "clear",
            "Clear",
            show=False,
            id="queue.clear",
            tooltip="Clear the query (back to the view), then the marks",
        ),
        Binding(
            "o",
            "cycle_order",
            "Order",
            id="queue.order",
            tooltip="Cycle the order: next, updated, created, number",
        ),
        Binding(
            "a",
            "assign",
            "Assign",
            id="queue.assign",
            tooltip="Assign the marked tickets (or this one) to an agent",
        ),
        Binding(
            "s",
            "status",
            "Status",
            id="queue.status",
            tooltip="Set the status of the marked tickets (or this one)",
        ),
        Binding(
            "p",
            "priority",
            "Priority",
            show=False,
            id="queue.priority",
            tooltip="Set the priority of the marked tickets (or this one)",
        ),
        Binding(
            "t",
            "tag",
            "Tag",
            show=False,
            id="queue.tag",
            tooltip="Add and remove tags: +billing -spam",
        ),
        Binding(
            "m",
            "merge",
            "Merge",
            show=False,
            id="queue.merge",
            tooltip="Merge the marked tickets into one of them",
        ),
        Binding(
            "T",
            "mark_query",
            "Mark by query",
            show=False,
            id="queue.mark_query",
            tooltip="Mark every ticket in this list that also matches a query",
        ),
        Binding(
            "ctrl+s",
            "save_view",
            "Save view",
            show=False,
            id="queue.save_view",
            tooltip="Save the current query as a personal view",
        ),
        Binding(
            "ctrl+b",
            "toggle_sidebar",
            "Views",
            show=False,
            id="queue.sidebar",
            tooltip="Show or hide the views sidebar",
        ),
        Binding(
            "v",
            "focus_views",
            "Views",
            show=False,
            id="queue.views",
            tooltip="Move to the views sidebar",
        ),
    ]

    #: Presence: the queue is not on a ticket.
    presence_ticket_id: int | None = None
    presence_mode = "viewing"

    def __init__(self) -> None:
        super().__init__()
        self.view: ViewEntry = builtin_views(())[0]
        #: The query typed in the bar and applied (None: the view's own query).
        self.custom_query: str | None = None
        self.order = ORDER_CYCLE[0]
        self.total: int | None = None
        self.last_report: BulkReport | None = None
        self._query: Query | None = None
        self._source: ListingSource | None = None
        #: Fast start: the list's source until the store is open (see helpdesk_tui.boot).
        self._first_source: FirstPageSource | None = None
        #: Fast start: a query change or an opened ticket waiting for the store.
        self._apply_pending = False
        self._open_pending: int | None = None
        self._seen_serial = 0
        self._reload_timer: Timer | None = None
        self._counts_timer: Timer | None = None
        self._status_labels: dict[str, str] = {}
        self._orders: dict[str, str] = {}
        #: The views sidebar (names, counts) is read once the first page is shown.
        self._views_pending = False

    # ----------------------------------------------------------------- helpers
    @property
    def service(self) -> Service:
        return self.app.service  # type: ignore[attr-defined,no-any-return]

    @property
    def ticket_list(self) -> TicketList:
        return self.query_one(TicketList)

    @property
    def query_bar(self) -> QueryBar:
        from helpdesk_tui.widgets.query_bar import QueryBar

        return self.query_one(QueryBar)

    @property
    def sidebar(self) -> Sidebar:
        return self.query_one(Sidebar)

    @property
    def store_ready(self) -> bool:
        """False only while a fast start is still opening the store."""
        return bool(getattr(self.app, "store_ready", True))

    def context(self) -> QueryContext:
        """What "me" and "now" mean for queries right now."""
        from store.query import QueryContext

        app: Any = self.app
        return QueryContext(app.me.id, self.service.clock(), self.service.db.dialect)

    def now(self) -> datetime:
        """The store's clock (the system's while a fast start opens the store)."""
        return self.service.clock() if self.store_ready else datetime.now(UTC)

    @property
    def query_text(self) -> str:
        """The query behind the list: the typed one, or the view's."""
        return self.custom_query if self.custom_query is not None else self.view.query

    # ----------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        from helpdesk_tui.widgets.query_bar import QueryBar

        with Horizontal(id="queue-body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="queue-main"):
                yield QueryBar(
                    id="query-bar",
                    placeholder="press / to filter: status:open tag:billing from:@acme.com …",
                )
                yield Static("", id="queue-status")
                yield Static("", id="queue-report")
                yield TicketList(clock=self.now, id="tickets")
        yield Footer()

    def on_mount(self) -> None:
        self._seen_serial = getattr(self.app, "change_serial", 0)
        self.sidebar.set_views(builtin_views(()))
        self.sidebar.select_key(self.view.key)
        take = getattr(self.app, "take_fast_start", None)
        start = take() if take is not None else None
        if start is not None and (start.page.query, start.page.order) == (
            self.view.query,
            self.order,
        ):
            # Fast start: paint the rows read without the store; it opens after this frame.
            self._status_labels = dict(start.labels)
            self.ticket_list.status_labels = dict(start.labels)
            self._first_source = FirstPageSource(start.page)
            self.ticket_list.set_empty_message(f"No tickets match {self.query_text!r}.")
            self.ticket_list.load(self._first_source)
            self._update_status()
        else:
            self._store_ready()
        self.ticket_list.focus()
        # The views' counts read the whole store (a million tickets): they wait until the
        # first page is on screen, so they do not compete with it for the two cores.
        self._views_pending = True

    def _store_ready(self) -> None:
        """Read what comes from the store: the list (unless a fast start painted it), labels."""
        from store import listing

        self._orders = dict(listing.ORDERS)
        first = self._first_source
        self._first_source = None
        source = self._listing_source() if first is not None and not self._apply_pending else None
        if first is not None and source is not None:
            # Continue from the fast first page: the store's source takes over in place, and
            # the list re-reads its rows (same rows: nothing moves; changes made meanwhile).
            self._source = source
            first.attach(source)
            self._describe()
            self.ticket_list.reload()
            self._count_total()
            self._update_status()
        else:
            self._apply_query()
        self._apply_pending = False
        self._load_labels()
        self._refresh_presence()

    def on_store_loaded(self, _message: StoreLoaded) -> None:
        """Fast start: the store is open now."""
        self._store_ready()  # the views' counts start when the list has re-read its rows
        if self._open_pending is not None:
            number, self._open_pending = self._open_pending, None
            self.open_ticket(number)

    def on_resize(self) -> None:
        self.set_class(self.size.width < 100, "-narrow")

    def on_screen_resume(self) -> None:
        serial = getattr(self.app, "change_serial", 0)
        if serial != self._seen_serial:
            self._seen_serial = serial
            self._schedule_reload()
            self._schedule_counts()
            self._refresh_presence()

    # ----------------------------------------------------------------- the list
    def _listing_source(self) -> ListingSource | None:
        """A source for the current query and order (None, with a message, if it is invalid)."""
        from store.query import QueryError, parse

        try:
            self._query = parse(self.query_text)
        except QueryError as exc:
            notify_safe(self, f"{self.view.name}: {exc.message}", severity="error")
            return None
        if self.order == "relevance" and not self._query.has_text:
            self.order = ORDER_CYCLE[0]
        return ListingSource(self.service.db, self._query, self.context, self.order)

    def _apply_query(self, *, keep_position: bool = False) -> None:
        """Point the list at the current query and order (a new result from the top)."""
        if not self.store_ready:
            self._apply_pending = True  # done as soon as the store is open
            self._update_status()
            return
        source = self._listing_source()
        if source is None:
            return
        self._source = source
        self.total = None
        self._describe()
        self.ticket_list.set_empty_message(f"No tickets match {self.query_text!r}.")
        if keep_position:
            self.ticket_list.reload()
        else:
            self.ticket_list.load(self._source)
        self._count_total()
        self._update_status()

    def _describe(self) -> None:
        from store.query import QueryError, describe

        if self._query is None:
            return
        try:
            lines = describe(self._query, self.context())
        except QueryError:
            lines = []
        self.query_bar.description = tuple(lines)

    @work(exclusive=True, group="queue-total", exit_on_error=False)
    async def _count_total(self) -> None:
        from store.engine import StoreError

        source = self._source
        if source is None:
            return
        try:
            total = await source.count()
        except StoreError as exc:
            notify_safe(self, str(exc), severity="error")
            return
        if source is self._source:
            self.total = total
            self._update_status()

    def _update_status(self) -> None:
        tickets = self.ticket_list
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        if self.custom_query is not None:
            text.append("query", style="bold")
        else:
            text.append_text(safe_line(self.view.name, style="bold"))
        total = "…" if self.total is None else f"{self.total:,}"
        position = tickets.position(self.total)
        text.append("  ")
        if position is not None and self.total:
            text.append(f"{position:,}/{total}")
        else:
            text.append(f"{total} tickets")
        marked = len(tickets.marked)
        if marked:
            text.append("  ")
            text.append(f" {marked} marked ", style="bold reverse")
        text.append("  order: ", style="dim")
        text.append(self.order, style="bold")
        explanation = _short(self._orders.get(self.order, ""))
        if explanation and explanation != self.order:
            text.append(f" ({explanation})", style="dim")
        self.query_one("#queue-status", Static).update(text, layout=False)

    @on(TicketList.Highlighted)
    @on(TicketList.Loaded)
    def _list_changed(self) -> None:
        self._update_status()
        if self.store_ready:
            self._start_views()
        else:
            # Fast start: the first page is on screen; now the store may load.
            self.call_after_refresh(self._load_store)

    def _load_store(self) -> None:
        load = getattr(self.app, "load_store", None)
        if load is not None:
            load()

    def _start_views(self) -> None:
        if self._views_pending and self.store_ready:
            self._views_pending = False
            self._load_views()

    @on(TicketList.MarksChanged)
    def _marks_changed(self) -> None:
        self._update_status()

    @on(TicketList.LoadFailed)
    def _load_failed(self, event: TicketList.LoadFailed) -> None:
        notify_safe(self, event.error, title="Could not read tickets", severity="error")
        self._start_views()

    @on(TicketList.Opened)
    def _open(self, event: TicketList.Opened) -> None:
        self.open_ticket(event.row.number)

    def open_ticket(self, number: int) -> None:
        if not self.store_ready:
            self._open_pending = number  # opened as soon as the store is open
            return
        from helpdesk_tui.screens.ticket import TicketScreen  # written alongside; imported late

        self.app.push_screen(TicketScreen(number))

    # ----------------------------------------------------------------- views & counts
    @work(exclusive=True, group="queue-views", exit_on_error=False)
    async def _load_views(self) -> None:
        from store.engine import StoreError

        app: Any = self.app
        try:
            queues = await self.service.list_queues()
            saved = await self.service.list_views(app.me.id)
        except StoreError as exc:
            notify_safe(self, str(exc), severity="error")
            return
        entries = builtin_views(q.name for q in queues)
        for v in saved:
            kind = "shared" if v.owner_id is None else "personal"
            entries.append(ViewEntry(f"view:{v.id}", v.name, v.query, kind, view_id=v.id))
        self.sidebar.set_views(entries)
        self._count_views()

    @work(exclusive=True, group="queue-labels", exit_on_error=False)
    async def _load_labels(self) -> None:
        from store.engine import StoreError

        try:
            self._status_labels = await self.service.status_labels()
        except StoreError:
            return
        self.ticket_list.status_labels = dict(self._status_labels)

    @work(exclusive=True, group="queue-counts", exit_on_error=False)
    async def _count_views(self) -> None:
        from store import listing
        from store.engine import StoreError
        from store.query import QueryError, compile_where, parse

        ctx = self.context()
        counts: dict[str, int | None] = {}
        problems: dict[str, str] = {}
        async with self.service.db.read() as session:
            for entry in self.sidebar.entries:
                try:
                    where = compile_where(parse(entry.query), ctx)
                    counts[entry.key] = int(await listing.count(session, where))
                except QueryError as exc:
                    counts[entry.key] = None
                    problems[entry.key] = exc.message
                except StoreError as exc:
                    counts[entry.key] = None
                    problems[entry.key] = str(exc)
        self.sidebar.set_counts(counts, problems)

    @work(exclusive=True, group="queue-presence", exit_on_error=False)
    async def _refresh_presence(self) -> None:
        from store.engine import StoreError

        app: Any = self.app
        try:
            rows = await self.service.presence()
        except StoreError:
            return
        others: dict[int, list[str]] = {}
        for login, _name, ticket_id, _mode in rows:
            if ticket_id is not None and login != app.me.login:
                others.setdefault(ticket_id, []).append(login)
        self.ticket_list.presence = {k: tuple(sorted(set(v))) for k, v in others.items()}

    @on(Sidebar.ViewSelected)
    def _view_selected(self, event: Sidebar.ViewSelected) -> None:
        self.show_view(event.view)
        self.ticket_list.focus()

    def show_view(self, view: ViewEntry) -> None:
        """Show a view (its query replaces any typed one)."""
        self.view = view
        self.custom_query = None
        self.query_bar.set_text("")
        self.query_bar.error = None
        self.sidebar.selected_key = view.key
        self._apply_query()

    # ----------------------------------------------------------------- live updates
    def on_store_changed(self, message: StoreChanged) -> None:
        self._seen_serial = getattr(self.app, "change_serial", self._seen_serial)
        if "presence" in message.kinds:
            self._refresh_presence()
        if message.only_presence:
            return
        if message.kinds & {"view", "setting"} or None in message.ticket_ids:
            self._load_views()
            self._load_labels()
        self._schedule_reload()
        self._schedule_counts()

    def _schedule_reload(self) -> None:
        if self._reload_timer is not None:
            self._reload_timer.stop()
        self._reload_timer = self.set_timer(RELOAD_DEBOUNCE, self._live_reload)

    def _live_reload(self) -> None:
        self._reload_timer = None
        self.ticket_list.reload()
        self._count_total()

    def _schedule_counts(self) -> None:
        if self._counts_timer is not None:
            return  # one is already due; counts need not be instant
        self._counts_timer = self.set_timer(COUNTS_DEBOUNCE, self._counts_due)

    def _counts_due(self) -> None:
        self._counts_timer = None
        self._count_views()

    # ----------------------------------------------------------------- query bar
    def action_focus_query(self) -> None:
        bar = self.query_bar
        if not bar.text:
            text = clean_line(self.query_text)  # a saved view's query is data too
            bar.set_text(text + " " if text else "")
        bar.input.focus()

    def on_query_bar_submitted(self, event: QueryBar.Submitted) -> None:
        text = event.text.strip()
        self.custom_query = text if text and text != self.view.query else None
        self._apply_query()
        self.ticket_list.focus()

    def on_query_bar_cleared(self, _event: QueryBar.Cleared) -> None:
        self.custom_query = None
        self._apply_query()
        self.ticket_list.focus()

    def action_clear(self) -> None:
        report = self.query_one("#queue-report", Static)
        if report.display:
            report.display = False
        elif self.custom_query is not None or self.query_bar.text or self.query_bar.error:
            self.query_bar.clear()
        elif self.ticket_list.marked:
            self.ticket_list.clear_marks()

    def action_cycle_order(self) -> None:
        cycle = [o for o in ORDER_CYCLE if not self._orders or o in self._orders]
        if self._query is not None and self._query.has_text:
            cycle.append("relevance")
        index = cycle.index(self.order) if self.order in cycle else -1
        self.order = cycle[(index + 1) % len(cycle)]
        self._apply_query()
        notify_safe(self, f"Order: {self.order}", timeout=2)

    def action_toggle_sidebar(self) -> None:
        self.sidebar.display = not self.sidebar.display

    def action_focus_views(self) -> None:
        self.sidebar.display = True
        self.sidebar.focus()

    # ----------------------------------------------------------------- bulk actions
    def _targets(self) -> list[tuple[int, int | None]]:
        """(number, version seen) for the marked tickets, or the cursor's ticket."""
        tickets = self.ticket_list
        if tickets.marked:
            return sorted(tickets.marked.items())
        row = tickets.current
        if row is None:
            return []
        return [(row.number, getattr(row, "version", None))]

    def _describe_targets(self, targets: Sequence[tuple[int, int | None]]) -> str:
        if len(targets) == 1:
            return f"#{targets[0][0]}"
        return f"{len(targets)} tickets"

    async def _confirm_wide(
        self, question: str, targets: Sequence[tuple[int, int | None]], *, always: bool = False
    ) -> bool:
        if len(targets) <= 1 and not always:
            return True
        numbers = ", ".join(f"#{n}" for n, _v in targets[:30])
        if len(targets) > 30:
            numbers += f" and {len(targets) - 30} more"
        from helpdesk_tui.screens.confirm import ConfirmScreen

        answer: bool | None = await self.app.push_screen_wait(ConfirmScreen(question, numbers))
        return bool(answer)

    @work(group="queue-bulk", exclusive=True, exit_on_error=False)
    async def action_status(self) -> None:
        from helpdesk_tui.screens.confirm import ChoiceScreen, PromptScreen
        from store.models import Status

        targets = self._targets()
        if not targets:
            return
        labels = self._status_labels or {s.value: s.value for s in Status}
        choices = [
            (s.value, labels.get(s.value, s.value))
            for s in Status
            if s not in (Status.NEW, Status.MERGED)
        ]
        current = self.ticket_list.current
        picked = await self.app.push_screen_wait(
            ChoiceScreen(
                f"Status for {self._describe_targets(targets)}",
                choices,
                current=getattr(current, "status", None) if len(targets) == 1 else None,
            )
        )
        if picked is None:
            return
        status = Status(picked)
        wake: datetime | None = None
        if status is Status.POSTPONED:
            now = self.service.clock()

            def check(text: str) -> str | None:
                try:
                    parse_wake_time(text, now)
                except ValueError as exc:
                    return str(exc)
                return None

            answer = await self.app.push_screen_wait(
                PromptScreen("Postpone until", placeholder="4h, 2d, 1w, 2026-12-01", validate=check)
            )
            if answer is None:
                return
            wake = parse_wake_time(answer, self.service.clock())
        label = labels.get(status.value, status.value)
        if not await self._confirm_wide(
            f"Set {self._describe_targets(targets)} to {label}?",
            targets,
            always=status is Status.CLOSED,
        ):
            return
        actor = self.app.actor  # type: ignore[attr-defined]

        async def change(number: int, version: int | None) -> Ticket:
            if wake is not None:
                return await self.service.update_ticket(
                    actor, number, expected_version=version, postpone_until=wake
                )
            return await self.service.update_ticket(
                actor, number, expected_version=version, status=status
            )

        await self._run_bulk(f"Status → {label}", targets, change)

    @work(group="queue-bulk", exclusive=True, exit_on_error=False)
    async def action_assign(self) -> None:
        from helpdesk_tui.screens.confirm import ChoiceScreen
        from store.engine import StoreError

        targets = self._targets()
        if not targets:
            return
        try:
            agents = await self.service.list_agents(include_inactive=False)
        except StoreError as exc:
            notify_safe(self, str(exc), severity="error")
            return
        app: Any = self.app
        choices: list[tuple[str, str | Text]] = [("", "(nobody: unassign)")]
        for agent in agents:
            label = safe_line(agent.login, style="bold")
            label.append("  ")
            label.append_text(safe_line(agent.name))
            if agent.id == app.me.id:
                label.append("  (me)", style="dim")
            choices.append((agent.login, label))
        current = self.ticket_list.current
        picked = await self.app.push_screen_wait(
            ChoiceScreen(
                f"Assign {self._describe_targets(targets)} to",
                choices,
                current=getattr(current, "assignee_login", None) or app.me.login,
                filterable=True,
            )
        )
        if picked is None:
            return
        who = picked or "nobody"
        if not await self._confirm_wide(
            f"Assign {self._describe_targets(targets)} to {who}?", targets
        ):
            return

        async def change(number: int, version: int | None) -> Ticket:
            return await self.service.update_ticket(
                app.actor, number, expected_version=version, assignee=picked or None
            )

        await self._run_bulk(f"Assign → {who}", targets, change)

    @work(group="queue-bulk", exclusive=True, exit_on_error=False)
    async def action_priority(self) -> None:
        from helpdesk_tui.screens.confirm import ChoiceScreen
        from store.models import Priority

        targets = self._targets()
        if not targets:
            return
        choices: list[tuple[str, str]] = [(p.label, p.label) for p in reversed(Priority)]
        choices.append(("auto", "auto (from impact × urgency)"))
        picked = await self.app.push_screen_wait(
            ChoiceScreen(f"Priority for {self._describe_targets(targets)}", choices)
        )
        if picked is None:
            return
        if not await self._confirm_wide(
            f"Set the priority of {self._describe_targets(targets)} to {picked}?", targets
        ):
            return
        value: Priority | str = "auto" if picked == "auto" else Priority[picked.upper()]
        actor = self.app.actor  # type: ignore[attr-defined]

        async def change(number: int, version: int | None) -> Ticket:
            return await self.service.update_ticket(
                actor, number, expected_version=version, priority=value
            )

        await self._run_bulk(f"Priority → {picked}", targets, change)

    @work(group="queue-bulk", exclusive=True, exit_on_error=False)
    async def action_tag(self) -> None:
        from helpdesk_tui.screens.confirm import PromptScreen

        targets = self._targets()
        if not targets:
            return

        def check(text: str) -> str | None:
            add, remove = parse_tag_changes(text)
            return None if add or remove else "give tags to add (+name) or remove (-name)"

        answer = await self.app.push_screen_wait(
            PromptScreen(
                f"Tags for {self._describe_targets(targets)}",
                placeholder="+billing -spam",
                help="+tag adds, -tag removes",
                validate=check,
            )
        )
        if answer is None:
            return
        add, remove = parse_tag_changes(answer)
        if not await self._confirm_wide(
            f"Change tags of {self._describe_targets(targets)}: {answer}?", targets
        ):
            return
        actor = self.app.actor  # type: ignore[attr-defined]

        async def change(number: int, version: int | None) -> Ticket:
            return await self.service.update_ticket(
                actor, number, expected_version=version, tags_add=add, tags_remove=remove
            )

        await self._run_bulk(f"Tags {answer}", targets, change)

    @work(group="queue-bulk", exclusive=True, exit_on_error=False)
    async def action_merge(self) -> None:
        from helpdesk_tui.screens.confirm import ChoiceScreen

        targets = self._targets()
        if len(targets) < 2:
            notify_safe(self, "Mark two or more tickets (space) to merge them.")
            return
        rows = {r.number: r for r in self.ticket_list.rows}
        choices: list[tuple[int, str | Text]] = []
        for number, _v in targets:
            label = Text(f"#{number}  ", style="bold")
            row = rows.get(number)
            if row is not None:
                label.append_text(safe_line(row.subject))
            choices.append((number, label))
        into = await self.app.push_screen_wait(
            ChoiceScreen("Merge the marked tickets into", choices, current=targets[0][0])
        )
        if into is None:
            return
        sources = [(n, v) for n, v in targets if n != into]
        if not await self._confirm_wide(
            f"Merge {len(sources)} ticket(s) into #{into}? This cannot be undone.",
            sources,
            always=True,
        ):
            return
        actor = self.app.actor  # type: ignore[attr-defined]

        async def change(number: int, _version: int | None) -> None:
            await self.service.merge(actor, number, into)
            return None

        report = await self._run_bulk(f"Merge into #{into}", sources, change)
        if not report.failed:
            self.ticket_list.unmark([into])  # the merge is done: nothing is left marked
            self._update_status()

    async def _run_bulk(
        self,
        title: str,
        targets: Sequence[tuple[int, int | None]],
        change: Callable[[int, int | None], Awaitable[Ticket | None]],
    ) -> BulkReport:
        """Apply `change` to each ticket; report which failed and why (nothing is retried)."""
        from store.engine import StoreError

        report = BulkReport(title)
        tickets = self.ticket_list
        for number, version in targets:
            try:
                changed = await change(number, version)
            except StoreError as exc:
                report.failed.append((number, str(exc)))
            else:
                report.done.append(number)
                if changed is not None:
                    tickets.note_version(changed.number, changed.version)
        self.last_report = report
        tickets.unmark(report.done)  # failures stay marked, ready for another try
        self._show_report(report)
        notify_safe(
            self,
            report.summary(),
            title="Bulk action" if len(targets) > 1 else "",
            severity="error" if report.failed else "information",
            timeout=20 if report.failed else 4,
        )
        tickets.reload()
        self._count_total()
        self._schedule_counts()
        return report

    def _show_report(self, report: BulkReport) -> None:
        panel = self.query_one("#queue-report", Static)
        if not report.failed:
            panel.display = False
            return
        text = Text(
            f"{report.title}: {len(report.done)} done, {len(report.failed)} failed "
            "(still marked; Esc hides this)",
            style="bold",
        )
        for number, why in report.failed:
            text.append(f"\n#{number}: ", style="bold")
            text.append_text(safe_line(why))
        panel.update(text)
        panel.display = True

    # ----------------------------------------------------------------- marks & views
    @work(group="queue-mark", exclusive=True, exit_on_error=False)
    async def action_mark_query(self) -> None:
        from sqlalchemy import and_, select

        from helpdesk_tui.screens.confirm import PromptScreen
        from store.models import Ticket
        from store.query import QueryError, compile_where, parse

        def check(text: str) -> str | None:
            try:
                parse(text)
            except QueryError as exc:
                return f"column {exc.position}: {exc.message}"
            return None

        answer = await self.app.push_screen_wait(
            PromptScreen(
                "Mark tickets in this list that match", placeholder="tag:billing", validate=check
            )
        )
        if answer is None:
            return
        ctx = self.context()
        assert self._query is not None  # set once the store is open, before any action
        where = and_(compile_where(self._query, ctx), compile_where(parse(answer), ctx))
        async with self.service.db.read() as session:
            found = (
                await session.execute(
                    select(Ticket.number, Ticket.version)
                    .where(where)
                    .order_by(Ticket.number)
                    .limit(MARK_BY_QUERY_LIMIT)
                )
            ).all()
        self.ticket_list.mark({int(n): int(v) for n, v in found})
        notify_safe(self, f"Marked {len(found)} ticket(s) matching {answer}")

    @work(group="queue-save", exclusive=True, exit_on_error=False)
    async def action_save_view(self, shared: bool = False) -> None:
        """Save the current query as a personal view, or (`shared`) one the whole team sees."""
        from helpdesk_tui.screens.confirm import PromptScreen
        from store.engine import StoreError
        from store.query import QueryError

        text = self.query_text
        title = f"Save this query as a {'shared ' if shared else ''}view named"
        answer = await self.app.push_screen_wait(
            PromptScreen(
                title,
                help=text,
                placeholder="e.g. Billing, urgent",
            )
        )
        if answer is None:
            return
        app: Any = self.app
        try:
            saved = await self.service.add_view(
                answer, text, owner=None if shared else app.me.login
            )
        except (StoreError, QueryError) as exc:
            notify_safe(self, str(exc), severity="error")
            return
        self.view = ViewEntry(
            f"view:{saved.id}",
            saved.name,
            saved.query,
            "shared" if shared else "personal",
            view_id=saved.id,
        )
        self.custom_query = None
        self.query_bar.set_text("")
        self.sidebar.selected_key = self.view.key
        notify_safe(self, f"Saved view {answer!r}")
        self._load_views()
        self._update_status()

    # ----------------------------------------------------------------- palette
    def palette_commands(self) -> Iterable[PaletteCommand]:
        """Views and orders by name, on top of the key bindings."""
        for entry in self.sidebar.entries:
            yield PaletteCommand(f"View: {entry.name}", entry.query, _bind(self.show_view, entry))
        for order, explanation in self._orders.items():
            yield PaletteCommand(f"Order: {order}", explanation, _bind(self.set_order, order))
        yield PaletteCommand(
            "View: save this query as a shared view",
            "A view every agent sees in the sidebar (ctrl+s saves a personal one)",
            lambda: self.action_save_view(shared=True),
        )

    def set_order(self, order: str) -> None:
        self.order = order
        self._apply_query()


def _short(explanation: str) -> str:
    """The first clause of an order's explanation ("what to do next: ..." -> "what to do next")."""
    for stop in (":", " - ", " (", ","):
        explanation = explanation.split(stop)[0]
    return explanation.strip()


def _bind(fn: Callable[[Any], None], arg: Any) -> Callable[[], None]:
    def run() -> None:
        fn(arg)

    return run
