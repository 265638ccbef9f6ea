"""The service layer: lifecycle, priority matrix, audit, conflicts, merge, drafts (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from store.models import ArticleKind, AuditEvent, Event, Level, Outbox, Priority, Status
from store.service import (
    Actor,
    ArticleInput,
    AttachmentInput,
    ConflictError,
    NotFoundError,
    Service,
    ValidationError,
)
from tests.conftest import FakeClock

ALICE = Actor("agent", "alice", 1)


async def _setup(service: Service) -> Actor:
    await service.add_queue("Support", ["support@example.com"])
    agent = await service.add_agent("alice", "Alice Agent", "alice@example.com", queues=["Support"])
    await service.add_agent("bob", "Bob Agent")
    return Actor("agent", "alice", agent.id)


async def _ticket(service: Service, subject: str = "Printer jam", **kw: object) -> int:
    t = await service.create_ticket(
        Actor("mail", "sync"),
        subject=subject,
        customer_email="Carol@Acme.com",
        customer_name="Carol",
        article=ArticleInput(
            kind=ArticleKind.EMAIL_IN, body="The printer is jammed again.", message_id="m1@acme"
        ),
        queue="Support",
        **kw,  # type: ignore[arg-type]
    )
    return t.number


async def test_create_ticket_numbers_customer_and_audit(service: Service) -> None:
    await _setup(service)
    n1 = await _ticket(service)
    n2 = await _ticket(service, "Second")
    assert n2 == n1 + 1
    detail = await service.ticket_detail(n1)
    t = detail.ticket
    assert t.status == "new"
    assert t.customer is not None and t.customer.email == "carol@acme.com"
    assert t.queue is not None and t.queue.name == "Support"
    assert [a.kind for a in detail.articles] == ["email_in"]
    assert detail.audit[0].action == "created"
    assert t.priority == Priority.NORMAL  # medium x medium by the default matrix


async def test_every_transition_allowed_or_refused(service: Service) -> None:
    actor = await _setup(service)
    from store.lifecycle import TRANSITIONS

    for src, targets in TRANSITIONS.items():
        if src in (Status.NEW, Status.MERGED):
            continue
        for dst in Status:
            if dst in (src, Status.MERGED, Status.NEW):
                continue
            n = await _ticket(service, f"{src}->{dst}")
            # bring the ticket into `src`
            if src is Status.POSTPONED:
                await service.update_ticket(
                    actor, n, postpone_until=service.clock() + timedelta(days=1)
                )
            elif src is Status.CLOSED:
                await service.update_ticket(actor, n, status=Status.CLOSED)
            elif src is Status.SOLVED:
                await service.update_ticket(actor, n, status=Status.SOLVED)
            else:
                await service.update_ticket(actor, n, status=src)
            kwargs: dict[str, object] = {"status": dst}
            if dst is Status.POSTPONED:
                kwargs = {"postpone_until": service.clock() + timedelta(hours=2)}
            if dst in targets:
                t = await service.update_ticket(actor, n, **kwargs)  # type: ignore[arg-type]
                assert t.status == dst.value
            else:
                with pytest.raises(ValidationError, match="cannot change status"):
                    await service.update_ticket(actor, n, **kwargs)  # type: ignore[arg-type]
                assert (await service.get_ticket(n)).status == src.value


async def test_reply_sets_answered_and_queues_outbound(service: Service) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    art = await service.add_reply(actor, n, "We are on it.")
    t = await service.get_ticket(n)
    assert t.status == "answered"
    assert t.first_response_at is not None
    assert art.delivery_status == "queued"
    assert art.to_addrs == "carol@acme.com"
    assert art.in_reply_to == "m1@acme"
    async with service.db.read() as s:
        ob = (await s.execute(select(Outbox))).scalars().one()
    assert ob.status == "queued" and ob.rcpt_to == ["carol@acme.com"]
    # the agent may choose another status in the review step
    await service.add_reply(actor, n, "Please send a photo.", status=Status.PENDING)
    assert (await service.get_ticket(n)).status == "pending"


async def test_customer_reply_reopens_and_closed_opens_linked(service: Service) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    for status in (Status.ANSWERED, Status.PENDING, Status.SOLVED):
        await service.update_ticket(actor, n, status=status)
        t, _, new = await service.add_customer_message(
            Actor("mail", "sync"),
            n,
            ArticleInput(kind=ArticleKind.EMAIL_IN, body=f"still broken after {status}"),
        )
        assert not new and t.status == "open"
    await service.update_ticket(actor, n, status=Status.CLOSED)
    t, art, new = await service.add_customer_message(
        Actor("mail", "sync"),
        n,
        ArticleInput(kind=ArticleKind.EMAIL_IN, body="and again", subject="Re: Printer jam"),
    )
    assert new and t.number != n
    detail = await service.ticket_detail(t.number)
    assert ("follow-up-of", n) in detail.links
    assert (await service.get_ticket(n)).status == "closed"


async def test_postponed_wakes_on_time_and_on_customer_reply(
    service: Service, clock: FakeClock
) -> None:
    actor = await _setup(service)
    n1 = await _ticket(service)
    n2 = await _ticket(service)
    wake = clock.now + timedelta(days=2)
    t = await service.update_ticket(actor, n1, postpone_until=wake)
    assert t.status == "postponed" and t.postponed_until == wake
    await service.update_ticket(actor, n2, postpone_until=wake)
    clock.advance(days=1)
    assert (await service.tick())["woken"] == []
    await service.add_customer_message(
        Actor("mail", "sync"), n2, ArticleInput(kind=ArticleKind.EMAIL_IN, body="hi?")
    )
    t2 = await service.get_ticket(n2)
    assert t2.status == "open" and t2.postponed_until is None
    clock.advance(days=1, seconds=1)
    assert (await service.tick())["woken"] == [n1]
    t1 = await service.get_ticket(n1)
    assert t1.status == "open" and t1.postponed_until is None
    with pytest.raises(ValidationError, match="future"):
        await service.update_ticket(actor, n1, postpone_until=clock.now - timedelta(minutes=1))


async def test_solved_autocloses_after_quiet_days(service: Service, clock: FakeClock) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    await service.update_ticket(actor, n, status=Status.SOLVED)
    clock.advance(days=6)
    assert (await service.tick())["closed"] == []
    clock.advance(days=1, seconds=1)
    assert (await service.tick())["closed"] == [n]
    assert (await service.get_ticket(n)).status == "closed"


async def test_priority_matrix_derivation_and_override(service: Service) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    t = await service.update_ticket(actor, n, impact=Level.HIGH, urgency=Level.HIGH)
    assert t.priority == Priority.URGENT and t.priority_override_by is None
    t = await service.update_ticket(actor, n, priority=Priority.LOW)
    assert t.priority == Priority.LOW and t.priority_override_by == "agent:alice"
    # while overridden, impact/urgency changes do not move the priority
    t = await service.update_ticket(actor, n, urgency=Level.MEDIUM)
    assert t.priority == Priority.LOW
    t = await service.update_ticket(actor, n, priority="auto")
    assert t.priority == Priority.HIGH and t.priority_override_by is None
    # a custom matrix
    matrix = await service.priority_matrix()
    matrix[(Level.HIGH, Level.MEDIUM)] = Priority.URGENT
    await service.set_priority_matrix(matrix)
    t = await service.update_ticket(actor, n, urgency=Level.LOW)
    t = await service.update_ticket(actor, n, urgency=Level.MEDIUM)
    assert t.priority == Priority.URGENT
    detail = await service.ticket_detail(n)
    assert any(a.action == "override" and a.new_value == "agent:alice" for a in detail.audit)


async def test_conflicting_edit_is_rejected_not_overwritten(service: Service) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    seen = (await service.get_ticket(n)).version
    await service.update_ticket(Actor("agent", "bob", 2), n, assignee="bob", expected_version=seen)
    with pytest.raises(ConflictError, match=f"#{n} was changed by someone else"):
        await service.update_ticket(actor, n, assignee="alice", expected_version=seen)
    t = await service.get_ticket(n)
    assert t.assignee is not None and t.assignee.login == "bob"


async def test_tags_assign_queue_and_audit_accounting(service: Service) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    await service.update_ticket(actor, n, tags_add=["Billing", "vip"], assignee="alice")
    await service.update_ticket(actor, n, tags_remove=["vip"])
    t = await service.get_ticket(n)
    assert [tag.name for tag in t.tags] == ["billing"]
    assert t.assignee is not None and t.assignee.login == "alice"
    with pytest.raises(NotFoundError, match="helpdesk agent add"):
        await service.update_ticket(actor, n, assignee="nobody")
    async with service.db.read() as s:
        audits = (await s.execute(select(func.count()).select_from(AuditEvent))).scalar_one()
        events = (
            await s.execute(
                select(func.count()).select_from(Event).where(Event.ticket_id.is_not(None))
            )
        ).scalar_one()
    assert audits >= 5 and events >= 3


async def test_merge_moves_history(service: Service) -> None:
    actor = await _setup(service)
    a = await _ticket(service, "first")
    b = await _ticket(service, "duplicate")
    await service.add_note(actor, b, "internal remark")
    await service.merge(actor, b, a)
    src = await service.ticket_detail(b)
    dst = await service.ticket_detail(a)
    assert src.ticket.status == "merged" and src.merged_into_number == a
    kinds = [x.kind for x in dst.articles]
    assert kinds.count("email_in") == 2 and "note" in kinds and kinds[-1] == "system"
    with pytest.raises(ValidationError):
        await service.update_ticket(actor, b, status=Status.OPEN)
    # mail to the merged ticket lands in the target
    t, _, _ = await service.add_customer_message(
        Actor("mail", "sync"), b, ArticleInput(kind=ArticleKind.EMAIL_IN, body="more")
    )
    assert t.number == a


async def test_attachments_stored_once_by_hash(service: Service) -> None:
    actor = await _setup(service)
    data = b"%PDF-1.4 fake invoice"
    n = await service.create_ticket(
        actor,
        subject="invoice",
        customer_email="x@y.z",
        article=ArticleInput(
            kind=ArticleKind.EMAIL_IN,
            body="see attached",
            attachments=[AttachmentInput("inv.pdf", data, "application/pdf")],
        ),
    )
    await service.add_customer_message(
        actor,
        n.number,
        ArticleInput(
            kind=ArticleKind.EMAIL_IN,
            body="again",
            attachments=[AttachmentInput("inv-copy.pdf", data, "application/pdf")],
        ),
    )
    detail = await service.ticket_detail(n.number)
    atts = [a for art in detail.articles for a in art.attachments]
    assert [a.filename for a in atts] == ["inv.pdf", "inv-copy.pdf"]
    assert atts[0].sha256 == atts[1].sha256
    assert await service.blob(atts[0].sha256) == data


async def test_drafts_and_presence(service: Service, clock: FakeClock) -> None:
    actor = await _setup(service)
    n = await _ticket(service)
    t = await service.get_ticket(n)
    assert actor.agent_id is not None
    await service.save_draft(actor.agent_id, t.id, "reply", "Dear Carol,")
    await service.save_draft(actor.agent_id, t.id, "reply", "Dear Carol, we")
    d = await service.get_draft(actor.agent_id, t.id, "reply")
    assert d is not None and d.body == "Dear Carol, we"
    await service.touch_presence(actor.agent_id, "s1", t.id, "composing")
    assert await service.presence(t.id) == [("alice", "Alice Agent", t.id, "composing")]
    clock.advance(seconds=31)
    assert await service.presence(t.id) == []


async def test_shared_and_personal_views_and_canned_keep_apart(service: Service) -> None:
    alice = await _setup(service)
    await service.add_view("Mine", "is:active", owner="alice")
    await service.add_view("Mine", "status:new")  # a shared view of the same name
    await service.add_view("Mine", "is:active priority:high", owner="alice")  # replaces hers
    views = {(v.owner_id, v.name): v.query for v in await service.list_views(alice.agent_id)}
    assert views == {
        (alice.agent_id, "Mine"): "is:active priority:high",
        (None, "Mine"): "status:new",
    }
    bob = await service.agent("bob")
    assert [(v.owner_id, v.query) for v in await service.list_views(bob.id)] == [
        (None, "status:new")
    ]

    await service.add_canned("hello", "Hi!")
    await service.add_canned("hello", "Hi from Alice", owner="alice")
    await service.add_canned("hello", "Hello!")  # replaces the shared one only
    canned = {(c.owner_id, c.body) for c in await service.list_canned(alice.agent_id)}
    assert canned == {(None, "Hello!"), (alice.agent_id, "Hi from Alice")}


async def test_status_labels_renamed(service: Service) -> None:
    await service.set_status_label(Status.PENDING, "Waiting on you")
    await service.set_status_label(Status.PENDING, "Gaida atbildi", language="lv")
    assert (await service.status_labels())["pending"] == "Waiting on you"
    assert (await service.status_labels("lv"))["pending"] == "Gaida atbildi"
    assert (await service.status_labels())["open"] == "Open"


async def test_update_agent_changes_only_given_fields_and_audits(service: Service) -> None:
    await _setup(service)
    await service.add_queue("Billing")
    await service.update_agent(
        "alice", languages=["lv", "en"], skills=["printers"], queues=["Billing", "Support"]
    )
    alice = await service.agent("alice")
    assert (alice.languages, alice.skills) == (["lv", "en"], ["printers"])
    assert sorted(q.name for q in alice.queues) == ["Billing", "Support"]
    assert (alice.name, alice.email, alice.role) == ("Alice Agent", "alice@example.com", "agent")

    await service.update_agent("alice", name="Alice A.", admin=True, queues=["Billing"])
    alice = await service.agent("alice")
    assert (alice.name, alice.role) == ("Alice A.", "admin")
    assert [q.name for q in alice.queues] == ["Billing"]
    assert alice.skills == ["printers"], "skills not given, so unchanged"
    assert (await service.agent("bob")).languages == [], "other agents untouched"

    async with service.db.read() as s:
        audited = (
            await s.execute(
                select(AuditEvent.field, AuditEvent.old_value, AuditEvent.new_value)
                .where(AuditEvent.action == "agent-updated")
                .order_by(AuditEvent.id)
            )
        ).all()
    assert ("agent.skills", "alice: ", "alice: printers") in audited
    assert ("agent.role", "alice: agent", "alice: admin") in audited
    assert ("agent.queues", "alice: Billing,Support", "alice: Billing") in audited
    before = len(audited)
    await service.update_agent("alice", name="Alice A.")  # no change, nothing audited
    async with service.db.read() as s:
        count = (
            await s.execute(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "agent-updated")
            )
        ).scalar_one()
    assert count == before

    with pytest.raises(NotFoundError):
        await service.update_agent("nobody", name="X")
    with pytest.raises(NotFoundError):
        await service.update_agent("alice", queues=["Nowhere"])
    assert [q.name for q in (await service.agent("alice")).queues] == ["Billing"]
