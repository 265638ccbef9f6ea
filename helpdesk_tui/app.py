"""The console app: holds the store, pushes the queue, global keys, change feed and presence."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen, Screen

from helpdesk_tui.commands import HelpdeskCommands
from helpdesk_tui.messages import StoreChanged
from helpdesk_tui.text import notify_safe
from store.config import Config
from store.engine import StoreError
from store.feed import ChangeFeed, FeedEvent
from store.models import Agent
from store.service import Actor, Service

#: Seconds between presence heartbeats (the store drops rows older than 30 s).
PRESENCE_INTERVAL = 10.0
#: The longest any one step of quitting (feed, presence row, pool) may take.
QUIT_STEP_TIMEOUT = 0.3


class HelpdeskApp(App[None]):
    """The agent console. Screens do the work; this holds what they share."""

    CSS_PATH = "app.tcss"
    TITLE = "helpdesk"
    COMMANDS = App.COMMANDS | {HelpdeskCommands}
    BINDINGS = [
        Binding(
            "question_mark",
            "help",
            "Help",
            id="app.help",
            tooltip="Show the keys of this screen, the query keys and the orders",
        ),
        Binding(
            "ctrl+p",
            "command_palette",
            "Palette",
            id="app.palette",
            priority=True,
            show=False,
            tooltip="Find any action by name",
        ),
        Binding(
            "q", "go_back", "Back", id="app.back", tooltip="Leave this screen; on the queue, quit"
        ),
        Binding(
            "D",
            "dashboard",
            "Dashboard",
            id="app.dashboard",
            show=False,
            tooltip="The team report: figures, charts, per queue and agent",
        ),
    ]

    def __init__(
        self,
        service: Service,
        me: Agent,
        config: Config,
        *,
        follow_changes: bool = True,
        presence_interval: float = PRESENCE_INTERVAL,
    ) -> None:
        super().__init__()
        self.service = service
        #: The agent using this console.
        self.me = me
        #: Who changes made here are attributed to.
        self.actor = Actor("agent", me.login, me.id)
        self.config = config
        #: This console's presence session (one agent may run several consoles).
        self.session_id = secrets.token_hex(8)
        #: Incremented for every batch of change-feed events; screens compare on resume.
        self.change_serial = 0
        self._follow = follow_changes
        self._presence_interval = presence_interval
        self._presence_sent: tuple[int | None, str] | None = None
        self._presence_beats = 0
        self._feed: ChangeFeed | None = None

    def on_mount(self) -> None:
        from helpdesk_tui.screens.queue import QueueScreen

        if self.config.theme and self.config.theme in self.available_themes:
            self.theme = self.config.theme
        if self.config.keymap:
            self.set_keymap(self.config.keymap)
        self.push_screen(QueueScreen())
        if self._follow:
            self._follow_changes()
        if self._presence_interval > 0:
            # Check each second whether the agent moved; write at least every interval.
            self.set_interval(1.0, self._presence_tick)
            self.call_after_refresh(self._presence_tick)

    async def on_unmount(self) -> None:
        await self.shut_down()

    async def shut_down(self) -> None:
        """Quit promptly: stop workers and statements in flight, close every connection.

        A sidebar count over a million tickets can run for seconds in aiosqlite's thread;
        cancelling its worker does not stop the statement, so it is interrupted, and every
        step is bounded so `q` never waits on the store. Drafts are saved as they are typed.
        """
        self.workers.cancel_all()
        db = self.service.db
        db.interrupt()
        if self._feed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._feed.close(), QUIT_STEP_TIMEOUT)
        if self._presence_sent is not None:
            # The store may already be gone; presence rows expire by themselves anyway.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.service.clear_presence(self.me.id, self.session_id), QUIT_STEP_TIMEOUT
                )
        await db.close(QUIT_STEP_TIMEOUT)

    # ----------------------------------------------------------------- change feed
    @work(exclusive=True, group="change-feed", exit_on_error=False)
    async def _follow_changes(self) -> None:
        self._feed = feed = ChangeFeed(self.service.db.url)
        try:
            await feed.follow(self.store_changed)
        except StoreError as exc:
            notify_safe(self, str(exc), title="Live updates are off", severity="warning")

    def store_changed(self, events: list[FeedEvent]) -> None:
        """Tell the active screen what changed (also used by tests to inject changes)."""
        if not events:
            return
        self.change_serial += 1
        self.screen.post_message(
            StoreChanged(frozenset(e.ticket_id for e in events), frozenset(e.kind for e in events))
        )

    # ----------------------------------------------------------------- presence
    def _presence_target(self) -> tuple[int | None, str]:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ModalScreen):
                continue
            ticket_id = getattr(screen, "presence_ticket_id", None)
            mode = getattr(screen, "presence_mode", "viewing") or "viewing"
            return (ticket_id if isinstance(ticket_id, int) else None, str(mode))
        return (None, "viewing")

    def _presence_tick(self) -> None:
        self._presence_beats += 1
        target = self._presence_target()
        due = self._presence_beats * 1.0 >= self._presence_interval
        if target != self._presence_sent or due:
            self._presence_beats = 0
            self._send_presence(target)

    @work(exclusive=True, group="presence", exit_on_error=False)
    async def _send_presence(self, target: tuple[int | None, str]) -> None:
        try:
            await self.service.touch_presence(self.me.id, self.session_id, target[0], target[1])
            self._presence_sent = target
        except StoreError as exc:
            self.log.warning(f"presence heartbeat failed: {exc}")

    def update_presence(self) -> None:
        """Send presence now (screens call this when they start or stop writing a reply)."""
        self._send_presence(self._presence_target())

    # ----------------------------------------------------------------- global actions
    def action_help(self) -> None:
        from helpdesk_tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen.for_screen(self.screen))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "dashboard":
            # Not over a dialog; on the dashboard itself `D` does nothing.
            from helpdesk_tui.screens.dashboard import DashboardScreen

            return not isinstance(self.screen, ModalScreen | DashboardScreen)
        return True

    def action_dashboard(self) -> None:
        """Open the report dashboard (from the queue, a ticket or the palette)."""
        from helpdesk_tui.screens.dashboard import DashboardScreen

        if isinstance(self.screen, ModalScreen | DashboardScreen):
            return
        self.push_screen(DashboardScreen())

    async def action_go_back(self) -> None:
        """Close a dialog, leave a screen, or quit from the first screen."""
        screen: Screen[Any] = self.screen
        if isinstance(screen, ModalScreen):
            screen.dismiss(None)
        elif len(self.screen_stack) > 2:
            self.pop_screen()
        else:
            self.exit()
