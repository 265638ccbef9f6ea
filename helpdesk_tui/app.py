"""The console app: holds the store, pushes the queue, global keys, change feed and presence."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.dom import DOMNode
from textual.message import Message
from textual.screen import ModalScreen, Screen

from helpdesk_tui.commands import HelpdeskCommands
from helpdesk_tui.messages import StoreChanged
from helpdesk_tui.text import notify_safe

if TYPE_CHECKING:
    from store.config import Config
    from store.feed import ChangeFeed, FeedEvent
    from store.firstpage import AgentInfo, FastStart
    from store.models import Agent
    from store.service import Actor, Service

#: Seconds between presence heartbeats (the store drops rows older than 30 s).
PRESENCE_INTERVAL = 10.0
#: The longest any one step of quitting (feed, presence row, pool) may take.
QUIT_STEP_TIMEOUT = 0.3
#: Screen and app actions that need nothing from the store: during a fast start they run at
#: once; the others wait until the store is open (a fraction of a second).
WITHOUT_STORE = frozenset(
    {"go_back", "quit", "command_palette", "toggle_sidebar", "focus_views", "focus_query"}
)
#: Fast start: open the store at the latest this long after mounting, painted or not.
STORE_LOAD_DEADLINE = 1.0


class StoreLoaded(Message):
    """Fast start: the store is open (`app.service` works); sent to every screen."""


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
        service: Service | None,
        me: Agent | AgentInfo,
        config: Config,
        *,
        fast_start: FastStart | None = None,
        follow_changes: bool = True,
        presence_interval: float = PRESENCE_INTERVAL,
    ) -> None:
        """`service=None` with `fast_start` (see `helpdesk_tui.boot`): open the store later."""
        super().__init__()
        if service is None and fast_start is None:
            raise ValueError("HelpdeskApp needs a service or a fast start")
        self._service = service
        #: The agent using this console (a plain `AgentInfo` until a fast start's store opens).
        self.me: Any = me
        self.config = config
        #: Fast start: the rows for the first frame, taken (once) by the queue screen.
        self._fast_start = fast_start
        self._store_url = fast_start.url if fast_start is not None else ""
        self._store_loading = False
        self._deferred: list[tuple[Any, DOMNode | None]] = []
        #: This console's presence session (one agent may run several consoles).
        self.session_id = secrets.token_hex(8)
        #: Incremented for every batch of change-feed events; screens compare on resume.
        self.change_serial = 0
        self._follow = follow_changes
        self._presence_interval = presence_interval
        self._presence_sent: tuple[int | None, str] | None = None
        self._presence_beats = 0
        self._feed: ChangeFeed | None = None

    @property
    def service(self) -> Service:
        """The store's service layer (during a fast start, only once `store_ready`)."""
        if self._service is None:
            raise RuntimeError("the store is still being opened")
        return self._service

    @property
    def store_ready(self) -> bool:
        """Whether `service` can be used (always, unless a fast start is still loading it)."""
        return self._service is not None

    @property
    def actor(self) -> Actor:
        """Who changes made here are attributed to."""
        from store.service import Actor

        return Actor("agent", self.me.login, self.me.id)

    def take_fast_start(self) -> FastStart | None:
        """The fast start's rows and labels, for the first screen (None afterwards/otherwise)."""
        start, self._fast_start = self._fast_start, None
        return None if self._service is not None else start

    def on_mount(self) -> None:
        from helpdesk_tui.screens.queue import QueueScreen

        if self.config.theme and self.config.theme in self.available_themes:
            self.theme = self.config.theme
        if self.config.keymap:
            self.set_keymap(self.config.keymap)
        self.push_screen(QueueScreen())
        if self._service is not None:
            self._start_live()
        else:
            # The queue asks as soon as its first page is on screen; this is the backstop.
            self.set_timer(STORE_LOAD_DEADLINE, self.load_store)

    def _start_live(self) -> None:
        """The change feed and presence heartbeats (they need the store)."""
        # Everything imported so far (Textual, SQLAlchemy, the ORM: a few hundred thousand
        # objects) lives as long as the console: keep it out of the garbage collector's
        # full passes, which otherwise pause key handling for tens of milliseconds.
        gc.freeze()
        if self._follow:
            self._follow_changes()
        if self._presence_interval > 0:
            # Check each second whether the agent moved; write at least every interval.
            self.set_interval(1.0, self._presence_tick)
            self.call_after_refresh(self._presence_tick)

    # ----------------------------------------------------------------- fast start
    def load_store(self) -> None:
        """Fast start: import the store layer and open it, off the event loop (once)."""
        if self._service is not None or self._store_loading:
            return
        self._store_loading = True
        self._open_store()

    @work(thread=True, exclusive=True, group="store-open", exit_on_error=False)
    def _open_store(self) -> None:
        # The modules the queue needs next are imported here too, not on the event loop.
        import helpdesk_tui.widgets.query_bar  # noqa: F401
        import store.listing  # noqa: F401
        from store.engine import Database, StoreError
        from store.service import Service

        try:
            service = Service(Database(self._store_url, role="console"))
        except StoreError as exc:
            self.call_from_thread(self._store_failed, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - anything else: one line, not a hang
            self.call_from_thread(self._store_failed, f"cannot open the store: {exc}")
            return
        self.call_from_thread(self._store_opened, service)

    def _store_failed(self, message: str) -> None:
        from rich.text import Text

        self.exit(return_code=6, message=Text(f"helpdesk: {message}", style="red"))

    @work(exclusive=True, group="store-open", exit_on_error=False)
    async def _store_opened(self, service: Service) -> None:
        # The full agent record (templates use it); the one read at start stands in if the
        # store cannot give it now: every screen reads the store again anyway.
        with contextlib.suppress(Exception):
            self.me = await service.agent(self.me.login)
        self._service = service
        self._start_live()
        for screen in self.screen_stack:
            screen.post_message(StoreLoaded())
        deferred, self._deferred = self._deferred, []
        for action, namespace in deferred:
            await self.run_action(action, namespace)

    async def run_action(
        self,
        action: str | tuple[str, str, tuple[object, ...]],
        default_namespace: DOMNode | None = None,
        namespaces: Mapping[str, DOMNode] | None = None,
    ) -> bool:
        """While a fast start opens the store, screen and app actions that need it wait."""
        if (
            self._service is None
            and namespaces is None
            and isinstance(default_namespace, App | Screen | type(None))
        ):
            name = action[1] if isinstance(action, tuple) else action.split("(", 1)[0]
            if name.rsplit(".", 1)[-1] not in WITHOUT_STORE:
                self._deferred.append((action, default_namespace))
                return True
        return await super().run_action(action, default_namespace, namespaces)

    async def on_unmount(self) -> None:
        await self.shut_down()

    async def shut_down(self) -> None:
        """Quit promptly: stop workers and statements in flight, close every connection.

        A sidebar count over a million tickets can run for seconds in aiosqlite's thread;
        cancelling its worker does not stop the statement, so it is interrupted, and every
        step is bounded so `q` never waits on the store. Drafts are saved as they are typed.
        """
        self.workers.cancel_all()
        if self._service is None:
            return  # a fast start quit before its store was open: nothing to close
        from store.engine import settle_writes

        db = self._service.db
        await settle_writes(QUIT_STEP_TIMEOUT)  # a presence or draft write in flight
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
        from store.engine import StoreError
        from store.feed import ChangeFeed

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
        from store.engine import StoreError, finish_write

        try:
            # a newer heartbeat replaces this worker; the write itself still finishes
            await finish_write(
                self.service.touch_presence(self.me.id, self.session_id, target[0], target[1])
            )
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
            return not isinstance(self.screen, ModalScreen) and not self._on_dashboard()
        return True

    def _on_dashboard(self) -> bool:
        """Whether the dashboard is the screen (without importing it: the footer asks early)."""
        dashboard = sys.modules.get("helpdesk_tui.screens.dashboard")
        return dashboard is not None and isinstance(self.screen, dashboard.DashboardScreen)

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
