"""The ticket screen's pickers and prompts (one per field) and the parsing behind them."""

# Agent, status, priority, impact, urgency, tags, merge target, postpone time, pipe command
# (and its output), save folder: `ChoiceScreen`/`PromptScreen` from `confirm.py` plus pure
# parsing functions, so the parsing is tested without a terminal.

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from helpdesk_tui.screens.confirm import ChoiceScreen, PromptScreen
from store import lifecycle
from store.models import Level, Priority, Status
from store.sanitize import clean_line, clean_text
from store.timeparse import parse_future

#: Value the agent picker returns for "nobody".
UNASSIGN = ""
#: Value the priority picker returns to drop an override.
AUTO = "auto"


# --------------------------------------------------------------------------- parsing
def parse_postpone(value: str, now: datetime) -> datetime:
    """`2d`, `3h`, `90min`, `1w`, `2026-12-01`, `2026-12-01T09:00` -> an aware UTC time.

    A time without a zone is the agent's local time. Raises ValueError with a message that
    says what is accepted.
    """
    return parse_future(value, now)


def parse_ticket_number(value: str) -> int:
    """`1234` or `#1234` -> 1234; ValueError otherwise."""
    v = value.strip().lstrip("#").strip()
    if not v.isdigit() or int(v) <= 0:
        raise ValueError(f"not a ticket number: {value!r}")
    return int(v)


def parse_tags(answer: str, current: Iterable[str]) -> tuple[list[str], list[str]]:
    """What the tag editor's answer changes: (tags to add, tags to remove).

    The answer is either the new list of tags (`billing vip`), or changes only
    (`+billing -spam`). Tags are single words, lower-case; commas separate too.
    """
    words = [w.strip().lower() for w in re.split(r"[\s,]+", answer) if w.strip()]
    have = [t.lower() for t in current]
    if words and all(w[0] in "+-" for w in words):
        add = [w[1:] for w in words if w[0] == "+" and w[1:] and w[1:] not in have]
        remove = [w[1:] for w in words if w[0] == "-" and w[1:] in have]
        return _unique(add), _unique(remove)
    wanted = [w.lstrip("+") for w in words if not w.startswith("-")]
    add = [w for w in wanted if w and w not in have]
    remove = [t for t in have if t not in wanted]
    return _unique(add), _unique(remove)


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


# --------------------------------------------------------------------------- choosers
def _label(text: str, note: str = "", note_style: str = "dim") -> Content:
    return Content.assemble((clean_line(text), ""), (f"  {note}" if note else "", note_style))


def agent_picker(
    agents: Sequence[Any], current: str | None, me: str | None = None
) -> ChoiceScreen[str]:
    """Pick an active agent, or 'unassign' (returns a login, or `UNASSIGN`)."""
    choices: list[tuple[str, Content | str]] = [(UNASSIGN, _label("unassign", "nobody owns it"))]
    for agent in agents:
        if not getattr(agent, "active", True):
            continue
        notes = []
        if agent.login == me:
            notes.append("you")
        if agent.login == current:
            notes.append("current")
        choices.append(
            (
                agent.login,
                Content.assemble(
                    (clean_line(agent.login), "bold"),
                    "  ",
                    (clean_line(agent.name), ""),
                    (f"  ({', '.join(notes)})" if notes else "", "dim"),
                ),
            )
        )
    # Type to filter (a login or a name), like the queue's assign picker, however small the team.
    return ChoiceScreen("Assign to", choices, current=current or UNASSIGN, filterable=True)


def status_choices(current: str, labels: dict[str, str]) -> list[tuple[Status, Content | str]]:
    """The statuses the ticket may move to now, with the team's labels (merged excluded)."""
    now = Status(current)
    allowed = lifecycle.TRANSITIONS.get(now, frozenset())
    choices: list[tuple[Status, Content | str]] = []
    for status in Status:
        if status is Status.MERGED or (status not in allowed and status is not now):
            continue
        label = labels.get(status.value, status.value)
        note = "current" if status is now else ""
        if clean_line(label).lower() != status.value:
            note = f"{status.value}{', ' + note if note else ''}"
        if status is Status.POSTPONED and status is not now:
            note = (note + ", " if note else "") + "asks when"
        choices.append((status, _label(label, note)))
    return choices


def status_picker(current: str, labels: dict[str, str]) -> ChoiceScreen[Status]:
    """Pick the next status (only transitions the lifecycle allows)."""
    return ChoiceScreen("Status", status_choices(current, labels), current=Status(current))


def priority_picker(current: int, override_by: str | None, derived: Priority) -> ChoiceScreen[str]:
    """Pick a priority, or `AUTO` (from impact x urgency, dropping an override)."""
    choices: list[tuple[str, Content | str]] = [
        (
            AUTO,
            _label(
                f"auto: from impact x urgency ({derived.label})",
                "drops the override" if override_by else "",
            ),
        ),
    ]
    for p in sorted(Priority, reverse=True):
        notes = []
        if int(p) == current:
            notes.append("current")
        if p == derived:
            notes.append("matrix")
        choices.append((p.label, _label(p.label, ", ".join(notes))))
    selected = Priority(current).label if override_by else AUTO
    return ChoiceScreen("Priority", choices, current=selected)


def level_picker(what: str, current: int) -> ChoiceScreen[Level]:
    """Pick impact or urgency: low, medium, high."""
    hints = {
        "impact": {
            Level.LOW: "one person",
            Level.MEDIUM: "a team or a service degraded",
            Level.HIGH: "many people or a whole service down",
        },
        "urgency": {Level.LOW: "can wait", Level.MEDIUM: "soon", Level.HIGH: "work is stopped now"},
    }.get(what, {})
    choices: list[tuple[Level, Content | str]] = [
        (lv, _label(lv.label, ("current, " if int(lv) == current else "") + hints.get(lv, "")))
        for lv in sorted(Level, reverse=True)
    ]
    return ChoiceScreen(what.capitalize(), choices, current=Level(current))


# --------------------------------------------------------------------------- prompts
def tag_prompt(current: Sequence[str]) -> PromptScreen:
    """Edit the tags: the answer is the new list, or `+add -remove` changes."""
    return PromptScreen(
        "Tags",
        value=" ".join(current),
        placeholder="billing vip   (or +add -remove)",
        help="Edit the list (space-separated), or type only changes: +vip -spam",
        validate=_check_tags,
    )


def _check_tags(answer: str) -> str | None:
    for word in re.split(r"[\s,]+", answer):
        bare = word.lstrip("+-")
        if word and not bare:
            return f"{word!r} is not a tag"
    return None


def merge_prompt(number: int) -> PromptScreen:
    """Ask which ticket #`number` should be merged into."""

    def check(value: str) -> str | None:
        try:
            target = parse_ticket_number(value)
        except ValueError as exc:
            return str(exc)
        if target == number:
            return "a ticket cannot be merged into itself"
        return None

    return PromptScreen(
        f"Merge #{number} into ticket",
        placeholder="ticket number, e.g. 1234",
        help="Its thread moves there; this ticket becomes 'merged' with a pointer.",
        validate=check,
    )


def postpone_prompt(now: datetime, current: datetime | None = None) -> PromptScreen:
    """Ask until when to postpone: `2d`, `3h`, `90min`, `1w`, `2026-12-01T09:00`."""

    def check(value: str) -> str | None:
        try:
            when = parse_postpone(value, now)
        except ValueError as exc:
            return str(exc)
        del when
        return None

    help_text = "2d, 3h, 90min, 1w, or a local date and time such as 2026-12-01T09:00"
    if current is not None:
        help_text += f" (now until {current.astimezone():%Y-%m-%d %H:%M})"
    return PromptScreen("Postpone until", placeholder="2d", help=help_text, validate=check)


def pipe_prompt(what: str, last: str = "") -> PromptScreen:
    """Ask for the shell command to pipe `what` through."""
    return PromptScreen(
        f"Pipe {what} through",
        value=last,
        placeholder="e.g. wc -c   or   jq .subject",
        help="Fields come as $HELPDESK_TICKET_* variables; the data comes on stdin.",
    )


def folder_prompt(default: str | Path, filename: str) -> PromptScreen:
    """Ask which folder to save an attachment into (it must exist)."""

    def check(value: str) -> str | None:
        if not Path(value).expanduser().is_dir():
            return f"{value} is not a folder"
        return None

    return PromptScreen(
        "Save attachment into folder",
        value=str(default),
        help=f"Saved as {filename}; nothing is written outside this folder.",
        validate=check,
    )


# --------------------------------------------------------------------------- pipe output
class PipeResultScreen(ModalScreen[bool]):
    """What a piped command printed; `k` keeps it as an internal note (dismisses True)."""

    DEFAULT_CSS = """
    PipeResultScreen { align: center middle; background: $background 60%; }
    PipeResultScreen > Vertical {
        width: 110; max-width: 98%; height: auto; max-height: 90%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    PipeResultScreen #pipe-title { text-style: bold; }
    PipeResultScreen #pipe-output { height: auto; max-height: 20; border: round $panel;
        padding: 0 1; }
    PipeResultScreen #pipe-stderr { color: $error; height: auto; max-height: 6; }
    PipeResultScreen Horizontal { height: auto; }
    PipeResultScreen Button { margin-right: 2; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "k",
            "keep",
            "Keep as note",
            id="pipe.keep",
            tooltip="Add the output to the ticket as an internal note",
        ),
        Binding("escape,q", "close", "Close", id="pipe.close", tooltip="Close; nothing is kept"),
    ]

    def __init__(self, result: Any, what: str) -> None:
        super().__init__()
        self.result = result
        self.what = what

    def compose(self) -> ComposeResult:
        r = self.result
        status = "ok" if r.returncode == 0 else f"exit status {r.returncode}"
        with Vertical():
            yield Static(
                Content.assemble(
                    ("$ ", "dim"),
                    (clean_line(r.command), "bold"),
                    (f"   ({self.what}; {status})", "dim"),
                ),
                id="pipe-title",
            )
            with VerticalScroll(id="pipe-output"):
                out = clean_text(r.stdout) or "(no output)"
                if r.truncated:
                    out += "\n[output cut]"
                yield Static(Content(out))
            if r.stderr.strip():
                yield Static(Content(clean_text(r.stderr).strip()), id="pipe-stderr")
            with Horizontal():
                yield Button("Keep as internal note", id="keep", variant="warning")
                yield Button("Close", id="close", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def action_keep(self) -> None:
        self.dismiss(True)

    def action_close(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "keep")
