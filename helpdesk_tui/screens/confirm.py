"""Small reusable modal dialogs: yes/no (No is the default), pick one of a list, ask for a line."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from helpdesk_tui.text import safe_block_content, safe_content

T = TypeVar("T", bound=Hashable)

#: What a dialog accepts as text: plain `str` is shown literally (never markup).
DialogText = str | Text | Content


def _content(value: DialogText, *, block: bool = False) -> Content | Text:
    if isinstance(value, str):
        return safe_block_content(value) if block else safe_content(value)
    return value


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True only on an explicit yes.

    `No` has the focus, so Enter, Escape and `n` all answer no. Push it with
    `app.push_screen(ConfirmScreen(...), callback)` or `await app.push_screen_wait(...)`.
    """

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
        background: $background 60%;
    }
    ConfirmScreen > Vertical {
        width: auto;
        min-width: 40;
        max-width: 90%;
        height: auto;
        max-height: 90%;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmScreen #question { text-style: bold; width: auto; max-width: 100%; }
    ConfirmScreen #detail { margin-top: 1; color: $text-muted; width: auto; max-width: 100%;
        max-height: 12; overflow-y: auto; }
    ConfirmScreen Horizontal { height: auto; width: auto; margin-top: 1; }
    ConfirmScreen Button { margin-right: 2; min-width: 10; }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", tooltip="Answer yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Answer no (default)"),
        Binding(
            "left,right",
            "app.focus_next",
            "Switch",
            show=False,
            id="confirm.switch",
            tooltip="Move between the buttons",
        ),
    ]

    def __init__(
        self,
        question: DialogText,
        detail: DialogText | None = None,
        *,
        yes: str = "Yes",
        no: str = "No",
    ) -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes_label = yes
        self.no_label = no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(_content(self.question), id="question")
            if self.detail is not None:
                yield Static(_content(self.detail, block=True), id="detail")
            with Horizontal():
                yield Button(Content(self.no_label), id="no", variant="primary")
                yield Button(Content(self.yes_label), id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


class ChoiceScreen(ModalScreen[T | None], Generic[T]):
    """Pick one value from a list (type to filter); dismisses with the value or None."""

    DEFAULT_CSS = """
    ChoiceScreen { align: center middle; background: $background 60%; }
    ChoiceScreen > Vertical {
        width: 60; max-width: 95%; height: auto; max-height: 90%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    ChoiceScreen #title { text-style: bold; padding: 1 0 0 0; }
    ChoiceScreen Input { margin: 1 0 0 0; }
    ChoiceScreen OptionList { height: auto; max-height: 16; margin: 1 0; }
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="choice.cancel", tooltip="Close without choosing"),
        Binding(
            "down",
            "move(1)",
            "Down",
            show=False,
            id="choice.down",
            tooltip="Highlight the next choice",
        ),
        Binding(
            "up",
            "move(-1)",
            "Up",
            show=False,
            id="choice.up",
            tooltip="Highlight the previous choice",
        ),
    ]

    def __init__(
        self,
        title: DialogText,
        choices: Sequence[tuple[T, DialogText]],
        *,
        current: T | None = None,
        filterable: bool | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.choices = list(choices)
        self.current = current
        self.filterable = len(self.choices) > 8 if filterable is None else filterable
        self._shown: list[tuple[T, DialogText]] = list(self.choices)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(_content(self.title_text), id="title")
            if self.filterable:
                yield Input(placeholder="type to filter", id="filter")
            yield OptionList(id="choices")

    def on_mount(self) -> None:
        self._fill(self.choices)
        if self.filterable:
            self.query_one("#filter", Input).focus()
        else:
            self.query_one(OptionList).focus()

    def _fill(self, shown: list[tuple[T, DialogText]]) -> None:
        self._shown = shown
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(_content(label)) for _value, label in shown])
        highlight = 0
        for i, (value, _label) in enumerate(shown):
            if value == self.current:
                highlight = i
        if shown:
            options.highlighted = highlight

    @on(Input.Changed, "#filter")
    def _filter(self, event: Input.Changed) -> None:
        needle = event.value.strip().lower()
        self._fill(
            [
                (v, lab)
                for v, lab in self.choices
                if not needle or needle in _plain(lab).lower() or needle in str(v).lower()
            ]
        )

    @on(Input.Submitted, "#filter")
    def _submit_filter(self, event: Input.Submitted) -> None:
        event.stop()
        self._choose(self.query_one(OptionList).highlighted)

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self._choose(event.option_index)

    def _choose(self, index: int | None) -> None:
        if index is None or not 0 <= index < len(self._shown):
            return
        self.dismiss(self._shown[index][0])

    def action_move(self, delta: int) -> None:
        options = self.query_one(OptionList)
        if not self._shown:
            return
        current = options.highlighted or 0
        options.highlighted = max(0, min(len(self._shown) - 1, current + delta))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _plain(value: DialogText) -> str:
    return value if isinstance(value, str) else value.plain


class PromptScreen(ModalScreen[str | None]):
    """Ask for one line of text; `validate` returns an error message to show, or None."""

    DEFAULT_CSS = """
    PromptScreen { align: center middle; background: $background 60%; }
    PromptScreen > Vertical {
        width: 70; max-width: 95%; height: auto;
        border: thick $accent; background: $surface; padding: 1 2;
    }
    PromptScreen #title { text-style: bold; }
    PromptScreen #help { color: $text-muted; width: 100%; }  /* wraps, never cut off */
    PromptScreen Input { margin-top: 1; }
    PromptScreen #error { color: $error; height: auto; }
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="prompt.cancel", tooltip="Close without saving"),
    ]

    def __init__(
        self,
        title: DialogText,
        *,
        value: str = "",
        placeholder: str = "",
        help: DialogText | None = None,
        validate: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.help_text = help
        self.validate = validate

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(_content(self.title_text), id="title")
            if self.help_text is not None:
                yield Label(_content(self.help_text), id="help")
            yield Input(value=self.value, placeholder=self.placeholder, id="value")
            yield Static("", id="error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        if not value:
            self.dismiss(None)
            return
        problem = self.validate(value) if self.validate else None
        if problem:
            self.query_one("#error", Static).update(safe_content(problem))
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)
