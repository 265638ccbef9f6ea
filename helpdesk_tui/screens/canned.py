"""The canned-response picker: fuzzy search over names and bodies, a filled-in preview, insert."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rapidfuzz import fuzz
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from store.sanitize import clean_line, clean_text
from store.templates import MARK_CLOSE, MARK_OPEN, Rendered, render

#: Below this score (0-100) a response is not shown for the query.
MIN_SCORE = 60.0
#: A name match counts more than the same match somewhere in a body.
BODY_WEIGHT = 0.85


@dataclass(frozen=True)
class CannedItem:
    """A canned response as the picker needs it."""

    id: int
    name: str
    body: str
    shared: bool = True

    @classmethod
    def from_model(cls, canned: Any) -> CannedItem:
        return cls(canned.id, canned.name, canned.body, canned.owner_id is None)


def search_canned(query: str, items: Sequence[CannedItem]) -> list[tuple[CannedItem, float]]:
    """Items matching `query` (fuzzy, typos forgiven), best first; all of them for no query."""
    q = " ".join(query.lower().split())
    if not q:
        return [(item, 100.0) for item in sorted(items, key=lambda i: i.name.lower())]
    scored: list[tuple[CannedItem, float]] = []
    for item in items:
        name = item.name.lower()
        name_score = max(fuzz.partial_ratio(q, name), fuzz.token_set_ratio(q, name))
        if q in name:
            name_score = 100.0 + (10.0 if name.startswith(q) else 0.0)
        body = item.body.lower()
        body_score = BODY_WEIGHT * (100.0 if q in body else fuzz.partial_token_set_ratio(q, body))
        score = max(name_score, body_score)
        if score >= MIN_SCORE:
            scored.append((item, score))
    scored.sort(key=lambda pair: (-pair[1], pair[0].name.lower()))
    return scored


def marked_content(text: str) -> Content:
    """Rendered text with its ⟦unresolved⟧ variables highlighted."""
    parts: list[tuple[str, str]] = []
    rest = text
    while MARK_OPEN in rest:
        before, _, after = rest.partition(MARK_OPEN)
        name, closed, tail = after.partition(MARK_CLOSE)
        parts.append((before, ""))
        if not closed:
            parts.append((MARK_OPEN + name, ""))
            rest = ""
            break
        parts.append((f"{MARK_OPEN}{name}{MARK_CLOSE}", "bold reverse $error"))
        rest = tail
    parts.append((rest, ""))
    return Content.assemble(*parts)


class CannedScreen(ModalScreen[Rendered | None]):
    """Pick a canned response; dismisses with it rendered for this ticket (or None)."""

    DEFAULT_CSS = """
    CannedScreen { align: center middle; background: $background 60%; }
    CannedScreen > Vertical {
        width: 110; max-width: 98%; height: 80%; min-height: 16;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    CannedScreen #canned-title { text-style: bold; padding: 0 0 0 0; }
    CannedScreen #canned-search { margin: 0 0 1 0; }
    CannedScreen #canned-body { height: 1fr; }
    CannedScreen #canned-list { width: 2fr; height: 1fr; border: none; }
    CannedScreen #canned-preview-box { width: 3fr; height: 1fr; border-left: vkey $panel;
        padding: 0 1; }
    CannedScreen #canned-warning { color: $error; height: auto; }
    CannedScreen #canned-hint { color: $text-muted; height: 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape", "cancel", "Cancel", id="canned.cancel", tooltip="Close without inserting"
        ),
        Binding(
            "down",
            "move(1)",
            "Down",
            show=False,
            id="canned.down",
            tooltip="Highlight the next response",
        ),
        Binding(
            "up",
            "move(-1)",
            "Up",
            show=False,
            id="canned.up",
            tooltip="Highlight the previous response",
        ),
        Binding(
            "enter",
            "insert",
            "Insert",
            id="canned.insert",
            priority=True,
            tooltip="Insert the highlighted response with its variables filled in",
        ),
    ]

    def __init__(self, items: Sequence[CannedItem], context: Mapping[str, str]) -> None:
        super().__init__()
        self.items = list(items)
        self.context = dict(context)
        self._shown: list[CannedItem] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Content("Canned responses"), id="canned-title")
            yield Input(placeholder="type to search names and bodies", id="canned-search")
            with Horizontal(id="canned-body"):
                yield OptionList(id="canned-list")
                with VerticalScroll(id="canned-preview-box"):
                    yield Static("", id="canned-warning")
                    yield Static("", id="canned-preview")
            yield Static(Content("enter insert · ↑↓ choose · esc cancel"), id="canned-hint")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one("#canned-search", Input).focus()

    @property
    def highlighted(self) -> CannedItem | None:
        index = self.query_one("#canned-list", OptionList).highlighted
        if index is None or not 0 <= index < len(self._shown):
            return None
        return self._shown[index]

    def _fill(self, query: str) -> None:
        self._shown = [item for item, _score in search_canned(query, self.items)]
        options = self.query_one("#canned-list", OptionList)
        options.clear_options()
        options.add_options(
            [
                Option(
                    Content.assemble(
                        (clean_line(i.name), "bold"), ("" if i.shared else "  (mine)", "dim")
                    )
                )
                for i in self._shown
            ]
        )
        if self._shown:
            options.highlighted = 0
        self._preview()

    def _preview(self) -> None:
        item = self.highlighted
        preview = self.query_one("#canned-preview", Static)
        warning = self.query_one("#canned-warning", Static)
        if item is None:
            preview.update(
                Content(
                    "No canned response matches."
                    if self.items
                    else "No canned responses yet: add some with `helpdesk canned add`."
                )
            )
            warning.update("")
            return
        rendered = render(clean_text(item.body), self.context)
        preview.update(marked_content(rendered.text))
        problems = []
        if rendered.unknown:
            problems.append("unknown variables: " + ", ".join(rendered.unknown))
        if rendered.empty:
            problems.append("no value for: " + ", ".join(rendered.empty))
        warning.update(
            Content("; ".join(problems) + " — fix them before sending\n" if problems else "")
        )

    @on(Input.Changed, "#canned-search")
    def _search(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(OptionList.OptionHighlighted, "#canned-list")
    def _highlighted(self) -> None:
        self._preview()

    @on(OptionList.OptionSelected, "#canned-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_insert()

    def action_move(self, delta: int) -> None:
        options = self.query_one("#canned-list", OptionList)
        if self._shown:
            current = options.highlighted or 0
            options.highlighted = max(0, min(len(self._shown) - 1, current + delta))

    def action_insert(self) -> None:
        item = self.highlighted
        if item is None:
            return
        self.dismiss(render(clean_text(item.body), self.context))

    def action_cancel(self) -> None:
        self.dismiss(None)
