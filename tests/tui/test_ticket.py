"""The ticket screen: header, thread, pickers, live updates, conflicts, pipe and attachments."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, OptionList

from helpdesk_tui.commands import binding_commands
from helpdesk_tui.messages import StoreChanged
from helpdesk_tui.pipe import (
    SaveError,
    run_pipe,
    safe_filename,
    save_attachment,
    ticket_env,
)
from helpdesk_tui.screens.confirm import ChoiceScreen, ConfirmScreen, PromptScreen
from helpdesk_tui.screens.pickers import (
    PipeResultScreen,
    parse_postpone,
    parse_tags,
    parse_ticket_number,
)
from helpdesk_tui.screens.ticket import TicketScreen, check_cc
from helpdesk_tui.widgets.thread import ArticleView, ThreadView
from store.models import ArticleKind, Level, Priority, Status
from store.service import MAIL, Actor, ArticleInput, Service
from tests.conftest import FakeClock
from tests.tui.conftest import NOW, AppFactory, screen_text
from tests.tui.ticket_fixtures import PRINTER, Rich, enrich, notifications, open_ticket, until


@pytest.fixture
async def rich(seeded_url: str, clock: FakeClock, numbers: dict[str, int]) -> Rich:
    return await enrich(seeded_url, clock, numbers)


async def bob_actor(service: Service) -> Actor:
    bob = await service.agent("bob")
    return Actor("agent", "bob", bob.id)


def current(app: Any) -> Any:
    """The active screen, untyped (tests reach into whichever screen is on top)."""
    return app.screen


async def choose(pilot: Any, app: Any, text: str) -> None:
    """Pick the option whose label contains `text` in the open ChoiceScreen."""
    await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
    screen = app.screen
    options = screen.query_one(OptionList)
    for index in range(options.option_count):
        if text in str(options.get_option_at_index(index).prompt):
            options.highlighted = index
            break
    else:
        raise AssertionError(f"no option {text!r}")
    await pilot.press("enter")
    await pilot.pause()


async def answer(pilot: Any, app: Any, value: str) -> None:
    """Type `value` into the open PromptScreen and confirm."""
    await until(pilot, lambda: isinstance(app.screen, PromptScreen))
    app.screen.query_one(Input).value = value
    await pilot.press("enter")
    await pilot.pause()


# --------------------------------------------------------------------------- reading
async def test_open_shows_header_and_thread_with_the_note_distinct(
    seeded_url: str, rich: Rich, make_app: AppFactory
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        text = screen_text(app)
        for expected in (
            f"#{rich.printer} {PRINTER}",
            " Open ",
            "priority high",
            "set by alice; matrix: normal",
            "assignee alice",
            "queue Support",
            "tags hardware, printer",
            "Carol Smith <carol@acme.com>",
            "org ACME Corp (vip)",
        ):
            assert expected in text, expected
        screen.thread.scroll_home(animate=False)
        await pilot.pause()
        views = {v.info.kind: v for v in screen.query(ArticleView)}
        note, reply, mail = views["note"], views["email_out"], views["email_in"]
        # The note is labelled INTERNAL and drawn differently from the reply and customer mail.
        assert "INTERNAL NOTE" in str(note.border_title)
        assert "REPLY" in str(reply.border_title)
        assert "queued for delivery" in str(reply.border_subtitle)
        assert note.styles.border_top[0] != reply.styles.border_top[0]
        assert note.styles.border_top[1] != reply.styles.border_top[1]
        assert note.styles.border_top[1] != mail.styles.border_top[1]
        assert "not visible to the customer" in str(note.render())
        full = "\n".join(str(v.render()) for v in screen.query(ArticleView))
        assert "Attachment: jam.jpg" in full and "1.3 KB" in full
        assert "html shown as text" in full
        # Presence attributes for the app's heartbeat.
        assert screen.presence_ticket_id == rich.ticket_id
        assert screen.presence_mode == "viewing"


async def test_T_toggles_quoted_text(seeded_url: str, rich: Rich, make_app: AppFactory) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        quoted = next(v for v in screen.query(ArticleView) if v.info.quoted)
        assert "5 quoted lines hidden" in str(quoted.render())
        assert "> which printer model" not in str(quoted.render())
        await pilot.press("T")
        await pilot.pause()
        assert "> which printer model is it?" in str(quoted.render())
        await pilot.press("T")
        await pilot.pause()
        assert "> which printer model" not in str(quoted.render())


async def test_hostile_strings_are_shown_as_text(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    hostile = "[/bold] [link=file:///etc/passwd]x[/link] [@click=app.quit]y \x1b]52;c;ZXZpbA==\x07z"
    await other_service.update_ticket(MAIL, rich.printer, subject=hostile)
    await other_service.add_customer_message(
        MAIL,
        rich.printer,
        ArticleInput(
            kind=ArticleKind.EMAIL_IN,
            body="evil \x1b[2J\x9b31m body [b]not bold[/b] \u202eexe.txt",
            from_addr="Mallory \x1b]0;title\x07 <m@evil.example>",
        ),
    )
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        text = screen_text(app)
        assert "[/bold] [link=file:///etc/passwd]x[/link] [@click=app.quit]y z" in text
        assert "\x1b" not in text and "ZXZpbA" not in text
        body = str(list(screen.query(ArticleView))[-1].render())
        assert "[b]not bold[/b]" in body and "\x1b" not in body and "\x9b" not in body
        assert "\u202e" not in body and "title" not in body
        assert app.is_running


async def test_long_thread_opens_whole_and_scrolls_with_vim_keys(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service, clock: FakeClock
) -> None:
    number = rich.vpn
    bob = await bob_actor(other_service)
    start = clock.now
    for i in range(49):
        clock.now = NOW - timedelta(hours=60 - i)
        if i % 3 == 2:
            await other_service.add_note(bob, number, f"Note {i}\nchecked the logs again")
        else:
            await other_service.add_customer_message(
                MAIL,
                number,
                ArticleInput(
                    kind=ArticleKind.EMAIL_IN,
                    body=f"Message {i}\n" + "still broken\n" * 6,
                    quoted_text="> earlier\n" * 8,
                    created_at=clock.now,
                ),
            )
    clock.now = start
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: type(app.screen).__name__ == "QueueScreen")
        screen = TicketScreen(number)
        # How fast it opens is measured by bench/console_bench.py, not asserted here.
        await app.push_screen(screen)
        await until(pilot, lambda: screen.loaded.is_set())
        # Older entries are mounted after the first paint: every one of them arrives.
        await until(pilot, lambda: len(screen.query(ArticleView)) >= 50)
        thread = screen.query_one(ThreadView)
        assert thread.has_focus
        await pilot.press("g")
        await pilot.pause()
        assert thread.scroll_y == 0
        await pilot.press("j", "j", "j")
        await pilot.pause()
        assert thread.scroll_y == 3
        await pilot.press("k")
        await pilot.pause()
        assert thread.scroll_y == 2
        await pilot.press("ctrl+d")
        await pilot.pause()
        assert thread.scroll_y > 10
        await pilot.press("ctrl+u")
        await pilot.pause()
        assert thread.scroll_y == 2
        await pilot.press("G")
        await pilot.pause()
        assert thread.scroll_y == thread.max_scroll_y


# --------------------------------------------------------------------------- field changes
async def test_assign_and_unassign(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        await pilot.press("a")
        await choose(pilot, app, "bob")
        await until(pilot, lambda: "assignee bob" in screen_text(app))
        t = await other_service.get_ticket(rich.printer)
        assert t.assignee is not None and t.assignee.login == "bob"
        await pilot.press("a")
        await choose(pilot, app, "unassign")
        await until(pilot, lambda: "assignee unassigned" in screen_text(app))
        assert (await other_service.get_ticket(rich.printer)).assignee_id is None
        assert screen.header_info is not None and screen.header_info.assignee == ""


async def test_status_uses_team_labels(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    await other_service.set_status_label(Status.PENDING, "Waiting on customer")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        labels = [str(o.prompt) for o in app.screen.query_one(OptionList).options]
        assert any("Waiting on customer" in label for label in labels)
        assert not any("Merged" in label for label in labels)
        await choose(pilot, app, "Waiting on customer")
        await until(pilot, lambda: " Waiting on customer " in screen_text(app))
        assert (await other_service.get_ticket(rich.printer)).status == "pending"


async def test_closing_asks_first_with_no_as_default(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("s")
        await choose(pilot, app, "Closed")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")  # No is the default
        await pilot.pause(0.1)
        assert (await other_service.get_ticket(rich.printer)).status == "open"


async def test_priority_override_shows_its_author_and_auto_drops_it(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("p")
        await choose(pilot, app, "auto: from impact x urgency (normal)")
        await until(pilot, lambda: "priority normal  assignee" in screen_text(app))
        t = await other_service.get_ticket(rich.printer)
        assert t.priority == Priority.NORMAL and t.priority_override_by is None
        await pilot.press("p")
        await choose(pilot, app, "urgent")
        await until(
            pilot, lambda: "priority urgent (set by alice; matrix: normal)" in screen_text(app)
        )
        t = await other_service.get_ticket(rich.printer)
        assert t.priority == Priority.URGENT and t.priority_override_by == "agent:alice"


async def test_impact_and_urgency_derive_the_priority(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    await other_service.update_ticket(MAIL, rich.printer, priority="auto")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("i")
        await choose(pilot, app, "high")
        await until(pilot, lambda: "impact high" in screen_text(app))
        await pilot.press("u")
        await choose(pilot, app, "high")
        await until(pilot, lambda: "urgency high" in screen_text(app))
        assert "priority urgent  assignee" in screen_text(app)
        t = await other_service.get_ticket(rich.printer)
        assert (t.impact, t.urgency, t.priority) == (Level.HIGH, Level.HIGH, Priority.URGENT)


async def test_tags_edit_the_list_or_apply_changes(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        assert app.screen.query_one(Input).value == "hardware printer"
        await answer(pilot, app, "hardware printer vip")
        await until(pilot, lambda: "tags hardware, printer, vip" in screen_text(app))
        await pilot.press("t")
        await answer(pilot, app, "-printer +floor3")
        await until(pilot, lambda: "tags floor3, hardware, vip" in screen_text(app))
        t = await other_service.get_ticket(rich.printer)
        assert sorted(tag.name for tag in t.tags) == ["floor3", "hardware", "vip"]


async def test_merge_asks_first_and_shows_the_pointer(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("m")
        await answer(pilot, app, f"#{rich.vpn}")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "VPN disconnects" in screen_text(app)
        await pilot.press("enter")  # the default is No
        await pilot.pause(0.1)
        assert (await other_service.get_ticket(rich.printer)).status == "open"
        await pilot.press("m")
        await answer(pilot, app, str(rich.vpn))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: f"Merged into #{rich.vpn}" in screen_text(app))
        t = await other_service.get_ticket(rich.printer)
        assert t.status == "merged"
        assert any(f"Merged into #{rich.vpn}" in info.body for info in current(app).article_infos)


async def test_merge_into_itself_is_refused_in_the_prompt(
    seeded_url: str, rich: Rich, make_app: AppFactory
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("m")
        await answer(pilot, app, str(rich.printer))
        assert isinstance(app.screen, PromptScreen)
        assert "cannot be merged into itself" in screen_text(app)


async def test_postpone_accepts_relative_times(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("z")
        await answer(pilot, app, "2m")
        assert isinstance(app.screen, PromptScreen)  # refused: minutes or months?
        assert "use min, h, d or w" in screen_text(app)
        await answer(pilot, app, "2d")
        await until(pilot, lambda: "Postponed until" in screen_text(app))
        assert "(in 2d)" in screen_text(app)
        t = await other_service.get_ticket(rich.printer)
        assert t.status == "postponed" and t.postponed_until == NOW + timedelta(days=2)


# --------------------------------------------------------------------------- customer panel
async def test_customer_panel_lists_other_tickets_and_opens_them(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    other = await other_service.create_ticket(
        MAIL,
        subject="Toner is empty",
        customer_email="carol@acme.com",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="Toner please"),
    )
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        await pilot.press("c")
        await until(pilot, lambda: len(screen.customer_tickets) == 2)
        await pilot.pause()
        text = screen_text(app)
        assert "+1 555 0100" in text and "ACME Corp (vip)" in text and "domains acme.com" in text
        assert f"#{other.number}" in text and "Toner is empty" in text
        options = screen.query_one("#customer-tickets", OptionList)
        assert options.has_focus
        options.highlighted = next(
            i for i, t in enumerate(screen.customer_tickets) if t.number == other.number
        )
        await pilot.press("enter")
        await until(
            pilot,
            lambda: (
                isinstance(app.screen, TicketScreen)
                and app.screen is not screen
                and app.screen.loaded.is_set()
            ),
        )
        assert current(app).number == other.number
        await pilot.press("q")
        await until(pilot, lambda: app.screen is screen)
        await pilot.press("c")
        await pilot.pause()
        assert not screen.query_one("#customer-panel").display or not screen.has_class("-customer")


# --------------------------------------------------------------------------- live & conflicts
async def test_conflict_shows_a_clear_message_and_reloads(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        # Another agent changes the ticket; this console has not heard of it yet.
        await other_service.update_ticket(
            await bob_actor(other_service), rich.printer, status=Status.ON_HOLD
        )
        assert " Open " in screen_text(app)
        await pilot.press("s")
        await choose(pilot, app, "Pending")
        await until(pilot, lambda: "Changed by someone else" in notifications(app))
        message = notifications(app)
        assert "was changed by someone else" in message and "Nothing was overwritten" in message
        await until(pilot, lambda: " On hold " in screen_text(app))
        assert (await other_service.get_ticket(rich.printer)).status == "on-hold"
        # After the reload the same change goes through.
        await pilot.press("s")
        await choose(pilot, app, "Pending")
        await until(pilot, lambda: " Pending " in screen_text(app))
        assert (await other_service.get_ticket(rich.printer)).status == "pending"


async def test_live_update_keeps_the_scroll_position(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        thread = screen.thread
        thread.scroll_to(y=3, animate=False)
        await pilot.pause()
        before = len(screen.article_infos)
        await other_service.add_customer_message(
            MAIL,
            rich.printer,
            ArticleInput(kind=ArticleKind.EMAIL_IN, body="Any news? It is still jammed."),
        )
        screen.post_message(StoreChanged(frozenset({rich.ticket_id}), frozenset({"article"})))
        await until(pilot, lambda: len(screen.article_infos) == before + 1)
        await pilot.pause()
        assert thread.scroll_y == 3
        assert "Any news?" in str(list(screen.query(ArticleView))[-1].render())


async def test_presence_of_other_agents_is_shown(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    bob = await other_service.agent("bob")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        await other_service.touch_presence(bob.id, "bob-console", rich.ticket_id, "viewing")
        screen.post_message(StoreChanged(frozenset({rich.ticket_id}), frozenset({"presence"})))
        await until(pilot, lambda: "bob is viewing" in screen_text(app))
        await other_service.touch_presence(bob.id, "bob-console", rich.ticket_id, "composing")
        screen.post_message(StoreChanged(frozenset({rich.ticket_id}), frozenset({"presence"})))
        await until(pilot, lambda: "bob is writing a reply" in screen_text(app))
        # Our own presence went to the store at once: another console sees us.
        rows = await other_service.presence(rich.ticket_id)
        assert ("alice", "Alice Agent", rich.ticket_id, "viewing") in rows
        await pilot.press("r")
        await until(pilot, lambda: screen.presence_mode == "composing")

        async def composing() -> bool:
            return (
                "alice",
                "Alice Agent",
                rich.ticket_id,
                "composing",
            ) in await other_service.presence(rich.ticket_id)

        for _ in range(100):
            if await composing():
                break
            await pilot.pause(0.02)
        assert await composing()


# --------------------------------------------------------------------------- palette
async def test_every_ticket_action_is_a_palette_command(
    seeded_url: str, rich: Rich, make_app: AppFactory
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        names = {c.name for c in binding_commands(screen, "Ticket")}
        for action in (
            "Reply",
            "Note",
            "Assign",
            "Status",
            "Priority",
            "Impact",
            "Urgency",
            "Tags",
            "Merge",
            "Postpone",
            "Pipe",
            "Save attachment",
            "Quotes",
            "Customer",
            "Back",
        ):
            assert f"Ticket: {action}" in names, action
        ids = {b.binding.id for b in screen.active_bindings.values() if b.binding.id}
        assert {"ticket.reply", "ticket.pipe", "ticket.quotes", "thread.down"} <= ids


# --------------------------------------------------------------------------- pipe
async def test_pipe_passes_fields_by_environment_and_json_never_the_command(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    subject = f'Printer "jam"; touch {marker} $(touch {marker}) `touch {marker}` \' end'
    await other_service.update_ticket(MAIL, rich.printer, subject=subject)
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("vertical_line")
        await choose(pilot, app, "The ticket")
        await answer(pilot, app, 'printf "%s|" "$HELPDESK_TICKET_SUBJECT"; wc -c')
        await until(pilot, lambda: isinstance(app.screen, PipeResultScreen), timeout=10)
        result = current(app).result
        assert result.returncode == 0
        printed, _, count = result.stdout.partition("|")
        assert printed == subject
        assert int(count.strip()) > 100  # the JSON on stdin
        await pilot.press("k")
        await until(
            pilot,
            lambda: any(
                i.kind == "note" and "Output of" in i.body for i in current(app).article_infos
            ),
        )
    assert not marker.exists()
    detail = await other_service.ticket_detail(rich.printer)
    note = detail.articles[-1]
    assert note.kind == "note" and subject in note.body_text


async def test_pipe_an_attachment(seeded_url: str, rich: Rich, make_app: AppFactory) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("vertical_line")
        await choose(pilot, app, "escape.txt")
        await answer(pilot, app, 'printf "%s:" "$HELPDESK_ATTACHMENT_NAME"; cat')
        await until(pilot, lambda: isinstance(app.screen, PipeResultScreen), timeout=10)
        assert current(app).result.stdout == "escape.txt:not outside"
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, TicketScreen)


async def test_run_pipe_gets_data_only_through_stdin_and_env(
    seeded_url: str, rich: Rich, other_service: Service
) -> None:
    detail = await other_service.ticket_detail(rich.printer)
    env = ticket_env(detail)
    assert env["HELPDESK_TICKET_NUMBER"] == str(rich.printer)
    assert env["HELPDESK_TICKET_TAGS"] == "hardware,printer"
    result = await run_pipe('cat; echo; printf %s "$X"', b"in", {**os.environ, "X": "$(id)"})
    assert result.stdout == "in\n$(id)"


# --------------------------------------------------------------------------- attachments
async def test_attachment_save_stays_in_the_folder_and_never_overwrites_silently(
    seeded_url: str, rich: Rich, make_app: AppFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_ticket(app, pilot, rich.printer)
        await pilot.press("S")
        await choose(pilot, app, "escape.txt")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        assert "Saved as escape.txt" in screen_text(app)
        await answer(pilot, app, str(folder))
        await until(pilot, lambda: (folder / "escape.txt").exists())
        assert (folder / "escape.txt").read_bytes() == b"not outside"
        assert not (tmp_path / "escape.txt").exists()
        assert not (tmp_path.parent / "escape.txt").exists()
        (folder / "escape.txt").write_text("mine")
        await pilot.press("S")
        await choose(pilot, app, "escape.txt")
        await answer(pilot, app, str(folder))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")  # No
        await pilot.pause(0.1)
        assert (folder / "escape.txt").read_text() == "mine"
        await pilot.press("S")
        await choose(pilot, app, "escape.txt")
        await answer(pilot, app, str(folder))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: (folder / "escape.txt").read_bytes() == b"not outside")
    assert sorted(p.name for p in folder.iterdir()) == ["escape.txt"]


def test_safe_filename_drops_paths_controls_and_hidden_dots() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("..\\..\\boot.ini") == "boot.ini"
    assert safe_filename("/abs/path.txt") == "path.txt"
    assert safe_filename("..") == "attachment"
    assert safe_filename(".bashrc") == "bashrc"
    assert safe_filename("report\u202etxt.exe") == "reporttxt.exe"
    assert safe_filename("a\x1b]0;x\x07b.pdf") == "a ]0;x b.pdf"
    assert safe_filename("CON.txt") == "_CON.txt"
    assert safe_filename('we:ird*na?me".txt') == "we_ird_na_me_.txt"
    long = safe_filename("x" * 500 + ".pdf")
    assert len(long) <= 200 and long.endswith(".pdf")


def test_save_attachment_refuses_symlinks_and_existing_files(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "link.txt").symlink_to(outside)
    with pytest.raises(SaveError):
        save_attachment(folder, "link.txt", b"x", overwrite=True)
    assert outside.read_text() == "keep"
    saved = save_attachment(folder, "../../a.txt", b"1")
    assert saved == folder.resolve() / "a.txt"
    with pytest.raises(FileExistsError):
        save_attachment(folder, "a.txt", b"2")
    assert saved.read_bytes() == b"1"
    with pytest.raises(SaveError):
        save_attachment(tmp_path / "missing", "a.txt", b"2")


# --------------------------------------------------------------------------- parsing
def test_parse_postpone() -> None:
    now = NOW
    assert parse_postpone("2d", now) == now + timedelta(days=2)
    assert parse_postpone("3h", now) == now + timedelta(hours=3)
    assert parse_postpone("90min", now) == now + timedelta(minutes=90)
    assert parse_postpone("1w", now) == now + timedelta(weeks=1)
    assert parse_postpone("2026-12-01T09:00+00:00", now) == now.replace(month=12, day=1)
    local = parse_postpone("2026-12-01T09:00", now)
    assert local.tzinfo is not None
    for bad in ("2m", "soon", "2026-01-01T00:00+00:00", "0d"):
        with pytest.raises(ValueError):
            parse_postpone(bad, now)


def test_parse_tags_and_numbers_and_cc() -> None:
    assert parse_tags("a b c", ["a", "x"]) == (["b", "c"], ["x"])
    assert parse_tags("+c -a", ["a", "b"]) == (["c"], ["a"])
    assert parse_tags("", ["a"]) == ([], ["a"])
    assert parse_ticket_number("#12") == 12
    with pytest.raises(ValueError):
        parse_ticket_number("twelve")
    assert check_cc("a@b.example, c@d.example") == ["a@b.example", "c@d.example"]
    with pytest.raises(ValueError):
        check_cc("a@b.example\r\nBcc: x@y.example")


async def test_a_missing_ticket_says_so_and_goes_back(
    seeded_url: str, numbers: dict[str, int], make_app: AppFactory
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: type(app.screen).__name__ == "QueueScreen")
        await app.push_screen(TicketScreen(999_999))
        await until(pilot, lambda: "no ticket #999999" in notifications(app))
        await until(pilot, lambda: type(app.screen).__name__ == "QueueScreen")
