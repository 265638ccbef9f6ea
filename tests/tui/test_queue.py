"""The queue screen, driven by keys: order, movement, queries, counts, bulk actions, live updates."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from helpdesk_tui.app import HelpdeskApp
from helpdesk_tui.screens.confirm import ChoiceScreen, ConfirmScreen, PromptScreen
from helpdesk_tui.screens.queue import QueueScreen
from helpdesk_tui.widgets.query_bar import QueryBar
from helpdesk_tui.widgets.sidebar import Sidebar
from helpdesk_tui.widgets.ticket_list import MAX_ROWS, TicketList
from store.models import ArticleKind, Priority, Status
from store.service import MAIL, Actor, ArticleInput, Service
from tests.tui.conftest import AppFactory, bulk_tickets, screen_text, wait_for

SIZE = (120, 40)


def queue(app: HelpdeskApp) -> QueueScreen:
    screen = app.screen
    assert isinstance(screen, QueueScreen), type(screen)
    return screen


def listed(app: HelpdeskApp) -> list[int]:
    return [row.number for row in app.screen.query_one(TicketList).rows]


async def ready(app: HelpdeskApp, pilot: Any) -> QueueScreen:
    """Wait until the queue shows its first page and its total."""

    def done() -> bool:
        screen = app.screen
        return (
            isinstance(screen, QueueScreen)
            and not screen.ticket_list.fetching
            and bool(screen.ticket_list.rows)
            and screen.total is not None
        )

    await wait_for(done, pilot)
    return queue(app)


async def settle(app: HelpdeskApp, pilot: Any) -> None:
    """Wait for the list to finish a load started by the last key."""
    from textual.worker import WorkerState

    def idle() -> bool:
        busy = (WorkerState.PENDING, WorkerState.RUNNING)
        return not queue(app).ticket_list.fetching and not any(
            w.group.startswith(("ticket-list", "queue-total")) and w.state in busy
            for w in app.workers
        )

    await pilot.pause(0.05)
    await wait_for(idle, pilot)
    await pilot.pause(0.05)


async def test_opens_on_my_tickets_in_what_to_do_next_order(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        expected = [
            numbers["Cannot log in after password reset"],  # urgent
            numbers["Mailbox is full"],  # high
            numbers["Printer jam on floor 3"],  # normal, waiting longest
            numbers["Invoice shows the wrong VAT number"],
            numbers["New laptop for the new hire"],
            numbers["Screen flickers"],
            numbers["Rēķinā nepareiza summa"],  # low
        ]
        assert listed(app) == expected
        assert screen.order == "next"
        shown = screen_text(app)
        assert "order: next" in shown
        assert "1/7" in shown
        # Every column a user reads at 120 columns, on the first row.
        first = next(line for line in shown.splitlines() if f"#{expected[0]}" in line)
        for cell in ("urgent", "Open", "Cannot log in", "Frank Ode", "alice", "2d"):
            assert cell in first, (cell, first)


async def test_j_k_g_G_and_half_pages_move_the_cursor(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        tickets = screen.ticket_list
        rows = listed(app)
        await pilot.press("j", "j")
        assert tickets.current.number == rows[2]
        await pilot.press("k")
        assert tickets.current.number == rows[1]
        await pilot.pause()
        # Only the rows whose highlight changed are repainted: exactly one row is lit.
        cursor_bg = tickets.get_component_rich_style("ticket-list--cursor").bgcolor
        lit = [
            strip.text
            for strip in app.screen._compositor.render_strips()
            if any(seg.style and seg.style.bgcolor == cursor_bg for seg in strip)
            and "#" in strip.text
        ]
        assert len(lit) == 1 and f"#{rows[1]}" in lit[0]
        await pilot.press("G")
        await settle(app, pilot)
        assert tickets.current.number == rows[-1]
        assert "7/7" in screen_text(app)
        await pilot.press("g")
        await settle(app, pilot)
        assert tickets.current.number == rows[0]
        await pilot.press("ctrl+d")
        assert tickets.current.number == rows[-1]  # half of 37 lines is past the end
        await pilot.press("ctrl+u")
        assert tickets.current.number == rows[0]


async def test_query_filters_and_shows_resolved_dates(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("slash")
        bar = screen.query_one(QueryBar)
        assert bar.text == "assignee:me is:active "  # the view's query, ready to refine
        await pilot.press(*"tag:billing", "enter")
        await settle(app, pilot)
        assert sorted(listed(app)) == sorted(
            [numbers["Invoice shows the wrong VAT number"], numbers["Rēķinā nepareiza summa"]]
        )
        assert screen.custom_query == "assignee:me is:active tag:billing"
        assert screen.ticket_list.has_focus

        await pilot.press("slash", "ctrl+u", *"is:active updated:<1d", "enter")
        await settle(app, pilot)
        assert sorted(listed(app)) == sorted(
            numbers[s]
            for s in (
                "Mailbox is full",
                "Shared drive is read-only",
                "Question about the annual plan",
                "Screen flickers",
            )
        )
        shown = screen_text(app)
        assert "updated: 2026-11-01 09:00 UTC .. now" in shown

        await pilot.press("slash", "escape")  # Escape clears: back to the view
        await settle(app, pilot)
        assert screen.custom_query is None
        assert len(listed(app)) == 7


async def test_bad_query_shows_the_error_under_the_bad_column(
    seeded_url: str, make_app: AppFactory
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        before = listed(app)
        await pilot.press("slash", "ctrl+u", *"status:open frm:x", "enter")
        await pilot.pause(0.1)
        bar = screen.query_one(QueryBar)
        assert bar.error is not None
        message, position = bar.error
        assert position == 13
        assert "frm" in message
        # On screen: the caret sits exactly under the 'f' of 'frm'.
        lines = screen_text(app).splitlines()
        query_row = next(i for i, line in enumerate(lines) if "status:open frm:x" in line)
        column = lines[query_row].index("frm:x")
        caret_line = lines[query_row + 1]
        assert caret_line[column] == "^", caret_line
        assert message in caret_line
        assert listed(app) == before  # the list did not change
        assert bar.input.has_focus  # stay in the bar to fix it


async def test_sidebar_counts_are_live(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        sidebar = screen.query_one(Sidebar)
        await wait_for(lambda: all(e.count is not None for e in sidebar.entries), pilot)
        counts = {e.name: e.count for e in sidebar.entries}
        assert counts == {
            "My tickets": 7,
            "Unassigned": 3,
            "All active": 11,
            "Pending": 1,
            "Postponed": 1,
            "Solved today": 1,
            "Billing": 4,
            "Support": 7,
            "Billing backlog": 4,
            "Urgent & high": 4,
        }
        assert [e.kind for e in sidebar.entries][-2:] == ["personal", "shared"]
        line = next(x for x in screen_text(app).splitlines() if "All active" in x)
        assert line.split("▕")[0].rstrip().endswith("11") or "11" in line

        bob = Actor("agent", "bob", None)
        await other_service.update_ticket(
            bob, numbers["Shared drive is read-only"], assignee="alice"
        )
        await wait_for(lambda: sidebar.entry("mine").count == 8, pilot, timeout=5)
        assert sidebar.entry("unassigned").count == 2


async def test_bulk_status_reports_the_ticket_that_conflicted(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        rows = listed(app)  # urgent login, mailbox, printer, ...
        await pilot.press("space", "space", "space")
        tickets = screen.ticket_list
        assert set(tickets.marked) == set(rows[:3])
        assert "3 marked" in screen_text(app)

        # Meanwhile a colleague changes one of them.
        bob = Actor("agent", "bob", None)
        await other_service.update_ticket(bob, rows[1], tags_add=["vip"])

        await pilot.press("s")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press(*"solved"[:0])
        options = [label for _v, label in app.screen.choices]
        assert "Solved" in options
        for _ in range(options.index("Solved")):
            await pilot.press("down")
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), pilot)
        assert "3 tickets" in screen_text(app)
        await pilot.press("y")
        await wait_for(lambda: screen.last_report is not None, pilot)
        report = screen.last_report
        assert report is not None
        assert sorted(report.done) == sorted([rows[0], rows[2]])
        assert [n for n, _why in report.failed] == [rows[1]]
        assert "changed by someone else" in report.failed[0][1]
        # The failure stays marked for a retry; the rest are done.
        assert set(tickets.marked) == {rows[1]}
        # The agent is told, naming the ticket and the reason, until they press Esc.
        await pilot.pause(0.1)
        shown = screen_text(app)
        assert "2 done, 1 failed" in shown
        report_line = next(x for x in shown.splitlines() if f"#{rows[1]}:" in x)
        assert "changed by someone else" in report_line
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert "1 failed" not in screen_text(app)

    assert (await other_service.get_ticket(rows[0])).status == Status.SOLVED.value
    assert (await other_service.get_ticket(rows[2])).status == Status.SOLVED.value
    assert (await other_service.get_ticket(rows[1])).status == Status.OPEN.value


async def test_mark_a_range_and_mark_by_query(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        rows = listed(app)
        tickets = screen.ticket_list
        await pilot.press("space", "j", "j", "V")  # mark 0, then 0..3 as a range
        assert set(tickets.marked) == set(rows[:4])
        await pilot.press("escape")  # no query typed: Escape clears the marks
        assert not tickets.marked
        await pilot.press("T")
        await wait_for(lambda: isinstance(app.screen, PromptScreen), pilot)
        await pilot.press(*"tag:billing", "enter")
        await wait_for(lambda: len(tickets.marked) == 2, pilot)
        assert set(tickets.marked) == {
            numbers["Invoice shows the wrong VAT number"],
            numbers["Rēķinā nepareiza summa"],
        }
        assert "2 marked" in screen_text(app)


async def test_wide_action_defaults_to_no(
    seeded_url: str, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        rows = listed(app)
        await pilot.press("space", "space", "a")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press(*"bob", "enter")
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), pilot)
        await pilot.press("enter")  # Enter on the default answer: No
        await wait_for(lambda: app.screen is screen, pilot)
        assert screen.last_report is None
    for number in rows[:2]:
        ticket = await other_service.get_ticket(number)
        assert ticket.assignee is not None and ticket.assignee.login == "alice"


async def test_single_ticket_priority_and_tags_without_confirmation(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        target = screen.ticket_list.current.number
        await pilot.press("p")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press("down", "enter")  # urgent, high: pick high
        await wait_for(lambda: screen.last_report is not None, pilot)
        await pilot.press("t")
        await wait_for(lambda: isinstance(app.screen, PromptScreen), pilot)
        await pilot.press(*"+vip -login", "enter")
        await wait_for(lambda: screen.last_report.title.startswith("Tags"), pilot)  # type: ignore[union-attr]
    ticket = await other_service.get_ticket(target)
    assert ticket.priority == Priority.HIGH
    assert [t.name for t in ticket.tags] == ["vip"]


async def test_merge_marked_tickets_into_one(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        rows = listed(app)
        await pilot.press("space", "space", "m")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press("enter")  # into the first marked one
        await wait_for(lambda: isinstance(app.screen, ConfirmScreen), pilot)
        await pilot.press("y")
        await wait_for(lambda: queue(app).last_report is not None, pilot)
        await wait_for(lambda: rows[1] not in listed(app), pilot)
        assert queue(app).ticket_list.marked == {}, "nothing stays marked after the merge"
        assert "marked" not in screen_text(app)
    merged = await other_service.get_ticket(rows[1])
    assert merged.status == Status.MERGED.value


async def test_save_the_current_query_as_a_view(
    seeded_url: str, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("slash", "ctrl+u", *"tag:billing", "enter")
        await settle(app, pilot)
        await pilot.press("ctrl+s")
        await wait_for(lambda: isinstance(app.screen, PromptScreen), pilot)
        await pilot.press(*"Billing tags", "enter")
        sidebar = screen.query_one(Sidebar)
        await wait_for(lambda: any(e.name == "Billing tags" for e in sidebar.entries), pilot)
        assert "Billing tags" in screen_text(app)
        assert screen.view.name == "Billing tags"
    alice = await other_service.agent("alice")
    views = {v.name: (v.query, v.owner_id) for v in await other_service.list_views(alice.id)}
    assert views["Billing tags"] == ("tag:billing", alice.id)


async def test_save_the_current_query_as_a_shared_view_from_the_palette(
    seeded_url: str, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("slash", "ctrl+u", *"priority:urgent", "enter")
        await settle(app, pilot)
        (save_shared,) = [
            c for c in screen.palette_commands() if c.name.endswith("as a shared view")
        ]
        save_shared.run()
        await wait_for(lambda: isinstance(app.screen, PromptScreen), pilot)
        assert "shared view" in screen_text(app)
        await pilot.press(*"Urgent for all", "enter")
        sidebar = screen.query_one(Sidebar)
        await wait_for(lambda: any(e.name == "Urgent for all" for e in sidebar.entries), pilot)
        assert "Team views" in screen_text(app)
    bob = await other_service.agent("bob")
    views = {v.name: (v.query, v.owner_id) for v in await other_service.list_views(bob.id)}
    assert views["Urgent for all"] == ("priority:urgent", None)  # bob sees it too


async def test_changes_by_others_appear_within_two_seconds(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("j", "j")
        keep = screen.ticket_list.current.number
        await pilot.pause(0.6)  # the follower is now waiting for changes
        started = time.monotonic()
        new = await other_service.create_ticket(
            MAIL,
            subject="Server room is flooding",
            customer_email="ops@acme.com",
            article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="Water everywhere."),
            queue="Support",
            priority=Priority.URGENT,
            assignee="alice",
        )
        await wait_for(lambda: new.number in listed(app), pilot, timeout=4)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"took {elapsed:.2f}s"
        # Urgent, waiting less long than the other urgent one: second.
        assert listed(app)[:2] == [numbers["Cannot log in after password reset"], new.number]
        assert screen.ticket_list.current.number == keep  # the cursor stayed on its ticket
        assert "Server room is flooding" in screen_text(app)


async def test_tickets_open_elsewhere_are_marked(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        bob = await other_service.agent("bob")
        ticket = await other_service.get_ticket(numbers["Mailbox is full"])
        await other_service.touch_presence(bob.id, "bob-console", ticket.id)
        await wait_for(lambda: ticket.id in screen.ticket_list.presence, pilot, timeout=4)
        line = next(x for x in screen_text(app).splitlines() if "Mailbox is full" in x)
        assert "◉" in line
        assert screen.ticket_list.presence[ticket.id] == ("bob",)


async def test_presence_heartbeat_and_clear_on_exit(
    seeded_url: str, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await wait_for(lambda: app._presence_sent is not None, pilot)
        rows = await other_service.presence()
        assert ("alice", "Alice Agent", None, "viewing") in rows
        await pilot.press("q")
    assert await other_service.presence() == []


async def test_twenty_thousand_tickets_scroll_and_G_reaches_the_last(
    seeded_url: str, make_app: AppFactory
) -> None:
    from store import listing
    from store.query import QueryContext, compile_where, parse

    await bulk_tickets(seeded_url, 20_000)
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("v", "down", "down", "enter")  # All active
        await wait_for(lambda: screen.view.key == "active" and screen.total == 20_011, pilot)
        await settle(app, pilot)
        tickets = screen.ticket_list
        for _ in range(3):
            await pilot.press("o")  # next -> updated -> created -> number
        await settle(app, pilot)
        assert screen.order == "number"

        started = time.monotonic()
        await pilot.press("G")
        await settle(app, pilot)
        assert time.monotonic() - started < 1.0
        async with app.service.db.read() as session:
            ctx = QueryContext(app.me.id, app.service.clock(), "sqlite")
            last = await listing.last_page(
                session, compile_where(parse("is:active"), ctx), order="number", limit=1
            )
        assert tickets.current.number == last.rows[-1].number
        assert f"#{last.rows[-1].number}" in screen_text(app)
        assert "20,011/20,011" in screen_text(app)
        assert len(tickets.rows) <= MAX_ROWS

        # Scroll back up across several pages: rows stay contiguous, memory bounded.
        for _ in range(20):
            await pilot.press("ctrl+u")
            await pilot.pause(0.02)
        await settle(app, pilot)
        numbers_seen = [r.number for r in tickets.rows]
        assert numbers_seen == sorted(numbers_seen)
        assert len(set(numbers_seen)) == len(numbers_seen)
        assert len(tickets.rows) <= MAX_ROWS
        assert tickets.position(screen.total) == 20_011 - 20 * 18

        await pilot.press("g")
        await settle(app, pilot)
        assert tickets.position(screen.total) == 1


async def test_enter_and_double_click_open_the_ticket(
    seeded_url: str, make_app: AppFactory, monkeypatch: Any
) -> None:
    opened: list[int] = []
    monkeypatch.setattr(QueueScreen, "open_ticket", lambda self, number: opened.append(number))
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        rows = listed(app)
        await pilot.press("enter")
        assert opened == [rows[0]]
        # Row 3 of the list: below the query bar, the status line and the header.
        tickets = screen.ticket_list
        await pilot.click(TicketList, offset=(20, 3))
        assert tickets.current.number == rows[2]
        await pilot.click(TicketList, offset=(20, 3), times=2)
        assert opened == [rows[0], rows[2]]


async def test_help_lists_keys_query_keys_and_orders(seeded_url: str, make_app: AppFactory) -> None:
    from rich.console import Console

    from helpdesk_tui.screens.help import HelpScreen

    app = await make_app(seeded_url)
    app.config.keymap = {"queue.assign": "A"}
    async with app.run_test(size=SIZE) as pilot:
        await ready(app, pilot)
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen), pilot)
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        keys = {ident: (key, what) for key, what, _tip, ident in help_screen.keys}
        assert keys["list.mark"] == ("space", "Mark")
        assert keys["queue.assign"] == ("A", "Assign")  # the user's keymap, not the default
        assert "j" in keys["list.down"][0]
        console = Console(width=100, record=True)
        for section in help_screen.sections:
            console.print(section)
        whole = console.export_text()
        for text in ("Query keys", "assignee:", "what to do next", "number"):
            assert text in whole, text
        assert "Mark" in screen_text(app)
        await pilot.press("escape")
        await wait_for(lambda: isinstance(app.screen, QueueScreen), pilot)


async def test_user_keymap_remaps_a_binding_by_id(seeded_url: str, make_app: AppFactory) -> None:
    app = await make_app(seeded_url)
    app.config.keymap = {"list.down": "n", "queue.order": "O"}
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        rows = listed(app)
        await pilot.press("n")
        assert screen.ticket_list.current.number == rows[1]
        await pilot.press("O")
        await settle(app, pilot)
        assert screen.order == "updated"


async def test_palette_offers_queue_actions_and_views(
    seeded_url: str, make_app: AppFactory
) -> None:
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"view pending")
        await pilot.pause(0.5)
        shown = screen_text(app)
        assert "View: Pending" in shown
        await pilot.press("enter")
        await wait_for(lambda: screen.view.key == "pending", pilot)
        await settle(app, pilot)
        assert len(listed(app)) == 1
        await asyncio.sleep(0)


async def test_j_and_k_across_many_small_pages_show_every_ticket_once(
    seeded_url: str, make_app: AppFactory, monkeypatch: Any
) -> None:
    """Pages of 25 in a window of 150, read through the order's index in tiny windows.

    Holding `j` over 180 tickets crosses seven page boundaries (pages land while the cursor
    moves, far pages are dropped); `k` walks back up through pages fetched again. Each
    step must show the next (previous) ticket of the store's order: none skipped or twice.
    """
    from sqlalchemy import select

    import helpdesk_tui.widgets.ticket_list as ticket_list_module
    from store import listing
    from store.models import Ticket
    from store.query import QueryContext, compile_where, parse

    monkeypatch.setattr(ticket_list_module, "PAGE_SIZE", 25)
    monkeypatch.setattr(ticket_list_module, "MAX_ROWS", 150)
    monkeypatch.setattr(listing, "SMALL_RESULT", 1)
    monkeypatch.setattr(listing, "_walk_helps", lambda _o, _w: True)  # is:active walks too
    monkeypatch.setattr(listing, "FIRST_WINDOW", 4)
    monkeypatch.setattr(listing, "MAX_WINDOW", 16)
    await bulk_tickets(seeded_url, 300)
    app = await make_app(seeded_url)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(app, pilot)
        await pilot.press("v", "down", "down", "enter")  # All active, in `next` order
        await wait_for(lambda: screen.view.key == "active" and screen.total == 311, pilot)
        await settle(app, pilot)
        assert screen.order == "next"
        far = datetime(9999, 1, 1, tzinfo=UTC)
        async with app.service.db.read() as session:
            ctx = QueryContext(app.me.id, app.service.clock(), "sqlite")
            found = await session.execute(
                select(
                    Ticket.number,
                    Ticket.priority,
                    Ticket.next_due_at,
                    Ticket.last_customer_at,
                    Ticket.id,
                ).where(compile_where(parse("is:active"), ctx))
            )
            ordered = sorted(found, key=lambda r: (-r[1], r[2] or far, r[3] or far, r[4]))
        expected = [r[0] for r in ordered]  # the `next` order, sorted here
        assert len(expected) == 311
        tickets = screen.ticket_list

        async def step(key: str) -> int:
            before = tickets.current.number
            await pilot.press(key)
            if tickets.current.number == before:  # at the window's edge: the page is coming
                await settle(app, pilot)
                await pilot.press(key)
            return int(tickets.current.number)

        down = [tickets.current.number] + [await step("j") for _ in range(180)]
        assert down == expected[:181]
        assert len(tickets.rows) <= 150
        await settle(app, pilot)
        assert tickets.position(screen.total) == 181
        assert "181/311" in screen_text(app)
        up = [await step("k") for _ in range(180)]
        assert up == expected[:180][::-1]
        await settle(app, pilot)
        assert tickets.position(screen.total) == 1
