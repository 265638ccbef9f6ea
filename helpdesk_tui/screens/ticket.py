"""The ticket screen: header, threaded history, customer panel, composer, and every ticket action."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.reactive import var
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer

from helpdesk_tui.commands import PaletteCommand, ScreenCommands
from helpdesk_tui.messages import StoreChanged
from helpdesk_tui.pipe import (
    PipeError,
    SaveError,
    attachment_env,
    command_env,
    output_note,
    run_pipe,
    safe_filename,
    save_attachment,
    ticket_env,
    ticket_json,
)
from helpdesk_tui.screens.compose import (
    REPLY,
    Composer,
    DraftOfferScreen,
    ReviewScreen,
    reply_statuses,
)
from helpdesk_tui.screens.confirm import ChoiceScreen, ConfirmScreen
from helpdesk_tui.screens.pickers import (
    AUTO,
    UNASSIGN,
    PipeResultScreen,
    agent_picker,
    folder_prompt,
    level_picker,
    merge_prompt,
    parse_postpone,
    parse_tags,
    parse_ticket_number,
    pipe_prompt,
    postpone_prompt,
    priority_picker,
    status_picker,
    tag_prompt,
)
from helpdesk_tui.widgets.customer_panel import CustomerInfo, CustomerPanel, OtherTicket
from helpdesk_tui.widgets.thread import ArticleInfo, AttachmentInfo, ThreadView, human_size
from helpdesk_tui.widgets.ticket_header import HeaderInfo, PresenceEntry, TicketHeader
from store import lifecycle
from store.engine import StoreError, finish_write
from store.models import Level, Priority, Status
from store.sanitize import clean_line
from store.service import ConflictError, NotFoundError, Service, TicketDetail
from store.templates import context_from, unresolved

#: Seconds to wait for more change-feed events before reloading.
RELOAD_DEBOUNCE = 0.15
#: Seconds between presence refreshes (rows expire without an event).
PRESENCE_REFRESH = 10.0

_ADDRESS = re.compile(r"^[^\s@<>,;\"]+@[^\s@<>,;\"]+\.[^\s@<>,;\"]+$")


def check_cc(value: str) -> list[str]:
    """Cc addresses from the review step; ValueError names the first bad one."""
    out: list[str] = []
    for part in re.split(r"[,;\s]+", value.strip()):
        if not part:
            continue
        if not _ADDRESS.match(part):
            raise ValueError(f"not a mail address: {clean_line(part)!r}")
        out.append(part)
    return out


def default_folder() -> Path:
    """Where attachments are offered to be saved first: ~/Downloads, else the home folder."""
    downloads = Path.home() / "Downloads"
    return downloads if downloads.is_dir() else Path.home()


class TicketScreen(Screen[None]):
    """One ticket: read the thread, write replies and notes, change fields; live updates."""

    CSS_PATH = "../ticket.tcss"
    HELP_TITLE = "Ticket"
    PALETTE_PREFIX = "Ticket"
    COMMANDS = {ScreenCommands}
    AUTO_FOCUS = "#thread"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "r",
            "compose('reply')",
            "Reply",
            id="ticket.reply",
            tooltip="Write a reply to the customer",
        ),
        Binding(
            "n",
            "compose('note')",
            "Note",
            id="ticket.note",
            tooltip="Write an internal note (never sent to the customer)",
        ),
        Binding(
            "a", "assign", "Assign", id="ticket.assign", tooltip="Assign to an agent, or unassign"
        ),
        Binding(
            "s",
            "status",
            "Status",
            id="ticket.status",
            tooltip="Change the status (team labels; only allowed transitions)",
        ),
        Binding(
            "p",
            "priority",
            "Priority",
            id="ticket.priority",
            tooltip="Override the priority, or go back to auto (impact x urgency)",
        ),
        Binding(
            "i",
            "impact",
            "Impact",
            show=False,
            id="ticket.impact",
            tooltip="Set the impact: how many people or systems are affected",
        ),
        Binding(
            "u",
            "urgency",
            "Urgency",
            show=False,
            id="ticket.urgency",
            tooltip="Set the urgency: how soon it must be fixed",
        ),
        Binding(
            "t",
            "tags",
            "Tags",
            show=False,
            id="ticket.tags",
            tooltip="Edit the tags (the list, or +add -remove)",
        ),
        Binding(
            "m",
            "merge",
            "Merge",
            show=False,
            id="ticket.merge",
            tooltip="Merge this ticket into another one (asks first)",
        ),
        Binding(
            "z",
            "postpone",
            "Postpone",
            show=False,
            id="ticket.postpone",
            tooltip="Snooze until a time: 2d, 3h, 90min, 2026-12-01T09:00",
        ),
        Binding(
            "vertical_line",
            "pipe",
            "Pipe",
            show=False,
            id="ticket.pipe",
            tooltip="Pipe the ticket (JSON) or an attachment through a shell command",
        ),
        Binding(
            "S",
            "save_attachment",
            "Save attachment",
            show=False,
            id="ticket.save",
            tooltip="Save an attachment into a folder you choose",
        ),
        Binding(
            "T",
            "toggle_quotes",
            "Quotes",
            id="ticket.quotes",
            tooltip="Show or fold quoted earlier text",
        ),
        Binding(
            "c",
            "toggle_customer",
            "Customer",
            id="ticket.customer",
            tooltip="Show or hide the customer panel (contact, organization, tickets)",
        ),
        Binding(
            "e",
            "editor",
            "Editor",
            show=False,
            id="ticket.editor",
            tooltip="Continue the reply or note in $VISUAL / $EDITOR",
        ),
        Binding(
            "q,escape",
            "back",
            "Back",
            id="ticket.back",
            tooltip="Back to the queue (a draft is kept)",
        ),
    ]

    #: Display state, pushed down into the widgets with data binding.
    header_info: var[HeaderInfo | None] = var(None)
    presence_entries: var[tuple[PresenceEntry, ...]] = var(())
    article_infos: var[tuple[ArticleInfo, ...]] = var(())
    show_quotes: var[bool] = var(False)
    now: var[datetime | None] = var(None)
    customer_info: var[CustomerInfo | None] = var(None)
    customer_tickets: var[tuple[OtherTicket, ...]] = var(())

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        #: The ticket as last read from the store (None until the first load).
        self.detail: TicketDetail | None = None
        #: Read by the app's presence heartbeat.
        self.presence_ticket_id: int | None = None
        self.presence_mode = "viewing"
        self._labels: dict[str, str] = {}
        self._matrix: dict[tuple[Level, Level], Priority] | None = None
        self._reload_timer: Timer | None = None
        self._seen_serial = 0
        self._last_command = ""
        self._last_folder: str | None = None
        self._offered_drafts = False
        #: Set when the first load is on screen (tests and callers wait on it).
        self.loaded = asyncio.Event()

    # ----------------------------------------------------------------- helpers
    @property
    def service(self) -> Service:
        return self.app.service  # type: ignore[attr-defined,no-any-return]

    @property
    def me(self) -> Any:
        return self.app.me  # type: ignore[attr-defined]

    @property
    def actor(self) -> Any:
        return self.app.actor  # type: ignore[attr-defined]

    @property
    def composer(self) -> Composer:
        return self.query_one(Composer)

    @property
    def thread(self) -> ThreadView:
        return self.query_one(ThreadView)

    @property
    def composing(self) -> bool:
        return self.has_class("-composing")

    def status_label(self, status: str) -> str:
        return self._labels.get(status, status)

    def attachments(self) -> list[AttachmentInfo]:
        """Every attachment in the thread, oldest first."""
        return [att for info in self.article_infos for att in info.attachments]

    # ----------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield TicketHeader(id="ticket-header").data_bind(
            info=TicketScreen.header_info,
            presence=TicketScreen.presence_entries,
            now=TicketScreen.now,
        )
        with Horizontal(id="ticket-body"):
            yield ThreadView(id="thread").data_bind(
                now=TicketScreen.now,
                show_quotes=TicketScreen.show_quotes,
                articles=TicketScreen.article_infos,
            )
            yield CustomerPanel(id="customer-panel").data_bind(
                now=TicketScreen.now,
                customer=TicketScreen.customer_info,
                tickets=TicketScreen.customer_tickets,
            )
        yield Composer(id="composer")
        yield Footer()

    def on_mount(self) -> None:
        self._seen_serial = getattr(self.app, "change_serial", 0)
        self.now = self.service.clock()
        self.load(first=True)
        self.set_interval(PRESENCE_REFRESH, self._refresh_presence)

    def on_resize(self) -> None:
        self.set_class(self.size.width < 100, "-narrow")
        self.set_class(self.size.height < 30, "-short")

    def on_screen_resume(self) -> None:
        serial = getattr(self.app, "change_serial", 0)
        if serial != self._seen_serial and self.detail is not None:
            self._seen_serial = serial
            self.load()
            self._refresh_presence()

    # ----------------------------------------------------------------- loading
    @work(exclusive=True, group="ticket-load", exit_on_error=False)
    async def load(self, first: bool = False) -> None:
        """Read the ticket and show it (the thread keeps its scroll position)."""
        await self.reload(first=first)

    async def reload(self, first: bool = False) -> bool:
        """Read the ticket now; False (and a message) when it cannot be read."""
        try:
            if self._matrix is None:
                # The first load reads the labels and the matrix alongside the ticket.
                detail, self._labels, self._matrix = await asyncio.gather(
                    self.service.ticket_detail(self.number),
                    self.service.status_labels(),
                    self.service.priority_matrix(),
                )
            else:
                detail = await self.service.ticket_detail(self.number)
        except NotFoundError as exc:
            self.notify(str(exc), severity="error", markup=False)
            if first:
                self.dismiss()
            return False
        except StoreError as exc:
            self.notify(str(exc), title="Could not read the ticket", severity="error", markup=False)
            return False
        self._show(detail)
        if first:
            self.loaded.set()
            self.presence_ticket_id = detail.ticket.id
            self._announce_presence()
            self._refresh_presence()
            if not self._offered_drafts:
                self._offered_drafts = True
                self._offer_drafts()
        if self.has_class("-customer"):
            self._load_customer_tickets()
        return True

    def _show(self, detail: TicketDetail) -> None:
        self.detail = detail
        t = detail.ticket
        derived = lifecycle.derive_priority(Level(t.impact), Level(t.urgency), self._matrix)
        customer_label = ""
        if t.customer is not None:
            customer_label = (
                f"{t.customer.name} <{t.customer.email}>" if t.customer.name else t.customer.email
            )
        self.now = self.service.clock()
        self.header_info = HeaderInfo.from_detail(detail, self._labels, derived)
        self.article_infos = tuple(
            ArticleInfo.from_article(a, customer_label) for a in detail.articles
        )
        self.customer_info = CustomerInfo.from_customer(t.customer) if t.customer else None
        self.sub_title = f"#{t.number}"
        composer = self.composer
        composer.recipient = t.customer.email if t.customer else ""
        composer.template_context = context_from(t, self.me)

    def _schedule_reload(self) -> None:
        if self._reload_timer is not None:
            self._reload_timer.stop()
        self._reload_timer = self.set_timer(RELOAD_DEBOUNCE, self._reload_due)

    def _reload_due(self) -> None:
        self._reload_timer = None
        self.load()

    @work(exclusive=True, group="ticket-customer", exit_on_error=False)
    async def _load_customer_tickets(self) -> None:
        detail = self.detail
        if detail is None or detail.ticket.customer_id is None:
            self.customer_tickets = ()
            return
        try:
            tickets = await self.service.customer_tickets(detail.ticket.customer_id)
        except StoreError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self.customer_tickets = tuple(
            OtherTicket(
                t.number,
                clean_line(t.subject),
                clean_line(self.status_label(t.status)),
                t.updated_at,
                current=t.number == self.number,
            )
            for t in tickets
        )

    # ----------------------------------------------------------------- live updates & presence
    def on_store_changed(self, message: StoreChanged) -> None:
        self._seen_serial = getattr(self.app, "change_serial", self._seen_serial)
        if "presence" in message.kinds:
            self._refresh_presence()
        if message.only_presence:
            return
        detail = self.detail
        if detail is None:
            return  # the first load is under way and reads the latest anyway
        if message.touches(detail.ticket.id):
            self._schedule_reload()
        elif self.has_class("-customer"):
            self._load_customer_tickets()

    @work(exclusive=True, group="ticket-presence", exit_on_error=False)
    async def _refresh_presence(self) -> None:
        ticket_id = self.presence_ticket_id
        if ticket_id is None:
            return
        try:
            rows = await self.service.presence(ticket_id)
        except StoreError:
            return
        by_login: dict[str, PresenceEntry] = {}
        for login, name, _tid, mode in rows:
            if login == self.me.login:
                continue
            seen = by_login.get(login)
            if seen is None or mode == "composing":
                by_login[login] = PresenceEntry(login, name, mode)
        self.presence_entries = tuple(by_login[k] for k in sorted(by_login))

    def _announce_presence(self) -> None:
        """Tell the store where this console is now (not waiting for the heartbeat)."""
        update = getattr(self.app, "update_presence", None)
        if callable(update):
            update()
        else:
            self._touch_presence()

    @work(exclusive=True, group="ticket-touch", exit_on_error=False)
    async def _touch_presence(self) -> None:
        if self.presence_ticket_id is None:
            return
        app: Any = self.app
        with contextlib.suppress(StoreError):
            await finish_write(
                self.service.touch_presence(
                    app.me.id, app.session_id, self.presence_ticket_id, self.presence_mode
                )
            )

    def _set_mode(self, mode: str) -> None:
        if mode != self.presence_mode:
            self.presence_mode = mode
            self._announce_presence()

    # ----------------------------------------------------------------- field changes
    async def _update(self, done: str, **changes: Any) -> bool:
        """Apply changes with the version this screen shows; a conflict reloads, never overwrites."""
        detail = self.detail
        if detail is None:
            return False
        try:
            await finish_write(
                self.service.update_ticket(
                    self.actor, self.number, expected_version=detail.ticket.version, **changes
                )
            )
        except ConflictError as exc:
            await self._conflict(exc)
            return False
        except StoreError as exc:
            self.notify(str(exc), title="Not changed", severity="error", markup=False)
            return False
        self.notify(done, timeout=3, markup=False)
        await self.reload()
        return True

    async def _conflict(self, exc: ConflictError) -> None:
        self.notify(
            f"{exc}\nNothing was overwritten. The ticket has been reloaded: check it and try "
            "again.",
            title="Changed by someone else",
            severity="error",
            timeout=15,
            markup=False,
        )
        await self.reload()

    async def _ask(self, screen: Any) -> Any:
        return await self.app.push_screen_wait(screen)

    def _busy_guard(self) -> TicketDetail | None:
        if self.detail is None:
            self.notify("The ticket is still loading.", timeout=2, markup=False)
        return self.detail

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_assign(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        try:
            agents = await self.service.list_agents(include_inactive=False)
        except StoreError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        current = detail.ticket.assignee.login if detail.ticket.assignee else None
        login = await self._ask(agent_picker(agents, current, self.me.login))
        if login is None or login == (current or UNASSIGN):
            return
        await self._update(
            f"Assigned to {login}" if login else "Unassigned", assignee=login or None
        )

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_status(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        current = detail.ticket.status
        if not lifecycle.TRANSITIONS.get(Status(current)):
            self.notify(
                f"#{self.number} is {self.status_label(current)}; its status is final.",
                markup=False,
            )
            return
        status = await self._ask(status_picker(current, self._labels))
        if status is None or status.value == current:
            return
        if status is Status.POSTPONED:
            await self._postpone()
            return
        if status is Status.CLOSED and not await self._ask(
            ConfirmScreen(
                f"Close #{self.number}? A closed ticket cannot be reopened.",
                "A customer reply to it will open a new, linked ticket.",
                yes="Close",
            )
        ):
            return
        await self._update(f"Status: {self.status_label(status.value)}", status=status)

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_priority(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        t = detail.ticket
        derived = lifecycle.derive_priority(Level(t.impact), Level(t.urgency), self._matrix)
        value = await self._ask(priority_picker(t.priority, t.priority_override_by, derived))
        if value is None:
            return
        if value == AUTO:
            await self._update(f"Priority: auto ({derived.label})", priority=AUTO)
        else:
            await self._update(f"Priority: {value}", priority=lifecycle.parse_priority(value))

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_impact(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        level = await self._ask(level_picker("impact", detail.ticket.impact))
        if level is not None and int(level) != detail.ticket.impact:
            await self._update(f"Impact: {level.label}", impact=level)

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_urgency(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        level = await self._ask(level_picker("urgency", detail.ticket.urgency))
        if level is not None and int(level) != detail.ticket.urgency:
            await self._update(f"Urgency: {level.label}", urgency=level)

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_tags(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        current = [tag.name for tag in detail.ticket.tags]
        answer = await self._ask(tag_prompt(current))
        if answer is None:
            return
        add, remove = parse_tags(answer, current)
        if not add and not remove:
            self.notify("Tags unchanged", timeout=2, markup=False)
            return
        summary = " ".join([*(f"+{a}" for a in add), *(f"-{r}" for r in remove)])
        await self._update(f"Tags {summary}", tags_add=add, tags_remove=remove)

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_postpone(self) -> None:
        if self._busy_guard() is not None:
            await self._postpone()

    async def _postpone(self) -> None:
        detail = self.detail
        if detail is None:
            return
        now = self.service.clock()
        current = detail.ticket.postponed_until if detail.ticket.status == "postponed" else None
        answer = await self._ask(postpone_prompt(now, current))
        if answer is None:
            return
        try:
            when = parse_postpone(answer, self.service.clock())
        except ValueError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        await self._update(
            f"Postponed until {when.astimezone():%Y-%m-%d %H:%M}", postpone_until=when
        )

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_merge(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        if detail.ticket.status == Status.MERGED.value:
            self.notify(f"#{self.number} is already merged.", markup=False)
            return
        answer = await self._ask(merge_prompt(self.number))
        if answer is None:
            return
        into = parse_ticket_number(answer)
        try:
            target = await self.service.get_ticket(into)
        except StoreError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        sure = await self._ask(
            ConfirmScreen(
                f"Merge #{self.number} into #{into}? This cannot be undone.",
                f"#{into}: {clean_line(target.subject)}\n"
                f"The thread of #{self.number} moves there; #{self.number} becomes 'merged'.",
                yes="Merge",
            )
        )
        if not sure:
            return
        try:
            await self.service.merge(self.actor, self.number, into)
        except StoreError as exc:
            self.notify(str(exc), title="Not merged", severity="error", markup=False)
            return
        self.notify(f"#{self.number} merged into #{into}", markup=False)
        await self.reload()

    def action_toggle_quotes(self) -> None:
        self.show_quotes = not self.show_quotes
        shown = sum(1 for info in self.article_infos if info.quoted_lines)
        if shown:
            self.notify(
                "Quoted text shown" if self.show_quotes else "Quoted text folded",
                timeout=2,
                markup=False,
            )

    def action_toggle_customer(self) -> None:
        show = not self.has_class("-customer")
        self.set_class(show, "-customer")
        if show:
            self._load_customer_tickets()
            self.query_one("#customer-tickets").focus()
        else:
            self.thread.focus()

    @on(CustomerPanel.OpenTicket)
    def _open_other(self, event: CustomerPanel.OpenTicket) -> None:
        if event.number == self.number:
            self.notify(f"#{self.number} is the ticket you are on.", timeout=2, markup=False)
            return
        self.app.push_screen(TicketScreen(event.number))

    async def action_back(self) -> None:
        await self.composer.flush()
        self.dismiss()

    # ----------------------------------------------------------------- pipe & attachments
    async def _choose_attachment(
        self, title: str, allow_ticket: bool
    ) -> AttachmentInfo | str | None:
        atts = self.attachments()
        choices: list[tuple[str, Any]] = []
        if allow_ticket:
            choices.append(("ticket", "The ticket (fields in $HELPDESK_TICKET_*, JSON on stdin)"))
        for att in atts:
            choices.append((f"att:{att.id}", f"{att.display_name}  ({human_size(att.size)})"))
        if not choices:
            return None
        if len(choices) == 1:
            picked = choices[0][0]
        else:
            picked = await self._ask(ChoiceScreen(title, choices))
            if picked is None:
                return None
        if picked == "ticket":
            return "ticket"
        return next(a for a in atts if f"att:{a.id}" == picked)

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_pipe(self) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        target = await self._choose_attachment("Pipe what?", allow_ticket=True)
        if target is None:
            return
        what = "the ticket" if target == "ticket" else f"attachment {target.display_name}"  # type: ignore[union-attr]
        command = await self._ask(pipe_prompt(what, self._last_command))
        if command is None:
            return
        self._last_command = command
        label = self.status_label(detail.ticket.status)
        env = ticket_env(detail, label)
        try:
            if isinstance(target, AttachmentInfo):
                env |= attachment_env(target)
                data = await self.service.blob(target.sha256)
            else:
                data = ticket_json(detail, label).encode("utf-8")
            self.notify(f"Running: {command}", timeout=2, markup=False)
            result = await run_pipe(command, data, command_env(env))
        except (PipeError, StoreError) as exc:
            self.notify(str(exc), title="Pipe", severity="error", markup=False)
            return
        keep = await self._ask(PipeResultScreen(result, what))
        if not keep:
            return
        try:
            await self.service.add_note(self.actor, self.number, output_note(result, what))
        except StoreError as exc:
            self.notify(str(exc), title="Output not kept", severity="error", markup=False)
            return
        self.notify("Output kept as an internal note", timeout=3, markup=False)
        await self.reload()

    @work(exclusive=True, group="ticket-action", exit_on_error=False)
    async def action_save_attachment(self) -> None:
        if self._busy_guard() is None:
            return
        if not self.attachments():
            self.notify("This ticket has no attachments.", timeout=3, markup=False)
            return
        att = await self._choose_attachment("Save which attachment?", allow_ticket=False)
        if not isinstance(att, AttachmentInfo):
            return
        name = safe_filename(att.filename)
        folder = await self._ask(folder_prompt(self._last_folder or default_folder(), name))
        if folder is None:
            return
        self._last_folder = folder
        try:
            data = await self.service.blob(att.sha256)
            try:
                path = await asyncio.to_thread(save_attachment, folder, att.filename, data)
            except FileExistsError:
                if not await self._ask(
                    ConfirmScreen(
                        f"{name} already exists in {folder}. Overwrite it?",
                        yes="Overwrite",
                    )
                ):
                    return
                path = await asyncio.to_thread(
                    save_attachment, folder, att.filename, data, overwrite=True
                )
        except (SaveError, StoreError, OSError) as exc:
            self.notify(str(exc), title="Not saved", severity="error", markup=False)
            return
        self.notify(f"Saved {path}", timeout=5, markup=False)

    # ----------------------------------------------------------------- composing
    def action_compose(self, kind: str) -> None:
        self._start_composing(kind)

    @work(exclusive=True, group="ticket-compose", exit_on_error=False)
    async def _start_composing(self, kind: str, resume: Any = None) -> None:
        detail = self._busy_guard()
        if detail is None:
            return
        if kind == REPLY and detail.ticket.status in (Status.CLOSED.value, Status.MERGED.value):
            where = (
                f" (merged into #{detail.merged_into_number})" if detail.merged_into_number else ""
            )
            self.notify(
                f"#{self.number} is {self.status_label(detail.ticket.status)}{where}; "
                "it cannot be replied to. A note is still possible.",
                severity="warning",
                markup=False,
            )
            return
        composer = self.composer
        if self.composing and composer.kind == kind:
            composer.text_area.focus()
            return
        if self.composing:
            await composer.flush()
        draft = resume
        if draft is None:
            try:
                draft = await self.service.get_draft(self.me.id, detail.ticket.id, kind)
            except StoreError as exc:
                self.notify(str(exc), severity="error", markup=False)
                return
        newest = max((a.id for a in detail.articles), default=0)
        self.add_class("-composing")
        if draft is not None:
            composer.start(
                kind,
                detail.ticket.id,
                draft.body,
                draft.base_article_id if draft.base_article_id is not None else newest,
                saved_at=draft.updated_at,
            )
        else:
            composer.start(kind, detail.ticket.id, "", newest)
        self._set_mode("composing")

    def _close_composer(self) -> None:
        self.remove_class("-composing")
        self._set_mode("viewing")
        self.thread.focus()

    @on(Composer.CloseRequested)
    async def _composer_closed(self, event: Composer.CloseRequested) -> None:
        kept = bool(event.composer.text.strip())
        await event.composer.flush()
        self._close_composer()
        if kept:
            self.notify("Draft kept: r or n opens it again", timeout=3, markup=False)

    def action_editor(self) -> None:
        if self.composing:
            self.composer.action_editor()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "editor":
            return self.composing
        return True

    @work(exclusive=True, group="ticket-drafts", exit_on_error=False)
    async def _offer_drafts(self) -> None:
        detail = self.detail
        if detail is None:
            return
        try:
            drafts = [
                d
                for d in await self.service.drafts_for(self.me.id, detail.ticket.id)
                if d.body.strip()
            ]
        except StoreError:
            return
        drafts.sort(key=lambda d: (d.kind != REPLY, d.updated_at))
        for draft in drafts[:1]:
            choice = await self._ask(DraftOfferScreen(draft.kind, draft.body, draft.updated_at))
            if choice == "resume":
                self._start_composing(draft.kind, draft)
            elif choice == "discard":
                sure = await self._ask(
                    ConfirmScreen("Discard the draft? Its text is gone for good.", yes="Discard")
                )
                if sure:
                    await self.service.delete_draft(self.me.id, detail.ticket.id, draft.kind)
                    self.notify("Draft discarded", timeout=2, markup=False)

    @on(Composer.ReviewRequested)
    def _review_requested(self, event: Composer.ReviewRequested) -> None:
        event.stop()
        self._review()

    @work(exclusive=True, group="ticket-send", exit_on_error=False)
    async def _review(self) -> None:
        composer = self.composer
        body, kind = composer.text, composer.kind
        if not body.strip():
            self.notify("Nothing to send yet.", timeout=3, markup=False)
            return
        problems = unresolved(body)
        if problems:
            self.notify(
                "Replace these before sending: " + ", ".join(problems),
                title="Unresolved variables",
                severity="error",
                markup=False,
            )
            return
        await composer.flush()
        if not await self.reload():
            return
        detail = self.detail
        assert detail is not None
        newer: list[ArticleInfo] = []
        if composer.base_article_id is not None:
            try:
                after = await self.service.articles_after(
                    detail.ticket.id, composer.base_article_id
                )
            except StoreError:
                after = []
            by_id = {info.id: info for info in self.article_infos}
            newer = [
                by_id[a.id] for a in after if a.id in by_id and a.author_agent_id != self.me.id
            ]
        t = detail.ticket
        statuses = reply_statuses(t.status, self._labels) if kind == REPLY else []
        values = [s for s, _ in statuses]
        default = Status.ANSWERED if Status.ANSWERED in values else (values[0] if values else None)
        result = await self._ask(
            ReviewScreen(
                kind=kind,
                number=self.number,
                body=body,
                to=t.customer.email if t.customer else "",
                statuses=statuses,
                default_status=default,
                current_status_label=self.status_label(t.status),
                newer=newer,
                now=self.service.clock(),
            )
        )
        if newer and composer.base_article_id is not None:
            # They have seen these now; warn again only about entries newer still.
            composer.base_article_id = max(info.id for info in newer)
        if result is None or result.action == "edit":
            composer.text_area.focus()
            return
        if result.action == "discard":
            if await self._ask(
                ConfirmScreen("Discard this text? It is gone for good.", yes="Discard")
            ):
                await self._discard(kind)
            else:
                composer.text_area.focus()
            return
        await self._send(kind, body, result.status, result.cc, t.version)

    async def _discard(self, kind: str) -> None:
        detail = self.detail
        if detail is not None:
            try:
                await self.service.delete_draft(self.me.id, detail.ticket.id, kind)
            except StoreError as exc:
                self.notify(str(exc), severity="error", markup=False)
        self.composer.forget()
        self._close_composer()
        self.notify("Discarded", timeout=2, markup=False)

    async def _send(
        self, kind: str, body: str, status: Status | None, cc: str, version: int
    ) -> None:
        detail = self.detail
        assert detail is not None
        try:
            cc_list = check_cc(cc)
        except ValueError as exc:
            self.notify(str(exc), title="Not sent", severity="error", markup=False)
            return
        send: Callable[[], Awaitable[Any]]
        if kind == REPLY:

            def send() -> Awaitable[Any]:
                return self.service.add_reply(
                    self.actor,
                    self.number,
                    body,
                    status=status,
                    cc_addrs=", ".join(cc_list),
                    expected_version=version,
                )
        else:

            def send() -> Awaitable[Any]:
                return self.service.add_note(
                    self.actor, self.number, body, expected_version=version
                )

        try:
            await send()
        except ConflictError as exc:
            await self._conflict(exc)
            self.composer.text_area.focus()
            return
        except StoreError as exc:
            self.notify(str(exc), title="Not sent", severity="error", markup=False)
            return
        # Sent is sent; if this fails, a stale draft is offered again at worst.
        with contextlib.suppress(StoreError):
            await self.service.delete_draft(self.me.id, detail.ticket.id, kind)
        self.composer.forget()
        self._close_composer()
        if kind == REPLY:
            label = self.status_label(status.value) if status else self.status_label("answered")
            self.notify(f"Reply queued for delivery; status {label}", timeout=4, markup=False)
        else:
            self.notify("Internal note added", timeout=3, markup=False)
        await self.reload()
        self.thread.call_after_refresh(self.thread.scroll_end, animate=False)

    # ----------------------------------------------------------------- palette
    def palette_commands(self) -> Iterable[PaletteCommand]:
        """Commands on top of the key bindings: canned responses, linked and other tickets."""
        # With the focus in the editor its own keys (Canned, Review & send) are listed already.
        editor_keys = {a.binding.id for a in self.active_bindings.values()}
        if self.composing and "compose.canned" not in editor_keys:
            yield PaletteCommand(
                "Ticket: Insert canned response",
                "Fuzzy search, preview, variables filled in (ctrl+t)",
                self.composer.action_canned,
            )
        if self.composing and "compose.review" not in editor_keys:
            yield PaletteCommand(
                "Ticket: Review and send", "The review step (ctrl+s)", self.composer.request_review
            )
        detail = self.detail
        if detail is not None and detail.merged_into_number:
            into = detail.merged_into_number
            yield PaletteCommand(
                f"Ticket: Open #{into} (merged into)",
                "The ticket this one was merged into",
                self._opener(into),
            )
        if detail is not None:
            for kind, number in detail.links:
                yield PaletteCommand(
                    f"Ticket: Open #{number} ({kind})", "A linked ticket", self._opener(number)
                )
        for other in self.customer_tickets:
            if not other.current:
                yield PaletteCommand(
                    f"Ticket: Open #{other.number} {other.subject}",
                    "Another ticket of this customer",
                    self._opener(other.number),
                )

    def _opener(self, number: int) -> Callable[[], None]:
        def run() -> None:
            self.app.push_screen(TicketScreen(number))

        return run
