"""Writing on a ticket: the inline reply/note composer, its drafts, and the review step."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.reactive import var
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Button, Input, Select, Static, TextArea

from helpdesk_tui.editor import EditorError, edit_text
from helpdesk_tui.screens.canned import CannedItem, CannedScreen
from helpdesk_tui.widgets.thread import ArticleInfo, ArticleView
from store.engine import StoreError, finish_write
from store.models import Status
from store.sanitize import clean_line, clean_text
from store.templates import unresolved

#: Seconds of quiet typing before the draft is written to the store.
DRAFT_DEBOUNCE = 1.0

REPLY = "reply"
NOTE = "note"


def kind_title(kind: str) -> str:
    return "Reply to the customer" if kind == REPLY else "INTERNAL NOTE"


# --------------------------------------------------------------------------- the composer
class ComposerTextArea(TextArea):
    """The composer's editor: its own keys win over TextArea's (ctrl+e is not line-end here)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "ctrl+s",
            "composer('review')",
            "Review & send",
            id="compose.review",
            tooltip="Go to the review step: recipients, status, then send / edit / discard",
        ),
        Binding(
            "ctrl+t",
            "composer('canned')",
            "Canned",
            id="compose.canned",
            tooltip="Insert a canned response (fuzzy search, variables filled in)",
        ),
        Binding(
            "ctrl+e",
            "composer('editor')",
            "Editor",
            id="compose.editor",
            tooltip="Continue in $VISUAL / $EDITOR (HELPDESK_EDITOR first)",
        ),
        Binding(
            "escape",
            "composer('close')",
            "Close",
            id="compose.close",
            tooltip="Close the composer; the draft is kept",
        ),
    ]

    def action_composer(self, what: str) -> None:
        composer = self.query_ancestor(Composer)
        if what == "review":
            composer.request_review()
        elif what == "canned":
            composer.action_canned()
        elif what == "editor":
            composer.action_editor()
        elif what == "close":
            composer.request_close()


class Composer(Vertical):
    """The inline editor under the thread; saves a draft a second after typing stops."""

    DEFAULT_CSS = """
    Composer {
        height: 45%;
        min-height: 8;
        border-top: thick $success;
        background: $surface;
    }
    Composer.-note {
        border-top: thick $warning;
        background: $warning 8%;
    }
    Composer #composer-title {
        height: 1;
        padding: 0 1;
        text-style: bold;
        color: $success;
    }
    Composer.-note #composer-title {
        color: $warning;
    }
    Composer #composer-text {
        height: 1fr;
        border: none;
    }
    Composer #composer-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    Composer #composer-status.-problem {
        color: $error;
        text-style: bold;
    }
    """

    class ReviewRequested(Message):
        """The agent pressed ctrl+s: show the review step."""

        def __init__(self, composer: Composer) -> None:
            super().__init__()
            self.composer = composer

    class CloseRequested(Message):
        """The agent closed the composer (the draft stays in the store)."""

        def __init__(self, composer: Composer) -> None:
            super().__init__()
            self.composer = composer

    #: "reply" or "note".
    kind: var[str] = var(REPLY)
    #: Who a reply goes to (shown in the title).
    recipient: var[str] = var("")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        #: The ticket this is written on (set by `start`).
        self.ticket_id: int | None = None
        #: The newest article the agent had seen when they started writing.
        self.base_article_id: int | None = None
        #: Variable values for canned responses.
        self.template_context: dict[str, str] = {}
        self.saved_at: datetime | None = None
        self._saved_body = ""
        self._timer: Timer | None = None
        self._loading = False
        self._text = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="composer-title")
        yield ComposerTextArea(id="composer-text", soft_wrap=True, tab_behavior="focus")
        yield Static("", id="composer-status")

    @property
    def text_area(self) -> ComposerTextArea:
        return self.query_one(ComposerTextArea)

    @property
    def text(self) -> str:
        """The text being written (kept here too, so it can be saved while unmounting)."""
        return self._text

    @property
    def service(self) -> Any:
        return self.app.service  # type: ignore[attr-defined]

    @property
    def dirty(self) -> bool:
        """Typed text not yet saved as a draft."""
        return self.text != self._saved_body

    # ----------------------------------------------------------------- opening
    def start(
        self,
        kind: str,
        ticket_id: int,
        body: str,
        base_article_id: int | None,
        *,
        saved_at: datetime | None = None,
    ) -> None:
        """Show the composer for `kind` with `body` (a resumed draft, or empty)."""
        self._cancel_timer()
        self.kind = kind
        self.ticket_id = ticket_id
        self.base_article_id = base_article_id
        self.saved_at = saved_at
        self._saved_body = body
        self._text = body
        self._loading = True
        self.text_area.load_text(body)
        self._loading = False
        self.set_class(kind == NOTE, "-note")
        self._title()
        self._status()
        self.text_area.focus()
        self.text_area.move_cursor(self.text_area.document.end)

    def watch_recipient(self) -> None:
        self._title()

    def _title(self) -> None:
        if not self.is_mounted:
            return
        if self.kind == NOTE:
            title = Content.assemble(
                ("INTERNAL NOTE", "bold reverse"), ("  not sent to the customer", "bold")
            )
        else:
            title = Content.assemble(
                ("Reply", "bold reverse"),
                ("  to ", ""),
                (clean_line(self.recipient) or "the customer", "bold"),
            )
        self.query_one("#composer-title", Static).update(title)

    def _status(self) -> None:
        status = self.query_one("#composer-status", Static)
        problems = unresolved(self.text)
        if problems:
            status.update(
                Content(
                    "Fill in before sending: " + ", ".join(f"⟦{clean_line(p)}⟧" for p in problems)
                )
            )
            status.add_class("-problem")
            return
        status.remove_class("-problem")
        keys = "ctrl+s review · ctrl+t canned · ctrl+e editor · esc close"
        if self.dirty:
            saved = "unsaved"
        elif self.saved_at is not None:
            saved = f"draft saved {self.saved_at.astimezone():%H:%M:%S}"
        else:
            saved = ""
        status.update(Content(f"{saved}   {keys}" if saved else keys))

    # ----------------------------------------------------------------- drafts
    @on(TextArea.Changed, "#composer-text")
    def _changed(self) -> None:
        self._text = self.text_area.text
        if self._loading:
            return
        self._status()
        self._cancel_timer()
        self._timer = self.set_timer(DRAFT_DEBOUNCE, self._save_due)

    async def on_unmount(self) -> None:
        # The console is closing (or the connection dropped): keep the last second of typing.
        # The store may already be closed while the app shuts down; then the debounced save
        # of a second ago is what survives.
        with contextlib.suppress(Exception):
            await self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _save_due(self) -> None:
        self._timer = None
        self.save_draft()

    @work(exclusive=True, group="composer-draft", exit_on_error=False)
    async def save_draft(self) -> None:
        """Write the draft now (in a worker)."""
        await self.flush()

    async def flush(self) -> bool:
        """Write the draft if it changed (empty text removes it). True when stored."""
        self._cancel_timer()
        if self.ticket_id is None or not self.dirty:
            return True
        body, kind, ticket_id = self.text, self.kind, self.ticket_id
        me = self.app.me  # type: ignore[attr-defined]
        try:
            # typing replaces a running save (an exclusive worker): the write still finishes
            if body.strip():
                await finish_write(
                    self.service.save_draft(me.id, ticket_id, kind, body, self.base_article_id)
                )
            else:
                await finish_write(self.service.delete_draft(me.id, ticket_id, kind))
        except StoreError as exc:
            self.notify(f"The draft could not be saved: {exc}", severity="error", markup=False)
            return False
        self._saved_body = body
        self.saved_at = self.service.clock()
        if self.is_mounted:
            self._status()
        return True

    def forget(self) -> None:
        """Empty the composer after sending or discarding (the caller removed the draft)."""
        self._cancel_timer()
        self._saved_body = ""
        self._text = ""
        self._loading = True
        self.text_area.load_text("")
        self._loading = False
        self.ticket_id = None
        self.base_article_id = None
        self.saved_at = None

    # ----------------------------------------------------------------- actions
    def request_review(self) -> None:
        self.post_message(self.ReviewRequested(self))

    def request_close(self) -> None:
        self.post_message(self.CloseRequested(self))

    def insert(self, text: str) -> None:
        """Insert at the cursor (replacing a selection)."""
        area = self.text_area
        area.replace(text, area.selection.start, area.selection.end)
        area.focus()

    def action_editor(self) -> None:
        """Continue in the external editor; the console suspends meanwhile."""
        try:
            result = edit_text(
                self.app, self.text, suffix=".txt" if self.kind == NOTE else ".eml.txt"
            )
        except EditorError as exc:
            self.notify(str(exc), title="Editor", severity="error", markup=False)
            return
        if result.changed:
            area = self.text_area
            area.replace(result.text, area.document.start, area.document.end)
            self.notify("Text taken over from the editor", timeout=3, markup=False)
        area = self.text_area
        area.focus()

    @work(exclusive=True, group="composer-canned", exit_on_error=False)
    async def action_canned(self) -> None:
        """Pick a canned response and insert it with its variables filled in."""
        me = self.app.me  # type: ignore[attr-defined]
        try:
            items = [CannedItem.from_model(c) for c in await self.service.list_canned(me.id)]
        except StoreError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        rendered = await self.app.push_screen_wait(CannedScreen(items, self.template_context))
        if rendered is None:
            self.text_area.focus()
            return
        self.insert(rendered.text)
        missing = [*rendered.unknown, *rendered.empty]
        if missing:
            self.notify(
                "Fill these in before sending: " + ", ".join(missing),
                title="Canned response has unresolved variables",
                severity="warning",
                timeout=8,
                markup=False,
            )


# --------------------------------------------------------------------------- review
@dataclass(frozen=True)
class ReviewResult:
    """The agent's decision in the review step."""

    action: str  # "send" / "edit" / "discard"
    status: Status | None = None
    cc: str = ""


class ReviewScreen(ModalScreen[ReviewResult]):
    """Before sending: newer entries first (if any), recipients, the status, the text."""

    DEFAULT_CSS = """
    ReviewScreen { align: center middle; background: $background 60%; }
    ReviewScreen #review-box {
        width: 110; max-width: 98%; height: auto; max-height: 96%;
        border: thick $success; background: $surface; padding: 0 1;
    }
    ReviewScreen.-note #review-box { border: thick $warning; }
    ReviewScreen #review-title { height: auto; }
    ReviewScreen #review-newer {
        height: auto; max-height: 12; border: heavy $error; padding: 0 1; margin: 0 0 1 0;
    }
    ReviewScreen #review-newer-title { color: $error; text-style: bold; }
    ReviewScreen .review-row { height: auto; }
    ReviewScreen .review-label { width: 10; padding: 1 0 0 0; color: $text-muted; }
    ReviewScreen #review-to { padding: 1 0 0 0; width: 1fr; }
    ReviewScreen #review-cc { width: 1fr; }
    ReviewScreen #review-status { width: 1fr; }
    ReviewScreen #review-internal {
        background: $warning 20%; color: $warning; text-style: bold; padding: 0 1;
    }
    ReviewScreen #review-body {
        height: auto; max-height: 10; border: round $panel; padding: 0 1;
    }
    ReviewScreen #review-buttons { height: auto; margin: 0 0 0 0; }
    ReviewScreen Button { margin-right: 2; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "ctrl+s",
            "decide('send')",
            "Send",
            priority=True,
            id="review.send",
            tooltip="Send the reply (or add the note) now",
        ),
        Binding(
            "escape",
            "decide('edit')",
            "Edit",
            id="review.edit",
            tooltip="Back to the text; nothing is sent",
        ),
        Binding(
            "ctrl+x",
            "decide('discard')",
            "Discard",
            id="review.discard",
            tooltip="Throw the text and its draft away (asks first)",
        ),
    ]

    def __init__(
        self,
        *,
        kind: str,
        number: int,
        body: str,
        to: str = "",
        cc: str = "",
        statuses: Sequence[tuple[Status, str]] = (),
        default_status: Status | None = None,
        current_status_label: str = "",
        newer: Sequence[ArticleInfo] = (),
        now: datetime | None = None,
    ) -> None:
        super().__init__(classes="-note" if kind == NOTE else "")
        self.kind = kind
        self.number = number
        self.body = body
        self.to = to
        self.cc = cc
        self.statuses = list(statuses)
        self.default_status = default_status
        self.current_status_label = current_status_label
        self.newer = list(newer)
        self.now = now

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="review-box"):
            what = "reply" if self.kind == REPLY else "internal note"
            yield Static(
                Content.assemble(
                    (f"Review {what} on #{self.number}", "bold"),
                    ("   ctrl+s send · esc edit · ctrl+x discard", "dim"),
                ),
                id="review-title",
            )
            if self.newer:
                with VerticalScroll(id="review-newer"):
                    count = len(self.newer)
                    yield Static(
                        Content(
                            f"{count} new {'entry was' if count == 1 else 'entries were'} added "
                            "while you were writing. Read before sending:"
                        ),
                        id="review-newer-title",
                    )
                    for info in self.newer:
                        yield ArticleView(info, show_quotes=False, now=self.now)
            if self.kind == REPLY:
                with Horizontal(classes="review-row"):
                    yield Static(Content("To"), classes="review-label")
                    yield Static(Content(clean_line(self.to) or "(no address!)"), id="review-to")
                with Horizontal(classes="review-row"):
                    yield Static(Content("Cc"), classes="review-label")
                    yield Input(
                        value=self.cc,
                        placeholder="more recipients, comma-separated",
                        id="review-cc",
                    )
                with Horizontal(classes="review-row"):
                    yield Static(Content("Status"), classes="review-label")
                    yield Select(
                        [(Content(label), status) for status, label in self.statuses],
                        value=self.default_status if self.default_status else Select.NULL,
                        allow_blank=self.default_status is None,
                        id="review-status",
                    )
            else:
                yield Static(
                    Content(
                        "INTERNAL NOTE — not sent to the customer. "
                        f"Status stays {self.current_status_label}."
                    ),
                    id="review-internal",
                )
            with VerticalScroll(id="review-body"):
                yield Static(Content(clean_text(self.body)))
            with Horizontal(id="review-buttons"):
                yield Button(
                    "Send"
                    if self.kind == REPLY and not self.newer
                    else ("Send anyway" if self.kind == REPLY else "Add note"),
                    id="send",
                    variant="success" if self.kind == REPLY else "warning",
                )
                yield Button("Edit", id="edit", variant="primary")
                yield Button("Discard", id="discard", variant="error")

    def on_mount(self) -> None:
        # With newer entries, Enter must not send blindly: start on Edit.
        self.query_one("#edit" if self.newer else "#send", Button).focus()

    def _status(self) -> Status | None:
        if self.kind != REPLY:
            return None
        value = self.query_one("#review-status", Select).value
        return value if isinstance(value, Status) else None

    def _cc(self) -> str:
        if self.kind != REPLY:
            return ""
        return self.query_one("#review-cc", Input).value.strip()

    def action_decide(self, action: str) -> None:
        self.dismiss(ReviewResult(action, self._status(), self._cc()))

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id:
            self.action_decide(event.button.id)


# --------------------------------------------------------------------------- drafts on open
class DraftOfferScreen(ModalScreen[str]):
    """Reopening a ticket with an unsent draft: resume it, keep it for later, or discard it."""

    DEFAULT_CSS = """
    DraftOfferScreen { align: center middle; background: $background 60%; }
    DraftOfferScreen > Vertical {
        width: 80; max-width: 96%; height: auto; max-height: 90%;
        border: thick $accent; background: $surface; padding: 1 2;
    }
    DraftOfferScreen #draft-question { text-style: bold; }
    DraftOfferScreen #draft-preview {
        height: auto; max-height: 8; border: round $panel; padding: 0 1; margin: 1 0;
    }
    DraftOfferScreen Horizontal { height: auto; }
    DraftOfferScreen Button { margin-right: 2; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "r",
            "decide('resume')",
            "Resume",
            id="draft.resume",
            tooltip="Open the composer with the draft",
        ),
        Binding(
            "l,escape",
            "decide('later')",
            "Later",
            id="draft.later",
            tooltip="Keep the draft; r or n opens it later",
        ),
        Binding(
            "d",
            "decide('discard')",
            "Discard",
            id="draft.discard",
            tooltip="Throw the draft away (asks first)",
        ),
    ]

    def __init__(self, kind: str, body: str, saved_at: datetime | None) -> None:
        super().__init__()
        self.kind = kind
        self.body = body
        self.saved_at = saved_at

    def compose(self) -> ComposeResult:
        what = "reply" if self.kind == REPLY else "internal note"
        when = f" (saved {self.saved_at.astimezone():%Y-%m-%d %H:%M})" if self.saved_at else ""
        with Vertical():
            yield Static(
                Content(f"You have an unsent {what} on this ticket{when}."), id="draft-question"
            )
            with VerticalScroll(id="draft-preview"):
                yield Static(Content(clean_text(self.body)))
            with Horizontal():
                yield Button("Resume", id="resume", variant="primary")
                yield Button("Later", id="later")
                yield Button("Discard", id="discard", variant="error")

    def on_mount(self) -> None:
        self.query_one("#resume", Button).focus()

    def action_decide(self, action: str) -> None:
        self.dismiss(action)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id:
            self.dismiss(event.button.id)


def reply_statuses(current: str, labels: Mapping[str, str]) -> list[tuple[Status, str]]:
    """Statuses a reply may leave the ticket in (answered first), with the team's labels."""
    from store import lifecycle

    now = Status(current)
    allowed = set(lifecycle.TRANSITIONS.get(now, frozenset())) | {now}
    order = [
        Status.ANSWERED,
        Status.PENDING,
        Status.ON_HOLD,
        Status.OPEN,
        Status.SOLVED,
        Status.CLOSED,
    ]
    out: list[tuple[Status, str]] = []
    for status in order:
        if status in allowed:
            label = clean_line(labels.get(status.value, status.value))
            note = " (default)" if status is Status.ANSWERED else ""
            if status is now:
                note += " (unchanged)"
            out.append((status, f"{label}{note}"))
    return out
