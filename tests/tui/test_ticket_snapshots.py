"""Snapshots of the ticket screen at 80x24 and 120x40: fixed data, frozen clock, UTC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpdesk_tui.screens.compose import ReviewScreen
from helpdesk_tui.screens.ticket import TicketScreen
from tests.conftest import FakeClock
from tests.tui.conftest import NOW, app_sync, wait_for
from tests.tui.ticket_fixtures import Rich, build_rich_store_sync


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Absolute times are shown in local time: make local time UTC for the pictures."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def snap_store(tmp_path: Path) -> tuple[str, FakeClock, Rich]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'snap.db'}"
    clock = FakeClock(NOW)
    rich = build_rich_store_sync(url, clock)
    return url, clock, rich


def opener(number: int, *then: str) -> Any:
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        await wait_for(lambda: type(app.screen).__name__ == "QueueScreen", pilot)
        screen = TicketScreen(number)
        await app.push_screen(screen)
        await wait_for(lambda: screen.loaded.is_set(), pilot)
        await pilot.pause()
        for key in then:
            await pilot.press(key)
            await pilot.pause(0.1)
        if "c" in then:
            await wait_for(lambda: bool(screen.customer_tickets), pilot)
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_ticket_screen(
    snap_compare: Any, snap_store: tuple[str, FakeClock, Rich], size: tuple[int, int]
) -> None:
    url, clock, rich = snap_store
    app = app_sync(url, clock, follow_changes=False, presence_interval=0)
    assert snap_compare(app, terminal_size=size, run_before=opener(rich.printer, "g"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_ticket_screen_customer_panel_and_quotes(
    snap_compare: Any, snap_store: tuple[str, FakeClock, Rich], size: tuple[int, int]
) -> None:
    url, clock, rich = snap_store
    app = app_sync(url, clock, follow_changes=False, presence_interval=0)
    assert snap_compare(app, terminal_size=size, run_before=opener(rich.printer, "T", "c"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_review_step(
    snap_compare: Any, snap_store: tuple[str, FakeClock, Rich], size: tuple[int, int]
) -> None:
    url, clock, rich = snap_store
    app = app_sync(url, clock, follow_changes=False, presence_interval=0)

    async def run_before(pilot: Any) -> None:
        await opener(rich.printer)(pilot)
        screen = pilot.app.screen
        await pilot.press("r")
        await wait_for(lambda: screen.composing, pilot)
        screen.composer.text_area.cursor_blink = False
        for key in "Hello":
            await pilot.press(key)
        await pilot.press("ctrl+s")
        await wait_for(lambda: isinstance(pilot.app.screen, ReviewScreen), pilot)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
