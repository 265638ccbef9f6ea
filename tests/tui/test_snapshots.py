"""Snapshots of the queue screen with fixed data and a frozen clock, at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpdesk_tui.screens.queue import QueueScreen
from tests.conftest import FakeClock
from tests.tui.conftest import app_sync, build_store


async def _queue_ready(pilot: Any) -> None:
    """Wait for the list, the total and every sidebar count (no spinner in the picture)."""
    app = pilot.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        screen = app.screen
        if (
            isinstance(screen, QueueScreen)
            and screen.ticket_list.rows
            and not screen.ticket_list.fetching
            and screen.total is not None
            and screen.sidebar.entries
            and all(e.count is not None for e in screen.sidebar.entries)
        ):
            break
        assert loop.time() < deadline, "the queue did not finish loading"
        await pilot.pause(0.05)
    await pilot.pause(0.1)


@pytest.fixture
def snapshot_app(store_url: str, clock: FakeClock) -> Any:
    asyncio.run(build_store(store_url, clock))
    # No change feed and no presence writes: nothing may move while the picture is taken.
    return app_sync(store_url, clock, follow_changes=False, presence_interval=0)


def test_queue_80x24(snap_compare: Any, snapshot_app: Any) -> None:
    assert snap_compare(snapshot_app, terminal_size=(80, 24), run_before=_queue_ready)


def test_queue_120x40(snap_compare: Any, snapshot_app: Any) -> None:
    assert snap_compare(snapshot_app, terminal_size=(120, 40), run_before=_queue_ready)


def test_queue_marked_and_filtered_120x40(snap_compare: Any, snapshot_app: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await _queue_ready(pilot)
        await pilot.press("space", "space")
        await pilot.press("slash", "ctrl+u", *"is:active updated:<2d", "enter")
        await pilot.pause(0.3)
        await _queue_ready(pilot)

    assert snap_compare(snapshot_app, terminal_size=(120, 40), run_before=run_before)


def test_query_error_80x24(snap_compare: Any, snapshot_app: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await _queue_ready(pilot)
        await pilot.press("slash", "ctrl+u", *"status:opne", "enter")
        pilot.app.screen.query_bar.input.cursor_blink = False  # a steady cursor in the picture
        await pilot.pause(0.2)

    assert snap_compare(snapshot_app, terminal_size=(80, 24), run_before=run_before)
