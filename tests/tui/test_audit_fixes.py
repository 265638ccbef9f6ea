"""Small fixes found by walking issue 3 as an agent: each test is what the agent ran into."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from textual.widgets import Input

from helpdesk_tui.commands import ScreenCommands
from helpdesk_tui.screens.canned import CannedScreen
from helpdesk_tui.screens.confirm import ChoiceScreen
from helpdesk_tui.screens.ticket import TicketScreen
from store.service import Service
from tests.conftest import FakeClock
from tests.tui.conftest import AppFactory, screen_text
from tests.tui.ticket_fixtures import Rich, enrich, open_ticket, until


@pytest.fixture
async def rich(seeded_url: str, clock: FakeClock, numbers: dict[str, int]) -> Rich:
    return await enrich(seeded_url, clock, numbers)


def palette_names(screen: TicketScreen) -> list[str]:
    """The names the command palette offers on this screen (what the agent searches)."""
    return [command.name for command in ScreenCommands(screen).commands()]


async def test_palette_offers_canned_and_review_once_while_writing(
    seeded_url: str, rich: Rich, make_app: AppFactory
) -> None:
    """ctrl+p "canned" listed the canned picker twice (the editor's key and a screen command)."""
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        assert not any("anned" in name for name in palette_names(screen))  # not writing yet
        await pilot.press("r")
        await until(pilot, lambda: screen.composing and screen.composer.text_area.has_focus)

        names = palette_names(screen)
        assert len([n for n in names if "anned" in n]) == 1, names
        assert len([n for n in names if "Review" in n]) == 1, names

        # With the focus back on the thread the composer's keys are not active: the
        # screen's own commands still reach the picker and the review step, once each.
        screen.thread.focus()
        await pilot.pause()
        names = palette_names(screen)
        canned = [c for c in ScreenCommands(screen).commands() if "anned" in c.name]
        assert len(canned) == 1, names
        assert len([n for n in names if "Review" in n]) == 1, names
        started = canned[0].run()  # a worker, or a coroutine for binding commands
        if inspect.isawaitable(started):
            await started
        await until(pilot, lambda: isinstance(app.screen, CannedScreen))


async def test_ticket_assign_picker_filters_by_what_the_agent_types(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    """`a` then typing a login picked nothing: the ticket's picker had no filter (the queue's had)."""
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        picker: Any = app.screen
        await until(pilot, lambda: picker.query_one(Input).has_focus)
        await pilot.press("b", "o", "b")
        await until(pilot, lambda: len(picker._shown) == 1)
        await pilot.press("enter")
        await until(pilot, lambda: "assignee bob" in screen_text(app))
        ticket = await other_service.get_ticket(rich.printer)
        assert ticket.assignee is not None and ticket.assignee.login == "bob"
