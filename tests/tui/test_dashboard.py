"""The report dashboard: figures equal `build_report`'s, filters change them, snapshots.

The store is the fixed console data set plus agent replies, solves, a reopen and two
satisfaction ratings (written as the mail sync writes them), on a frozen clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from textual.widgets import Static

from helpdesk_tui.screens.confirm import ChoiceScreen, PromptScreen
from helpdesk_tui.screens.dashboard import (
    DashboardScreen,
    cards,
    columns,
    hours_text,
    parse_period,
)
from mail_sync import csat
from store.engine import Database
from store.models import Article, ArticleKind, Status, Ticket
from store.reports import Report, ReportFilter, build_report
from store.service import MAIL, Actor, ArticleInput, Service
from tests.conftest import FakeClock
from tests.tui.conftest import NOW, AppFactory, app_sync, build_store, screen_text, wait_for

HOSTILE_QUEUE = "[bold]Evil[/bold] \x1b]52;c;aGVsbG8=\x07Q"


async def add_activity(url: str, clock: FakeClock, numbers: dict[str, int]) -> None:
    """Replies, solves, a reopen and ratings on top of the fixed data set."""
    db = Database(url)
    try:
        svc = Service(db, clock=clock)
        alice = await svc.agent("alice")
        bob = await svc.agent("bob")
        a_alice = Actor("agent", "alice", alice.id)
        a_bob = Actor("agent", "bob", bob.id)
        start = clock.now
        plan = [
            ("Printer jam on floor 3", a_alice, timedelta(days=8), True),
            ("VPN disconnects every 10 minutes", a_bob, timedelta(days=3, hours=20), True),
            ("Cannot log in after password reset", a_alice, timedelta(days=2), False),
            ("Mailbox is full", a_alice, timedelta(hours=5), True),
        ]
        for subject, actor, ago, solve in plan:
            n = numbers[subject]
            clock.now = start - ago
            await svc.add_reply(actor, n, "We are on it.")
            if solve:
                clock.now += timedelta(hours=2)
                await svc.update_ticket(actor, n, status=Status.SOLVED)
        # The printer ticket comes back and is solved again (a reopen).
        n = numbers["Printer jam on floor 3"]
        clock.now = start - timedelta(days=7)
        await svc.add_customer_message(
            MAIL, n, ArticleInput(kind=ArticleKind.EMAIL_IN, body="It jams again.")
        )
        clock.now += timedelta(hours=3)
        await svc.update_ticket(a_alice, n, status=Status.SOLVED)
        # Two ratings, recorded the way the mail sync records them.
        for subject, score in (("Printer jam on floor 3", 5), ("Mailbox is full", 2)):
            clock.now = start - timedelta(hours=1)
            async with db.write() as s:
                t = (
                    (await s.execute(select(Ticket).where(Ticket.number == numbers[subject])))
                    .unique()
                    .scalar_one()
                )
                art = Article(
                    ticket_id=t.id,
                    kind=ArticleKind.EMAIL_IN.value,
                    body_text=str(score),
                    created_at=clock.now,
                )
                s.add(art)
                await s.flush()
                await csat.record_rating(s, t, csat.Rating(score, "", "survey@x"), art)
        clock.now = start
    finally:
        await db.dispose()


@pytest.fixture
async def dash_url(store_url: str, clock: FakeClock) -> str:
    numbers = await build_store(store_url, clock)
    await add_activity(store_url, clock, numbers)
    return store_url


async def expected(url: str, **kw: Any) -> Report:
    db = Database(url)
    try:
        since = kw.pop("since", NOW - timedelta(days=30))
        return await build_report(db, ReportFilter(since=since, until=NOW, **kw), now=NOW)
    finally:
        await db.dispose()


async def open_dashboard(pilot: Any) -> DashboardScreen:
    await pilot.pause(0.2)
    await pilot.press("D")
    await wait_ready(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, DashboardScreen)
    return screen


async def wait_ready(pilot: Any) -> None:
    def ready() -> bool:
        s = pilot.app.screen
        return isinstance(s, DashboardScreen) and s.report is not None and not s.computing

    await wait_for(ready, pilot, timeout=15)
    await pilot.pause(0.05)


def shown_cards(screen: DashboardScreen) -> dict[str, str]:
    return {
        c.ident: str(screen.query_one(f"#card-{c.ident}", Static).content)
        for c in cards(screen.report.overall)  # type: ignore[union-attr]
    }


def card_texts(report: Report) -> dict[str, str]:
    return {
        c.ident: f"{c.value}  {c.detail}" if c.detail else c.value for c in cards(report.overall)
    }


async def test_figures_match_the_report(make_app: AppFactory, dash_url: str) -> None:
    want = await expected(dash_url)
    # The data set exercises every figure (a sanity check of the fixture, not of the screen).
    o = want.overall
    assert o.created == 12 and o.solved == 4 and o.csat_count == 2 and o.csat_average == 3.5
    assert o.reopen.count == 1 and o.first_response.count == 4
    app = await make_app(dash_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot)
        shown = shown_cards(screen)
        assert shown == card_texts(want)
        assert shown["created"] == "12  tickets" and shown["csat"] == "3.5  2 ratings"
        assert shown["frt"] == f"{hours_text(o.first_response.median)}  p90 " + hours_text(
            o.first_response.p90
        )
        text = screen_text(app)
        for f in want.by_queue:
            row = next(line for line in text.splitlines() if line.strip().startswith(f.label))
            assert row.split()[1:4] == [str(f.created), str(f.solved), str(f.backlog)]
        bob = next(line for line in text.splitlines() if line.strip().startswith("bob"))
        [bob_f] = [f for f in want.by_agent if f.label == "bob"]
        assert bob.split()[1:4] == [str(bob_f.created), str(bob_f.solved), str(bob_f.backlog)]
        assert "last 30 days" in text and "2026-10-03 09:00 – 2026-11-02 09:00 UTC" in text


async def test_queue_agent_and_period_filters_change_the_figures(
    make_app: AppFactory, dash_url: str
) -> None:
    app = await make_app(dash_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_dashboard(pilot)
        assert shown_cards(screen)["created"] == "12  tickets"

        await pilot.press("f")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press("down", "enter")  # All queues, Billing, Support: Billing
        await wait_ready(pilot)
        billing = await expected(dash_url, queue="Billing")
        assert screen.filter.queue == "Billing"
        assert shown_cards(screen) == card_texts(billing)
        assert shown_cards(screen)["created"] == "4  tickets"

        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press("down", "enter")  # All agents, alice, bob: alice
        await wait_ready(pilot)
        both = await expected(dash_url, queue="Billing", agent="alice")
        assert shown_cards(screen) == card_texts(both)
        assert both.overall.created == 2

        await pilot.press("x", "1")  # clear, then the last 7 days
        await wait_ready(pilot)
        week = await expected(dash_url, since=NOW - timedelta(days=7))
        assert screen.filter.days == 7 and screen.filter.queue is None
        assert shown_cards(screen) == card_texts(week)
        assert week.overall.created == 11  # all but the 9-day-old ticket

        await pilot.press("p")
        await wait_for(lambda: isinstance(app.screen, ChoiceScreen), pilot)
        await pilot.press("end", "enter")  # Custom range…
        await wait_for(lambda: isinstance(app.screen, PromptScreen), pilot)
        await pilot.press(*"2026-10-25..2026-10-30", "enter")
        await wait_ready(pilot)
        db = Database(dash_url)
        try:
            flt = ReportFilter(
                since=datetime(2026, 10, 25, tzinfo=UTC), until=datetime(2026, 10, 31, tzinfo=UTC)
            )
            custom = await build_report(db, flt, now=NOW)
        finally:
            await db.dispose()
        assert shown_cards(screen) == card_texts(custom)
        # Created on Oct 27, 29 and 30 (6, 4 and 3 days before Monday Nov 2 09:00).
        assert shown_cards(screen)["created"] == "3  tickets"
        assert "2026-10-25 – 2026-10-30" in screen_text(app)


async def test_refresh_shows_new_tickets_and_the_palette_opens_it(
    make_app: AppFactory, dash_url: str, clock: FakeClock
) -> None:
    app = await make_app(dash_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("ctrl+p")
        await pilot.press(*"team report")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_ready(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert shown_cards(screen)["created"] == "12  tickets"
        db = Database(dash_url)
        try:
            clock.now = NOW - timedelta(minutes=1)
            await Service(db, clock=clock).create_ticket(
                MAIL,
                subject="One more",
                customer_email="zed@example.com",
                article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="hi"),
            )
            clock.now = NOW
        finally:
            await db.dispose()
        assert shown_cards(screen)["created"] == "12  tickets"  # until refreshed
        await pilot.press("r")
        await wait_ready(pilot)
        assert shown_cards(screen)["created"] == "13  tickets"
        await pilot.press("q")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, DashboardScreen)


async def test_leaving_before_the_report_arrives_is_harmless(
    make_app: AppFactory, dash_url: str
) -> None:
    app = await make_app(dash_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        queue = app.screen
        await pilot.press("D", "q")
        await pilot.pause(1.5)  # the worker thread finishes after the screen is gone
        assert app.screen is queue and app.is_running


async def test_hostile_queue_names_are_plain_text(
    make_app: AppFactory, dash_url: str, clock: FakeClock
) -> None:
    db = Database(dash_url)
    try:
        svc = Service(db, clock=clock)
        await svc.add_queue(HOSTILE_QUEUE, [])
        clock.now = NOW - timedelta(hours=2)
        await svc.create_ticket(
            MAIL,
            subject="x",
            customer_email="y@example.com",
            queue=HOSTILE_QUEUE,
            article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="hi"),
        )
        clock.now = NOW
    finally:
        await db.dispose()
    app = await make_app(dash_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_dashboard(pilot)
        text = screen_text(app)
        assert "[bold]Evil[/bold]" in text
        assert "\x1b" not in text and "\x07" not in text


def test_parse_period() -> None:
    now = NOW
    assert parse_period("7d", now).days == 7
    assert parse_period("4w", now).days == 28
    custom = parse_period("2026-10-01..2026-10-31", now)
    assert (custom.days, f"{custom.since:%F}", f"{custom.until:%F}") == (
        None,
        "2026-10-01",
        "2026-11-01",
    )
    assert parse_period("2026-10-01..", now).until is None
    for bad in ("7m", "yesterday", "2026-10-31..2026-10-01", "..2026-10-01", "2027-01-01.."):
        with pytest.raises(ValueError):
            parse_period(bad, now)


def test_hour_columns_scale_to_the_busiest_hour() -> None:
    assert columns([0, 1, 2, 4], rows=2) == ["   █", " ▄██"]
    assert columns([0, 1, 100], rows=1) == [" ▁█"]  # a quiet hour still shows
    assert columns([0, 0], rows=1) == ["  "]


# --------------------------------------------------------------------------- snapshots
@pytest.fixture
def dash_app(store_url: str, clock: FakeClock) -> Any:
    async def build() -> None:
        numbers = await build_store(store_url, clock)
        await add_activity(store_url, clock, numbers)

    asyncio.run(build())
    return app_sync(store_url, clock, follow_changes=False, presence_interval=0)


async def _dashboard_ready(pilot: Any) -> None:
    await pilot.pause(0.3)
    await pilot.press("D")
    await wait_ready(pilot)
    await pilot.pause(0.1)


def test_dashboard_80x24(snap_compare: Any, dash_app: Any) -> None:
    assert snap_compare(dash_app, terminal_size=(80, 24), run_before=_dashboard_ready)


def test_dashboard_120x40(snap_compare: Any, dash_app: Any) -> None:
    assert snap_compare(dash_app, terminal_size=(120, 40), run_before=_dashboard_ready)
