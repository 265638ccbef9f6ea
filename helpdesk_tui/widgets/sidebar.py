"""The sidebar: built-in views, one per queue, and saved views, each with a live count."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.table import Table
from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from helpdesk_tui.text import safe_line


@dataclass(frozen=True)
class ViewEntry:
    """One line of the sidebar: a named query and how many tickets match it now."""

    key: str
    name: str
    query: str
    #: "builtin", "queue", "personal" or "shared".
    kind: str = "builtin"
    #: None while counting (or when the count failed).
    count: int | None = None
    #: The saved view's id, for saved views.
    view_id: int | None = None
    #: Why the count failed (e.g. a saved view whose query no longer parses).
    problem: str | None = None


_SECTIONS = {"builtin": "", "queue": "Queues", "personal": "My views", "shared": "Team views"}


def format_count(count: int | None) -> str:
    """A compact count: 999, 12.3k, 1.2M; '…' while unknown."""
    if count is None:
        return "…"
    if count < 10_000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k" if count < 100_000 else f"{count // 1000}k"
    return f"{count / 1_000_000:.1f}M"


class Sidebar(OptionList):
    """A list of views; Enter or a click picks one (`Sidebar.ViewSelected`)."""

    DEFAULT_CSS = """
    Sidebar { width: 26; height: 1fr; border: none; padding: 0; }
    """

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="sidebar.down", tooltip="Next view"),
        Binding("k", "cursor_up", "Up", show=False, id="sidebar.up", tooltip="Previous view"),
    ]

    class ViewSelected(Message):
        """The agent picked a view."""

        def __init__(self, sidebar: Sidebar, view: ViewEntry) -> None:
            super().__init__()
            self.sidebar = sidebar
            self.view = view

        @property
        def control(self) -> Sidebar:
            return self.sidebar

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._entries: list[ViewEntry] = []
        #: Option index -> entry index (section headers are disabled options).
        self._index: dict[int, int] = {}
        self.selected_key: str | None = None

    @property
    def entries(self) -> list[ViewEntry]:
        return list(self._entries)

    def entry(self, key: str) -> ViewEntry | None:
        return next((e for e in self._entries if e.key == key), None)

    def set_views(self, entries: list[ViewEntry]) -> None:
        """Show these views; counts already known for the same query are kept."""
        old = {e.key: e for e in self._entries}
        merged = []
        for e in entries:
            prev = old.get(e.key)
            if e.count is None and prev is not None and prev.query == e.query:
                e = replace(e, count=prev.count)
            merged.append(e)
        self._entries = merged
        self._rebuild()

    def set_counts(
        self, counts: dict[str, int | None], problems: dict[str, str] | None = None
    ) -> None:
        """Update counts in place (no flicker, highlight kept)."""
        problems = problems or {}
        changed = False
        for i, e in enumerate(self._entries):
            if e.key in counts and (counts[e.key] != e.count or problems.get(e.key) != e.problem):
                self._entries[i] = replace(e, count=counts[e.key], problem=problems.get(e.key))
                changed = True
        if changed:
            for option_index, entry_index in self._index.items():
                self.replace_option_prompt_at_index(
                    option_index, self._prompt(self._entries[entry_index])
                )

    def _prompt(self, entry: ViewEntry) -> Table:
        grid = Table.grid(expand=True, padding=(0, 0))
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        marker = "▸ " if entry.key == self.selected_key else "  "
        name = Text(marker, end="")
        name.append(safe_line(entry.name))
        count = Text(" " + format_count(entry.count), style="bold" if entry.count else "dim")
        if entry.problem:
            count = Text(" !", style="bold red")
        grid.add_row(name, count)
        return grid

    def _rebuild(self) -> None:
        highlighted = self.highlighted
        highlighted_key = None
        if highlighted is not None and highlighted in self._index:
            highlighted_key = self._entries[self._index[highlighted]].key
        self.clear_options()
        self._index = {}
        section = None
        options: list[Option] = []
        for i, entry in enumerate(self._entries):
            title = _SECTIONS.get(entry.kind, "")
            if title != section:
                section = title
                if title:
                    options.append(Option(Text(title, style="bold dim"), disabled=True))
            self._index[len(options)] = i
            options.append(Option(self._prompt(entry), id=f"view-{i}"))
        self.add_options(options)
        target = highlighted_key or self.selected_key
        for option_index, entry_index in self._index.items():
            if self._entries[entry_index].key == target:
                self.highlighted = option_index
                break

    def select_key(self, key: str, *, announce: bool = False) -> None:
        """Mark `key` as the view being shown (and highlight it)."""
        self.selected_key = key
        self._rebuild()
        entry = self.entry(key)
        if announce and entry is not None:
            self.post_message(self.ViewSelected(self, entry))

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        entry_index = self._index.get(event.option_index)
        if entry_index is None:
            return
        entry = self._entries[entry_index]
        self.select_key(entry.key)
        self.post_message(self.ViewSelected(self, entry))
