"""The virtual ticket list: a Line-API view over a window of keyset pages around the viewport.

Only a few pages are held (at most `MAX_ROWS` rows); moving near either edge of the window
fetches the next page through the source in a worker and drops pages far away, so a queue of
a million tickets scrolls like one of fifty. Cells are built from sanitised `Text` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, work
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.worker import get_current_worker

from helpdesk_tui.text import relative_time, safe_line


def utcnow() -> datetime:
    """`store.models.utcnow` without importing the ORM (the console paints before it loads)."""
    return datetime.now(UTC)


#: Rows fetched per query.
PAGE_SIZE = 100
#: Most rows held in memory at once (whole pages are dropped beyond this).
MAX_ROWS = 600


class PageLike(Protocol):
    """A keyset page: rows in display order and the cursors on either side (None at an end)."""

    @property
    def rows(self) -> Sequence[Any]: ...
    @property
    def next_cursor(self) -> Any: ...
    @property
    def prev_cursor(self) -> Any: ...


class PageSource(Protocol):
    """Where the rows come from (the screen adapts `store.listing` to this)."""

    async def first(self, limit: int) -> PageLike: ...
    async def last(self, limit: int) -> PageLike: ...
    async def after(self, cursor: Any, limit: int) -> PageLike: ...
    async def before(self, cursor: Any, limit: int) -> PageLike: ...


@dataclass
class _Page:
    rows: list[Any]
    prev_cursor: Any
    next_cursor: Any


@dataclass(frozen=True)
class Column:
    """A column of the list; width 0 means it takes the remaining space."""

    key: str
    title: str
    width: int
    justify: str = "left"


PRIORITY_LABELS = {0: "low", 1: "normal", 2: "high", 3: "urgent"}
PRIORITY_SYMBOLS = {0: "↓", 1: " ", 2: "↑", 3: "!"}


def layout_columns(width: int, number_width: int, *, show_due: bool = False) -> list[Column]:
    """Which columns fit in `width` cells: on narrow terminals customer and assignee give way."""
    flags = Column("flags", "", 2)
    number = Column("number", "#", number_width, "right")
    updated = Column("updated", "Upd", 6, "right")
    if width >= 92:
        cols = [
            flags,
            number,
            Column("priority", "Prio", 6),
            Column("status", "Status", 9),
            Column("subject", "Subject", 0),
            Column("customer", "Customer", 18 if width < 120 else 24),
            Column("assignee", "Assignee", 10 if width < 120 else 14),
        ]
        if show_due:
            cols.append(Column("due", "Due", 6, "right"))
        return [*cols, updated]
    if width >= 72:
        return [
            flags,
            number,
            Column("priority", "P", 1),
            Column("status", "Status", 9),
            Column("subject", "Subject", 0),
            Column("customer", "Customer", 14),
            updated,
        ]
    return [
        flags,
        number,
        Column("priority", "P", 1),
        Column("status", "Status", 9),
        Column("subject", "Subject", 0),
        updated,
    ]


class TicketList(ScrollView, can_focus=True):
    """The queue's list. Push rows in with `load(source)`; it fetches the rest itself."""

    DEFAULT_CSS = """
    TicketList {
        height: 1fr;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
    }
    TicketList > .ticket-list--header { text-style: bold; background: $panel; }
    TicketList > .ticket-list--cursor { background: $block-cursor-background;
        color: $block-cursor-foreground; text-style: bold; }
    TicketList > .ticket-list--cursor-blurred { background: $block-cursor-blurred-background; }
    TicketList > .ticket-list--marked { color: $accent; text-style: bold; }
    TicketList > .ticket-list--urgent { color: $error; text-style: bold; }
    TicketList > .ticket-list--high { color: $warning; }
    TicketList > .ticket-list--low { color: $text-muted; }
    TicketList > .ticket-list--dim { color: $text-muted; }
    TicketList > .ticket-list--new { color: $success; text-style: bold; }
    TicketList > .ticket-list--wake { color: $secondary; }
    TicketList > .ticket-list--overdue { color: $error; }
    TicketList > .ticket-list--presence { color: $warning; text-style: bold; }
    TicketList > .ticket-list--loading { color: $text-muted; text-style: italic; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "ticket-list--header",
        "ticket-list--cursor",
        "ticket-list--cursor-blurred",
        "ticket-list--marked",
        "ticket-list--urgent",
        "ticket-list--high",
        "ticket-list--low",
        "ticket-list--dim",
        "ticket-list--new",
        "ticket-list--wake",
        "ticket-list--overdue",
        "ticket-list--presence",
        "ticket-list--loading",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "move(1)", "Down", show=False, id="list.down", tooltip="Next ticket"),
        Binding("k,up", "move(-1)", "Up", show=False, id="list.up", tooltip="Previous ticket"),
        Binding("g,home", "top", "Top", show=False, id="list.top", tooltip="First ticket"),
        Binding(
            "G,end",
            "bottom",
            "Bottom",
            show=False,
            id="list.bottom",
            tooltip="Last ticket (jumps straight to the end)",
        ),
        Binding(
            "ctrl+d,pagedown",
            "half_page(1)",
            "½ page down",
            show=False,
            id="list.half_down",
            tooltip="Half a page down",
        ),
        Binding(
            "ctrl+u,pageup",
            "half_page(-1)",
            "½ page up",
            show=False,
            id="list.half_up",
            tooltip="Half a page up",
        ),
        Binding("enter", "open", "Open", id="list.open", tooltip="Open the ticket"),
        Binding(
            "space",
            "toggle_mark",
            "Mark",
            id="list.mark",
            tooltip="Mark or unmark the ticket and move down",
        ),
        Binding(
            "V",
            "mark_range",
            "Mark range",
            show=False,
            id="list.mark_range",
            tooltip="Mark from the last marked ticket to this one",
        ),
        Binding(
            "ctrl+a",
            "unmark_all",
            "Unmark all",
            show=False,
            id="list.unmark_all",
            tooltip="Clear every mark",
        ),
    ]

    #: Index of the cursor in the loaded window.
    cursor: var[int] = var(0, init=False)
    #: Display labels per status (team-renamed); set by the owner.
    status_labels: var[dict[str, str]] = var(dict, init=False)
    #: Ticket id -> who else has it open (login names); set by the owner.
    presence: var[dict[int, tuple[str, ...]]] = var(dict, init=False)

    class Opened(Message):
        """Enter or a double click on a ticket."""

        def __init__(self, ticket_list: TicketList, row: Any) -> None:
            super().__init__()
            self.ticket_list = ticket_list
            self.row = row

        @property
        def control(self) -> TicketList:
            return self.ticket_list

    class Highlighted(Message):
        """The cursor moved to another ticket (None when the list is empty)."""

        def __init__(self, ticket_list: TicketList, row: Any | None) -> None:
            super().__init__()
            self.ticket_list = ticket_list
            self.row = row

        @property
        def control(self) -> TicketList:
            return self.ticket_list

    class MarksChanged(Message):
        """Tickets were marked or unmarked; `count` is how many are marked now."""

        def __init__(self, ticket_list: TicketList, count: int) -> None:
            super().__init__()
            self.ticket_list = ticket_list
            self.count = count

        @property
        def control(self) -> TicketList:
            return self.ticket_list

    class Loaded(Message):
        """A load or refresh finished (the first one after `load` has `reset=True`)."""

        def __init__(self, ticket_list: TicketList, reset: bool) -> None:
            super().__init__()
            self.ticket_list = ticket_list
            self.reset = reset

        @property
        def control(self) -> TicketList:
            return self.ticket_list

    class LoadFailed(Message):
        """The source raised; `error` is a one-line message."""

        def __init__(self, ticket_list: TicketList, error: str) -> None:
            super().__init__()
            self.ticket_list = ticket_list
            self.error = error

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = utcnow,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.clock = clock
        self._source: PageSource | None = None
        self._pages: list[_Page] = []
        self._rows: list[Any] = []
        self._generation = 0
        self._loading = False
        self._extending: set[str] = set()
        #: Marked tickets: number -> the version seen when marking (kept across reloads).
        self.marked: dict[int, int | None] = {}
        self._mark_anchor: int | None = None
        #: Known absolute position of the window's first row from the top, or None.
        self._base: int | None = None
        #: Known position of the window's last row from the bottom (0 = last), or None.
        self._tail_gap: int | None = None
        self._line_cache: LRUCache[tuple[Any, ...], Strip] = LRUCache(512)
        self._columns_cache: dict[tuple[Any, ...], list[Column]] = {}
        self._number_width = 6
        self._show_due = False
        self._empty_message = "No tickets match."

    # ----------------------------------------------------------------- public API
    @property
    def rows(self) -> list[Any]:
        """The rows loaded now (a window of the whole result)."""
        return self._rows

    @property
    def current(self) -> Any | None:
        """The ticket under the cursor."""
        if 0 <= self.cursor < len(self._rows):
            return self._rows[self.cursor]
        return None

    @property
    def fetching(self) -> bool:
        """Whether a (re)load is under way."""
        return self._loading

    @property
    def at_start(self) -> bool:
        return not self._pages or self._pages[0].prev_cursor is None

    @property
    def at_end(self) -> bool:
        return not self._pages or self._pages[-1].next_cursor is None

    def position(self, total: int | None = None) -> int | None:
        """The cursor's 1-based position in the whole result, when it is known."""
        if not self._rows:
            return None
        if self._base is not None:
            return self._base + self.cursor + 1
        if self._tail_gap is not None and total is not None:
            return total - self._tail_gap - (len(self._rows) - 1 - self.cursor)
        return None

    def set_empty_message(self, message: str) -> None:
        self._empty_message = message
        self.refresh()

    def load(self, source: PageSource, *, at_end: bool = False) -> None:
        """Show a new result: forget the window and fetch the first (or last) page."""
        self._source = source
        self._generation += 1
        self._extending.clear()
        self._load_edge(self._generation, at_end)

    def reload(self) -> None:
        """Re-read the window in place (live updates); the cursor stays on the same ticket."""
        if self._source is None or self._loading:
            return  # a load under way reads fresh rows anyway
        self._reload(self._generation)

    def clear_marks(self) -> None:
        if self.marked:
            self.marked.clear()
            self._mark_anchor = None
            self._changed_rows()
            self.post_message(self.MarksChanged(self, 0))

    def mark(self, versions: dict[int, int | None]) -> None:
        """Add tickets (number -> version seen) to the marks, e.g. `T` marking by query."""
        self.marked.update(versions)
        self._changed_rows()
        self.post_message(self.MarksChanged(self, len(self.marked)))

    def unmark(self, numbers: Sequence[int]) -> None:
        """Drop tickets from the marks (e.g. those a bulk action changed)."""
        for number in numbers:
            self.marked.pop(number, None)
        self._changed_rows()
        self.post_message(self.MarksChanged(self, len(self.marked)))

    def note_version(self, number: int, version: int) -> None:
        """This console changed a ticket: remember its new version (no false conflicts)."""
        if number in self.marked:
            self.marked[number] = version
        for row in self._rows:
            if row.number == number:
                row.version = version

    def select_number(self, number: int) -> bool:
        """Move the cursor to a loaded ticket; False when it is not in the window."""
        for i, row in enumerate(self._rows):
            if row.number == number:
                self.cursor = i
                return True
        return False

    # ----------------------------------------------------------------- loading
    def _apply(self, pages: list[_Page], cursor: int) -> None:
        self._pages = [p for p in pages if p.rows] or pages[:1]
        self._rows = [row for page in self._pages for row in page.rows]
        if self._rows:
            self._number_width = max(5, len(str(max(r.number for r in self._rows))) + 1)
            self._show_due = any(getattr(r, "next_due_at", None) for r in self._rows)
        self._line_cache.clear()
        self.virtual_size = Size(self.size.width, len(self._rows) + 1)
        self.set_reactive(TicketList.cursor, max(0, min(cursor, len(self._rows) - 1)))
        self._scroll_cursor_into_view(center=False)
        self.refresh()
        self.post_message(self.Highlighted(self, self.current))

    @work(exclusive=True, group="ticket-list-load", exit_on_error=False)
    async def _load_edge(self, generation: int, at_end: bool) -> None:
        assert self._source is not None
        self._loading = True
        self.refresh()
        try:
            if at_end:
                page = await self._source.last(PAGE_SIZE)
            else:
                page = await self._source.first(PAGE_SIZE)
        except Exception as exc:  # the source's errors are one-line StoreErrors
            self._loading = False
            self.post_message(self.LoadFailed(self, str(exc)))
            return
        if generation != self._generation or get_current_worker().is_cancelled:
            return
        self._loading = False
        rows = list(page.rows)
        self._base = 0 if not at_end or page.prev_cursor is None else None
        self._tail_gap = 0 if at_end or page.next_cursor is None else None
        self._apply(
            [_Page(rows, page.prev_cursor, page.next_cursor)], len(rows) - 1 if at_end else 0
        )
        self.post_message(self.Loaded(self, True))

    @work(exclusive=True, group="ticket-list-load", exit_on_error=False)
    async def _reload(self, generation: int) -> None:
        source = self._source
        assert source is not None
        keep_number = self.current.number if self.current is not None else None
        keep_index = self.cursor
        offset_in_view = self.cursor - int(self.scroll_y)
        want = max(PAGE_SIZE, len(self._rows))
        try:
            if not self._pages or self.at_start:
                page = await source.first(want)
                base: int | None = 0
            else:
                # The row just above the window tells where the window starts.
                above = await source.before(self._pages[0].prev_cursor, 1)
                if above.rows and above.next_cursor is not None:
                    page = await source.after(above.next_cursor, want)
                    base = self._base
                else:
                    page = await source.first(want)
                    base = 0
        except Exception as exc:
            self.post_message(self.LoadFailed(self, str(exc)))
            return
        if generation != self._generation or get_current_worker().is_cancelled:
            return
        rows = list(page.rows)
        cursor = min(keep_index, len(rows) - 1)
        if keep_number is not None:
            for i, row in enumerate(rows):
                if row.number == keep_number:
                    cursor = i
                    break
        self._base = base
        self._tail_gap = 0 if page.next_cursor is None else None
        scroll = max(0, cursor - offset_in_view)
        self._apply([_Page(rows, page.prev_cursor, page.next_cursor)], cursor)
        self.scroll_to(y=scroll, animate=False, immediate=True)
        self._scroll_cursor_into_view(center=False)
        self.post_message(self.Loaded(self, False))

    def _maybe_extend(self) -> None:
        if self._loading or not self._pages:
            return
        top = int(self.scroll_y)
        bottom = top + self._body_height()
        margin = PAGE_SIZE  # start the next page a whole page ahead: pages can be slow
        if not self.at_end and max(bottom, self.cursor) >= len(self._rows) - margin:
            self._extend("tail", self._generation)
        if not self.at_start and min(top, self.cursor) <= margin:
            self._extend("head", self._generation)

    def _extend(self, side: str, generation: int) -> None:
        if side in self._extending:
            return
        self._extending.add(side)
        if side == "tail":
            self._extend_tail(generation)
        else:
            self._extend_head(generation)

    @work(exclusive=True, group="ticket-list-tail", exit_on_error=False)
    async def _extend_tail(self, generation: int) -> None:
        await self._extend_side(generation, tail=True)

    @work(exclusive=True, group="ticket-list-head", exit_on_error=False)
    async def _extend_head(self, generation: int) -> None:
        await self._extend_side(generation, tail=False)

    async def _extend_side(self, generation: int, *, tail: bool) -> None:
        """Fetch the page beyond one edge of the window and merge it, dropping far pages."""
        assert self._source is not None
        side = "tail" if tail else "head"
        edge = self._pages[-1] if tail else self._pages[0]
        cursor = edge.next_cursor if tail else edge.prev_cursor
        try:
            if tail:
                page = await self._source.after(cursor, PAGE_SIZE)
            else:
                page = await self._source.before(cursor, PAGE_SIZE)
        except Exception as exc:
            self.post_message(self.LoadFailed(self, str(exc)))
            return
        finally:
            self._extending.discard(side)
        if generation != self._generation or not self._pages:
            return
        now_edge = self._pages[-1] if tail else self._pages[0]
        if (now_edge.next_cursor if tail else now_edge.prev_cursor) != cursor:
            return  # the window moved meanwhile
        # Live changes can move a ticket across the boundary, and with fewer than a page
        # above the store answers with the first page: never show a ticket twice.
        held = {row.id for row in self._rows}
        fresh = _Page(
            [row for row in page.rows if row.id not in held], page.prev_cursor, page.next_cursor
        )
        pages = [*self._pages, fresh] if tail else [fresh, *self._pages]
        dropped = popped = 0
        while sum(len(p.rows) for p in pages) > MAX_ROWS and len(pages) > 2:
            # Drop whole pages from the far side of the window.
            dropped += len(pages.pop(0 if tail else -1).rows)
            popped += 1
        if tail:
            if page.next_cursor is None:
                self._tail_gap = 0
            elif self._tail_gap is not None:
                self._tail_gap = None
            if self._base is not None:
                self._base += dropped
            self._shift(pages, -dropped)
        else:
            added = len(fresh.rows)
            if popped:
                self._tail_gap = None
            if self._base is not None:
                self._base = max(0, self._base - added)
            if page.prev_cursor is None:
                self._base = 0
            self._shift(pages, added)

    def _shift(self, pages: list[_Page], delta: int) -> None:
        """Swap in a window whose rows moved by `delta` relative to the old one."""
        scroll_y = self.scroll_y + delta
        cursor = self.cursor + delta
        self._pages = pages
        self._rows = [row for page in pages for row in page.rows]
        if self._rows:
            self._number_width = max(
                self._number_width, len(str(max(r.number for r in self._rows))) + 1
            )
        # Rendered lines stay cached (their key names the ticket and its state, not the
        # position): a page landing while keys arrive repaints from the cache.
        self.virtual_size = Size(self.size.width, len(self._rows) + 1)
        self.set_reactive(TicketList.cursor, max(0, min(cursor, len(self._rows) - 1)))
        self.scroll_to(y=max(0, scroll_y), animate=False, immediate=True)
        self.refresh()
        self._maybe_extend()

    # ----------------------------------------------------------------- movement
    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_cursor_into_view(self, *, center: bool = False) -> None:
        height = self._body_height()
        top = int(self.scroll_y)
        if center:
            self.scroll_to(y=max(0, self.cursor - height // 2), animate=False, immediate=True)
        elif self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def watch_cursor(self, old: int, new: int) -> None:
        top = int(self.scroll_y)
        self._scroll_cursor_into_view()
        if int(self.scroll_y) == top:
            # Only the two rows whose highlight changed are painted again (virtual line 0
            # is the header); a scroll repaints the whole view anyway.
            for index in {old, new}:
                self.refresh_lines(index + 1)
        else:
            self.refresh()
        self._maybe_extend()
        if old != new:
            self.post_message(self.Highlighted(self, self.current))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._maybe_extend()

    def watch_status_labels(self) -> None:
        self._line_cache.clear()
        self.refresh()

    def watch_presence(self) -> None:
        self._line_cache.clear()
        self.refresh()

    def _move_to(self, index: int) -> None:
        if self._rows:
            self.cursor = max(0, min(index, len(self._rows) - 1))

    def action_move(self, delta: int) -> None:
        self._move_to(self.cursor + delta)

    def action_half_page(self, direction: int) -> None:
        step = max(1, self._body_height() // 2)
        self.scroll_to(y=max(0, self.scroll_y + direction * step), animate=False, immediate=True)
        self._move_to(self.cursor + direction * step)

    def action_top(self) -> None:
        if self.at_start:
            self._move_to(0)
        elif self._source is not None:
            self._generation += 1
            self._load_edge(self._generation, False)

    def action_bottom(self) -> None:
        if self.at_end:
            self._move_to(len(self._rows) - 1)
        elif self._source is not None:
            self._generation += 1
            self._load_edge(self._generation, True)

    def action_open(self) -> None:
        row = self.current
        if row is not None:
            self.post_message(self.Opened(self, row))

    def action_toggle_mark(self) -> None:
        row = self.current
        if row is None:
            return
        if row.number in self.marked:
            del self.marked[row.number]
        else:
            self.marked[row.number] = getattr(row, "version", None)
            self._mark_anchor = row.number
        self._changed_rows()
        self.post_message(self.MarksChanged(self, len(self.marked)))
        self.action_move(1)

    def action_mark_range(self) -> None:
        """Mark every loaded ticket between the last marked one and the cursor."""
        row = self.current
        if row is None:
            return
        start = self.cursor
        if self._mark_anchor is not None:
            for i, r in enumerate(self._rows):
                if r.number == self._mark_anchor:
                    start = i
                    break
        lo, hi = sorted((start, self.cursor))
        for r in self._rows[lo : hi + 1]:
            self.marked.setdefault(r.number, getattr(r, "version", None))
        self._mark_anchor = row.number
        self._changed_rows()
        self.post_message(self.MarksChanged(self, len(self.marked)))

    def action_unmark_all(self) -> None:
        self.clear_marks()

    def _changed_rows(self) -> None:
        self._line_cache.clear()
        self.refresh()

    # ----------------------------------------------------------------- mouse
    def _row_at(self, y: int) -> int | None:
        if y < 1:
            return None
        index = int(self.scroll_y) + y - 1
        return index if 0 <= index < len(self._rows) else None

    async def on_click(self, event: events.Click) -> None:
        index = self._row_at(event.y)
        if index is None:
            return
        event.stop()
        self.focus()
        self.cursor = index
        if event.chain >= 2:
            self.action_open()

    # ----------------------------------------------------------------- rendering
    def on_resize(self) -> None:
        self._line_cache.clear()
        self.virtual_size = Size(self.size.width, len(self._rows) + 1)
        self._maybe_extend()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._line_cache.clear()  # colours come from CSS (themes); rendered lines hold them

    def _columns(self, width: int) -> list[Column]:
        key = ("columns", width, self._number_width, self._show_due)
        cached = self._columns_cache.get(key)
        if cached is None:
            cached = layout_columns(width, self._number_width, show_due=self._show_due)
            self._columns_cache[key] = cached
        return cached

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            header_key = ("header", width, self._number_width, self._show_due)
            header = self._line_cache.get(header_key)
            if header is None:
                header = self._header(self._columns(width), width)
                self._line_cache[header_key] = header
            return header
        index = int(self.scroll_y) + y - 1
        if index >= len(self._rows):
            base_style = self.rich_style
            if not self._rows or (index == len(self._rows) and not self.at_end):
                if self._loading or not self.at_end:
                    message = "Loading…"
                elif self._source is None:
                    message = ""
                else:
                    message = self._empty_message
                style = self.get_component_rich_style("ticket-list--loading")
                return self._strip(Text(" " + message, style=style), width, base_style)
            return Strip.blank(width, base_style)
        row = self._rows[index]
        selected = index == self.cursor
        marked = row.number in self.marked
        others = self.presence.get(row.id, ())
        key = (
            row.id,
            row.updated_at,
            getattr(row, "version", None),
            width,
            selected,
            self.has_focus,
            marked,
            others,
            self._number_width,
        )
        cached = self._line_cache.get(key)
        if cached is not None:
            return cached
        strip = self._row_strip(row, self._columns(width), width, selected, marked, others)
        self._line_cache[key] = strip
        return strip

    def _strip(self, text: Text, width: int, style: Style) -> Strip:
        text.truncate(width, overflow="ellipsis", pad=True)
        segments = list(text.render(self.app.console))
        return Strip(segments, width).adjust_cell_length(width, style).apply_style(style)

    def _header(self, columns: list[Column], width: int) -> Strip:
        style = self.get_component_rich_style("ticket-list--header")
        cells = [Text(c.title) for c in columns]
        return self._join_cells(columns, cells, width, style)

    def _join_cells(
        self, columns: list[Column], cells: list[Text], width: int, style: Style
    ) -> Strip:
        fixed = sum(c.width for c in columns) + len(columns) - 1
        flex = max(4, width - fixed)
        line = Text(no_wrap=True, end="")
        for i, (col, cell) in enumerate(zip(columns, cells, strict=True)):
            w = col.width or flex
            cell = cell.copy()
            cell.no_wrap = True
            cell.end = ""
            if cell.cell_len > w:
                cell.truncate(w, overflow="ellipsis")
            pad = w - cell.cell_len
            if col.justify == "right":
                line.append(" " * pad)
                line.append_text(cell)
            else:
                line.append_text(cell)
                line.append(" " * pad)
            if i < len(columns) - 1:
                line.append(" ")
        line.truncate(width, pad=True)
        segments = [Segment(s.text, s.style) for s in line.render(self.app.console)]
        return Strip(segments).adjust_cell_length(width).apply_style(style)

    def _row_strip(
        self,
        row: Any,
        columns: list[Column],
        width: int,
        selected: bool,
        marked: bool,
        others: tuple[str, ...],
    ) -> Strip:
        gs = self.get_component_rich_style
        now = self.clock()
        cells: list[Text] = []
        for col in columns:
            key = col.key
            if key == "flags":
                cell = Text("●" if marked else " ", style=gs("ticket-list--marked"))
                cell.append("◉" if others else " ", style=gs("ticket-list--presence"))
            elif key == "number":
                cell = Text(f"#{row.number}", style=gs("ticket-list--dim"))
            elif key == "priority":
                prio = int(row.priority)
                label = (
                    PRIORITY_LABELS.get(prio, str(prio))
                    if col.width > 1
                    else PRIORITY_SYMBOLS.get(prio, "?")
                )
                pstyle = {3: "urgent", 2: "high", 0: "low"}.get(prio)
                cell = Text(label, style=gs(f"ticket-list--{pstyle}") if pstyle else "")
            elif key == "status":
                label = self.status_labels.get(row.status, row.status)
                cell = safe_line(label)
                if row.status == "new":
                    cell.stylize(gs("ticket-list--new"))
                elif row.status in ("solved", "closed", "merged"):
                    cell.stylize(gs("ticket-list--dim"))
            elif key == "subject":
                cell = safe_line(row.subject)
                if row.status == "new":
                    cell.stylize("bold")
            elif key == "customer":
                cell = safe_line(row.customer_name or row.customer_email or "")
            elif key == "assignee":
                cell = safe_line(row.assignee_login or "—")
                if not row.assignee_login:
                    cell.stylize(gs("ticket-list--dim"))
            elif key == "due":
                due = getattr(row, "next_due_at", None)
                if due is None:
                    cell = Text("")
                elif due < now:
                    cell = Text("-" + relative_time(due, now), style=gs("ticket-list--overdue"))
                else:
                    cell = Text(relative_time(due, now).replace("in ", ""))
            elif key == "updated":
                wake = row.postponed_until if row.status == "postponed" else None
                if wake is not None:
                    cell = Text(
                        "⏰" + relative_time(wake, now).replace("in ", ""),
                        style=gs("ticket-list--wake"),
                    )
                else:
                    cell = Text(relative_time(row.updated_at, now), style=gs("ticket-list--dim"))
            else:
                cell = Text("")
            cells.append(cell)
        if selected:
            style = gs("ticket-list--cursor" if self.has_focus else "ticket-list--cursor-blurred")
        elif marked:
            style = gs("ticket-list--marked")
        else:
            style = self.rich_style
        return self._join_cells(columns, cells, width, style)

    def on_focus(self) -> None:
        self._line_cache.clear()
        self.refresh()

    def on_blur(self) -> None:
        self._line_cache.clear()
        self.refresh()
