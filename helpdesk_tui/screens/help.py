"""`?`: the keys of the current screen (after the user's keymap), the query keys, the orders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from store.listing import ORDERS
from store.query import KEYS

#: (keys as shown, what it does, longer explanation, binding id)
KeyRow = tuple[str, str, str, str]


def screen_keys(screen: Screen[Any]) -> list[KeyRow]:
    """The key bindings active on `screen` (its focused widgets and the app included)."""
    app = screen.app
    by_id: dict[str, KeyRow] = {}
    order: list[str] = []
    for active in screen.active_bindings.values():
        binding = active.binding
        if binding.system or not binding.id:
            continue  # Textual's own scrolling/focus keys have no id; ours all do
        ident = binding.id
        keys = app.get_key_display(binding)
        if ident in by_id:
            old = by_id[ident]
            if keys not in old[0].split(" "):
                by_id[ident] = (f"{old[0]} {keys}", old[1], old[2], old[3])
            continue
        order.append(ident)
        by_id[ident] = (keys, binding.description, binding.tooltip, ident)
    return [by_id[i] for i in order]


def _table(title: str, rows: Iterable[tuple[str, ...]], headers: tuple[str, ...]) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        expand=True,
        show_edge=False,
        box=None,
        padding=(0, 1),
    )
    for i, header in enumerate(headers):
        table.add_column(
            header, style="bold" if i == 0 else "", no_wrap=i == 0, ratio=None if i == 0 else 1
        )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


class HelpScreen(ModalScreen[None]):
    """A scrollable cheat sheet; Escape, `q` or `?` closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background 60%; }
    HelpScreen > VerticalScroll {
        width: 100; max-width: 95%; height: 90%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    HelpScreen Static { margin-bottom: 1; }
    """

    BINDINGS = [
        Binding(
            "escape,question_mark", "close", "Close", id="help.close", tooltip="Close the help"
        ),
        Binding("j,down", "scroll(1)", "Down", show=False, id="help.down", tooltip="Scroll down"),
        Binding("k,up", "scroll(-1)", "Up", show=False, id="help.up", tooltip="Scroll up"),
    ]

    def __init__(self, keys: list[KeyRow], screen_name: str = "") -> None:
        super().__init__()
        self.keys = keys
        self.screen_name = screen_name

    @classmethod
    def for_screen(cls, screen: Screen[Any]) -> HelpScreen:
        """The help for `screen`, read now (before the help itself takes the focus)."""
        name = getattr(screen, "HELP_TITLE", "") or type(screen).__name__
        return cls(screen_keys(screen), name)

    @property
    def sections(self) -> list[RenderableType]:
        """What the help shows, top to bottom."""
        return [
            _table(
                "Keys",
                ((k, d, t) for k, d, t, _i in self.keys),
                ("Key", "Action", "What it does"),
            ),
            _table(
                "Query keys (the / bar, saved views, the CLI)",
                ((f"{spec.name}:", spec.summary, spec.example) for spec in KEYS),
                ("Key", "Meaning", "Example"),
            ),
            Text(
                "Terms are AND-ed; a repeated key ORs its values. '-' negates. Bare words "
                "search subjects and bodies; #1234 is a ticket number. Dates: 7d.. (since 7 "
                "days ago), ..2026-01-31, a..b, <7d (less than 7 days ago); units min h d w "
                "mo y."
            ),
            _table("Orders (o cycles)", ORDERS.items(), ("Order", "Meaning")),
        ]

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = f"Help: {self.screen_name}"
            for section in self.sections:
                yield Static(section)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, lines: int) -> None:
        self.query_one(VerticalScroll).scroll_relative(y=lines, animate=False)
