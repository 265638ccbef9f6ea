"""The query bar: the store's query language, highlighted, errors shown with a caret, ranges shown."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.highlighter import Highlighter
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.reactive import var
from textual.widgets import Input, Label, Static

from helpdesk_tui.text import safe_line

if TYPE_CHECKING:
    from store.query import Query

# `store.query` (SQLAlchemy underneath) is imported on first use, not with this module: the
# console composes the bar in its first frame, before the store layer has loaded.

_TOKEN_STYLES = {
    "negation": "bold red",
    "key": "bold cyan",
    "operator": "magenta",
    "value": "green",
    "number": "bold yellow",
    "phrase": "yellow",
    "word": "",
    "error": "underline red",
}


class QueryHighlighter(Highlighter):
    """Colours keys, values and phrases as the agent types (spans from `store.query.tokens`)."""

    def highlight(self, text: Text) -> None:
        if not text.plain:
            return
        from store.query import tokens

        for token in tokens(text.plain):
            style = _TOKEN_STYLES.get(token.kind)
            if style:
                text.stylize(style, token.start, token.end)


class QueryInput(Input):
    """The text field of the bar (its own class so CSS and keys can target it)."""

    BINDINGS = [
        Binding(
            "escape",
            "clear_query",
            "Clear",
            id="query.clear",
            tooltip="Clear the query and go back to the list",
        ),
    ]

    def action_clear_query(self) -> None:
        bar = self.parent.parent if self.parent is not None else None
        if isinstance(bar, QueryBar):
            bar.clear()


class QueryBar(Vertical):
    """One line to type a query; below it the error (with a caret) or the resolved dates.

    Sends `QueryBar.Submitted` with the parsed query when Enter is pressed on valid text, and
    `QueryBar.Cleared` when Escape empties it. The owner pushes `description` down.
    """

    DEFAULT_CSS = """
    QueryBar { height: auto; }
    QueryBar > Horizontal { height: 1; }
    QueryBar #query-prompt { width: auto; padding: 0 1 0 0; color: $text-muted; }
    QueryBar QueryInput { border: none; height: 1; padding: 0; background: $boost; width: 1fr; }
    QueryBar QueryInput:focus { border: none; background: $boost; }
    QueryBar #query-error { color: $error; height: auto; display: none; }
    QueryBar #query-describe { color: $text-muted; height: auto; display: none; }
    QueryBar.-error #query-error { display: block; }
    QueryBar.-described #query-describe { display: block; }
    """

    #: Resolved absolute date ranges of the current query, one per line (set by the owner).
    description: var[tuple[str, ...]] = var(())
    #: The problem with the text (message, 1-based column), or None.
    error: var[tuple[str, int] | None] = var(None)
    #: The query now applied to the list (what Enter last accepted).
    applied: var[str] = var("")

    class Submitted(Message):
        """A valid query was confirmed."""

        def __init__(self, bar: QueryBar, text: str, query: Query) -> None:
            super().__init__()
            self.bar = bar
            self.text = text
            self.query = query

        @property
        def control(self) -> QueryBar:
            return self.bar

    class Cleared(Message):
        """The query was cleared (Escape)."""

        def __init__(self, bar: QueryBar) -> None:
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> QueryBar:
            return self.bar

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(id=id)
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("/", id="query-prompt")
            yield QueryInput(
                placeholder=self._placeholder,
                highlighter=QueryHighlighter(),
                id="query-input",
                select_on_focus=False,
            )
        yield Static("", id="query-error")
        yield Static("", id="query-describe")

    @property
    def input(self) -> QueryInput:
        return self.query_one(QueryInput)

    @property
    def text(self) -> str:
        return self.input.value

    @property
    def placeholder(self) -> str:
        return self.input.placeholder

    @placeholder.setter
    def placeholder(self, value: str) -> None:
        self.input.placeholder = value

    def set_text(self, text: str) -> None:
        """Replace the text (cursor at the end), keeping any error until the next submit."""
        self.input.value = text
        self.input.cursor_position = len(text)

    def clear(self) -> None:
        """Empty the bar, forget errors and ranges, and tell the owner."""
        self.input.value = ""
        self.error = None
        self.description = ()
        self.applied = ""
        self.post_message(self.Cleared(self))

    def submit(self) -> None:
        """Parse the text: show the error inline, or send `Submitted`."""
        from store.query import QueryError, parse

        text = self.input.value
        try:
            query = parse(text)
        except QueryError as exc:
            self.error = (exc.message, exc.position)
            return
        self.error = None
        self.applied = text
        self.post_message(self.Submitted(self, text, query))

    @on(Input.Submitted, "#query-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit()

    @on(Input.Changed, "#query-input")
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.error is not None:
            self._render_error()  # keep the caret under the same column while editing

    def watch_error(self) -> None:
        self.set_class(self.error is not None, "-error")
        self._render_error()

    def watch_description(self) -> None:
        self.set_class(bool(self.description), "-described")
        self.query_one("#query-describe", Static).update(Content("\n".join(self.description)))

    def _render_error(self) -> None:
        error_line = self.query_one("#query-error", Static)
        if self.error is None:
            error_line.update("")
            return
        message, position = self.error
        offset = self.caret_offset(position)
        line = Text(" " * offset + "^ ", style="bold")
        line.append_text(safe_line(message))  # messages quote the (possibly saved) query
        error_line.update(line)

    def caret_offset(self, position: int) -> int:
        """Cells from the bar's left edge to the 1-based column `position` of the text."""
        field = self.input
        text = field.value
        before = cell_len(text[: max(0, position - 1)])
        origin = field.content_region.x - self.content_region.x
        return max(0, origin + before - int(field.scroll_offset.x))
