"""Writing on a ticket: canned responses, the review step, drafts, newer-entry warnings, editor."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Select

from helpdesk_tui.editor import EditorError, editor_command
from helpdesk_tui.screens.canned import CannedItem, CannedScreen, search_canned
from helpdesk_tui.screens.compose import DraftOfferScreen, ReviewScreen
from helpdesk_tui.screens.confirm import ConfirmScreen
from helpdesk_tui.screens.ticket import TicketScreen
from store.models import ArticleKind, Status
from store.service import MAIL, Actor, ArticleInput, Service
from tests.conftest import FakeClock
from tests.tui.conftest import AppFactory, screen_text
from tests.tui.ticket_fixtures import Rich, enrich, notifications, open_ticket, until


@pytest.fixture
async def rich(seeded_url: str, clock: FakeClock, numbers: dict[str, int]) -> Rich:
    return await enrich(seeded_url, clock, numbers)


async def start(app: Any, pilot: Any, rich: Rich, key: str = "r") -> TicketScreen:
    screen = await open_ticket(app, pilot, rich.printer)
    await pilot.press(key)
    await until(pilot, lambda: screen.composing and screen.composer.text_area.has_focus)
    return screen


async def type_text(pilot: Any, text: str) -> None:
    for ch in text:
        await pilot.press({" ": "space", "\n": "enter", ".": "full_stop", ",": "comma"}.get(ch, ch))


async def canned(pilot: Any, app: Any, query: str) -> None:
    await pilot.press("ctrl+t")
    await until(pilot, lambda: isinstance(app.screen, CannedScreen))
    app.screen.query_one(Input).value = query
    await pilot.pause()
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(app.screen, CannedScreen))


# --------------------------------------------------------------------------- replies
async def test_reply_with_a_canned_response_through_the_review_step(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await canned(pilot, app, "restrat printr")  # typos forgiven
        body = screen.composer.text
        assert body.startswith("Hi Carol,")
        assert f"ticket #{rich.printer} stays open" in body
        assert body.endswith("Best,\nAlice Agent")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        review = app.screen
        text = screen_text(app)
        assert "Review reply on #1001" in text
        assert "carol@acme.com" in text
        assert review.query_one(Select).value is Status.ANSWERED
        assert "INTERNAL NOTE" not in text
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not screen.composing)
        await until(
            pilot,
            lambda: screen.header_info is not None and screen.header_info.status == "answered",
        )
    detail = await other_service.ticket_detail(rich.printer)
    reply = detail.articles[-1]
    assert reply.kind == "email_out" and reply.delivery_status == "queued"
    assert reply.body_text == body and reply.to_addrs == "carol@acme.com"
    assert detail.ticket.status == "answered"
    alice = await other_service.agent("alice")
    assert await other_service.get_draft(alice.id, rich.ticket_id, "reply") is None


async def test_the_review_step_lets_the_agent_choose_the_status_and_cc(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await type_text(pilot, "Please send a photo of the display.")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        app.screen.query_one(Select).value = Status.PENDING
        app.screen.query_one("#review-cc", Input).value = "boss@acme.com"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not screen.composing)
    detail = await other_service.ticket_detail(rich.printer)
    assert detail.ticket.status == "pending"
    assert detail.articles[-1].cc_addrs == "boss@acme.com"


async def test_unknown_variables_are_flagged_and_block_sending(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: isinstance(app.screen, CannedScreen))
        app.screen.query_one(Input).value = "escalation"
        await pilot.pause()
        assert "unknown variables: manager.name" in screen_text(app)
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, CannedScreen))
        assert "⟦manager.name⟧" in screen.composer.text
        assert "{{" not in screen.composer.text
        assert "manager.name" in notifications(app)
        assert "Fill in before sending: ⟦manager.name⟧" in screen_text(app)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "Unresolved variables" in notifications(app))
        assert not isinstance(app.screen, ReviewScreen)
        # The agent resolves it; now the review step opens.
        area = screen.composer.text_area
        area.text = area.text.replace("⟦manager.name⟧", "Our manager")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        await pilot.press("escape")  # edit: back to the text, nothing sent
        await until(pilot, lambda: not isinstance(app.screen, ReviewScreen))
        assert screen.composing
    detail = await other_service.ticket_detail(rich.printer)
    assert (
        detail.articles[-1].kind != "email_out"
        or "Our manager" not in detail.articles[-1].body_text
    )


async def test_internal_note_says_it_is_not_sent(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich, key="n")
        assert "INTERNAL NOTE" in screen_text(app)
        await type_text(pilot, "Called her, printer fixed.")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        text = screen_text(app)
        assert "internal note — not sent to the customer" in text.lower()
        assert "carol@acme.com" not in text.split("Review")[1]
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not screen.composing)
    detail = await other_service.ticket_detail(rich.printer)
    note = detail.articles[-1]
    assert note.kind == "note" and note.body_text == "Called her, printer fixed."
    assert detail.ticket.status == "open"  # a note leaves the status alone


async def test_discard_in_review_asks_and_removes_the_draft(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await type_text(pilot, "never mind")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        await pilot.press("ctrl+x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not screen.composing)
    alice = await other_service.agent("alice")
    assert await other_service.get_draft(alice.id, rich.ticket_id, "reply") is None
    detail = await other_service.ticket_detail(rich.printer)
    assert all("never mind" not in a.body_text for a in detail.articles)


# --------------------------------------------------------------------------- drafts
async def test_draft_survives_a_killed_console_and_is_offered_on_reopen(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    alice = await other_service.agent("alice")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(app, pilot, rich)
        await type_text(pilot, "Half-written answer")
        # Saved continuously (debounced), not only when leaving.
        for _ in range(150):
            draft = await other_service.get_draft(alice.id, rich.ticket_id, "reply")
            if draft is not None and draft.body == "Half-written answer":
                break
            await pilot.pause(0.02)
        assert draft is not None and draft.body == "Half-written answer"
        assert draft.base_article_id == rich.last_article_id
        await type_text(pilot, " and more")
        app.exit()  # the SSH connection drops
    draft = await other_service.get_draft(alice.id, rich.ticket_id, "reply")
    assert draft is not None and draft.body == "Half-written answer and more"

    app2 = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app2.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app2, pilot, rich.printer)
        await until(pilot, lambda: isinstance(app2.screen, DraftOfferScreen))
        # The dialog is pushed before it is painted: wait for its text, not just the screen.
        await until(pilot, lambda: "unsent reply" in screen_text(app2))
        assert "Half-written answer and more" in screen_text(app2)
        await pilot.press("r")
        await until(pilot, lambda: screen.composing)
        assert screen.composer.text == "Half-written answer and more"
        assert screen.composer.base_article_id == rich.last_article_id


async def test_draft_offer_can_discard(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    alice = await other_service.agent("alice")
    await other_service.save_draft(alice.id, rich.ticket_id, "note", "old note", rich.note_id)
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_ticket(app, pilot, rich.printer)
        await until(pilot, lambda: isinstance(app.screen, DraftOfferScreen))
        await until(pilot, lambda: "unsent internal note" in screen_text(app))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: app.screen is screen)
        await pilot.pause(0.1)
    assert await other_service.get_draft(alice.id, rich.ticket_id, "note") is None


async def test_escape_closes_the_composer_and_keeps_the_draft(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    alice = await other_service.agent("alice")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await type_text(pilot, "later")
        await pilot.press("escape")
        await until(pilot, lambda: not screen.composing)
        await pilot.pause()
        assert not screen.composer.display
        assert screen.thread.has_focus
        assert screen.presence_mode == "viewing"
        assert isinstance(app.screen, TicketScreen)
        draft = await other_service.get_draft(alice.id, rich.ticket_id, "reply")
        assert draft is not None and draft.body == "later"
        await pilot.press("r")
        await until(pilot, lambda: screen.composing)
        assert screen.composer.text == "later"


# --------------------------------------------------------------------------- teams
async def test_a_reply_added_meanwhile_is_shown_before_sending(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    bob = await other_service.agent("bob")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await type_text(pilot, "My answer")
        await other_service.add_reply(
            Actor("agent", "bob", bob.id),
            rich.printer,
            "Bob here: replaced the fuser, should work now.",
        )
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        text = screen_text(app)
        assert "1 new entry was added while you were writing" in text
        assert "Bob here: replaced the fuser" in text
        await pilot.press("enter")  # focus is on Edit: Enter does not send
        await until(pilot, lambda: not isinstance(app.screen, ReviewScreen))
        assert screen.composing
        detail = await other_service.ticket_detail(rich.printer)
        assert all("My answer" not in a.body_text for a in detail.articles)
        # Seen now: the next review goes straight to sending.
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        assert "new entry" not in screen_text(app)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not screen.composing)
    detail = await other_service.ticket_detail(rich.printer)
    assert detail.articles[-1].body_text == "My answer"


async def test_a_conflict_on_send_keeps_the_text_and_reloads(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await type_text(pilot, "Fixed")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        await other_service.update_ticket(MAIL, rich.printer, tags_add=["late"])
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "Changed by someone else" in notifications(app))
        assert screen.composing and screen.composer.text == "Fixed"
        await until(pilot, lambda: "late" in screen_text(app))


async def test_a_customer_mail_arriving_meanwhile_is_also_shown(
    seeded_url: str, rich: Rich, make_app: AppFactory, other_service: Service
) -> None:
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(app, pilot, rich, key="n")
        await type_text(pilot, "note")
        await other_service.add_customer_message(
            MAIL,
            rich.printer,
            ArticleInput(kind=ArticleKind.EMAIL_IN, body="Never mind, it works now!"),
        )
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        assert "Never mind, it works now!" in screen_text(app)


# --------------------------------------------------------------------------- editor
async def test_external_editor_takes_over_the_text(
    seeded_url: str,
    rich: Rich,
    make_app: AppFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "fake-editor"
    # Appends a line, as `echo >>` does: the file the editor gets must end with a newline.
    script.write_text('#!/bin/sh\necho "written in the editor" >> "$1"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("HELPDESK_EDITOR", str(script))
    monkeypatch.setenv("VISUAL", "/bin/false")
    app = await make_app(seeded_url, follow_changes=False, presence_interval=0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await start(app, pilot, rich)
        await type_text(pilot, "start")
        await pilot.press("ctrl+e")
        await until(pilot, lambda: "written in the editor" in screen.composer.text)
        assert screen.composer.text == "start\nwritten in the editor"
        # `e` works too when the thread has the focus.
        screen.thread.focus()
        await pilot.press("e")
        await until(pilot, lambda: screen.composer.text.count("written in the editor") == 2)
        assert screen.composer.text == "start\nwritten in the editor\nwritten in the editor"


def test_editor_precedence() -> None:
    env = {"HELPDESK_EDITOR": "hx", "VISUAL": "code -w", "EDITOR": "vi"}
    assert editor_command(env) == ["hx"]
    assert editor_command({**env, "HELPDESK_EDITOR": ""}) == ["code", "-w"]
    assert editor_command({"EDITOR": "nano -R"}) == ["nano", "-R"]
    with pytest.raises(EditorError):
        editor_command({"VISUAL": "'unclosed"})


# --------------------------------------------------------------------------- canned search
def test_canned_search_is_fuzzy_over_names_and_bodies() -> None:
    items = [
        CannedItem(1, "Printer: restart steps", "switch it off and on"),
        CannedItem(2, "Refund approved", "your money is on its way"),
        CannedItem(3, "Password reset", "use the reset link"),
    ]
    assert [i.name for i, _ in search_canned("", items)] == [
        "Password reset",
        "Printer: restart steps",
        "Refund approved",
    ]
    assert search_canned("refnd", items)[0][0].id == 2
    assert search_canned("money", items)[0][0].id == 2  # found in the body
    assert search_canned("pasword", items)[0][0].id == 3
    assert search_canned("zzzzqqq", items) == []


def test_ctrl_e_in_the_composer_is_the_editor_not_line_end() -> None:
    from helpdesk_tui.screens.compose import ComposerTextArea

    merged = ComposerTextArea._merge_bindings()
    assert [b.action for b in merged.key_to_bindings["ctrl+e"]] == ["composer('editor')"]
    assert [b.action for b in merged.key_to_bindings["end"]] == ["cursor_line_end"]
