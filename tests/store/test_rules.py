"""Rules and assignment: routing, round robin, least-loaded, skills, escalation, loop safety."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from store import rules, sla
from store.models import (
    Article,
    ArticleKind,
    AuditEvent,
    Event,
    Outbox,
    Queue,
    Status,
    Ticket,
)
from store.query import QueryContext, QueryError, compile_where, parse
from store.rules_models import Rule, RuleRun
from store.service import MAIL, SYSTEM, Actor, ArticleInput, Service
from store.sla_models import TicketSla
from tests.conftest import FakeClock


def _has_sla_key() -> bool:
    try:
        compile_where(parse("sla:warning"), QueryContext(None, FakeClock()()))
    except (QueryError, ValueError):
        return False
    return True


async def _ticket(
    service: Service,
    email: str = "c@example.com",
    *,
    name: str = "",
    language: str | None = None,
    queue: str | None = None,
    tags: tuple[str, ...] = (),
    subject: str = "Help",
) -> Ticket:
    return await service.create_ticket(
        MAIL,
        subject=subject,
        customer_email=email,
        customer_name=name,
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="please help", language=language),
        language=language,
        queue=queue,
        tags=tags,
    )


@contextmanager
def _hook_calls(service: Service) -> Iterator[list[tuple[str, int, list[str]]]]:
    """Record the service's after-commit rule hook: (event, ticket, lines run_rules returned).

    Only observes: the hook itself runs unchanged.
    """
    calls: list[tuple[str, int, list[str]]] = []
    hook = service._after_commit

    async def spy(event: str, number: int, actor: Actor) -> list[str]:
        lines = await hook(event, number, actor)
        if actor.kind != "rule":
            calls.append((event, number, lines))
        return lines

    service._after_commit = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del service._after_commit  # back to the class's method


def _fired(calls: list[tuple[str, int, list[str]]], event: str, number: int) -> list[str]:
    """The lines of the one hook call for `event` on ticket `number`."""
    lines = [out for ev, n, out in calls if (ev, n) == (event, number)]
    assert len(lines) == 1, f"hook calls {calls}, expected one {event!r} on #{number}"
    return lines[0]


async def _runs(service: Service, number: int) -> list[str]:
    """Names of the rules recorded as fired on the ticket (`RuleRun`), in firing order."""
    async with service.db.read() as session:
        rows = await session.execute(
            select(Rule.name)
            .join(RuleRun, RuleRun.rule_id == Rule.id)
            .join(Ticket, Ticket.id == RuleRun.ticket_id)
            .where(Ticket.number == number)
            .order_by(RuleRun.id)
        )
        return list(rows.scalars())


def _names(lines: list[str]) -> list[str]:
    """``"#12 route-latvian: set queue=Baltics"`` -> ``"route-latvian"``."""
    return [line.split(":", 1)[0].split(" ", 1)[1] for line in lines]


async def _created(service: Service, **kw: Any) -> tuple[Ticket, list[str]]:
    """Create a ticket; the service runs the 'created' rules after the commit. Returns the
    ticket as the rules left it and the lines of the rules that fired."""
    with _hook_calls(service) as calls:
        t = await _ticket(service, **kw)
    fired = _fired(calls, "created", t.number)
    assert _names(fired) == await _runs(service, t.number)
    # running them again (a retried hook) is a no-op: each rule fires once per ticket and event
    assert await rules.run_rules(service, "created", t.number, service.clock()) == []
    return await service.get_ticket(t.number), fired


async def _audit_actors(service: Service, number: int) -> list[tuple[str, str, str | None]]:
    detail = await service.ticket_detail(number)
    return [(a.actor, a.action, a.new_value) for a in detail.audit]


# --- routing ---------------------------------------------------------------------------


async def test_routing_by_language(service: Service) -> None:
    await service.add_queue("Baltics")
    await rules.add_rule(
        service, "route-latvian", event="created", condition="lang:lv", actions=["queue=Baltics"]
    )
    t, fired = await _created(service, language="lv")
    assert t.queue is not None and t.queue.name == "Baltics"
    assert fired and "route-latvian" in fired[0]
    assert ("rule:route-latvian", "changed", "Baltics") in await _audit_actors(service, t.number)

    other, fired = await _created(service, email="d@example.com", language="de")
    assert other.queue is None and fired == []


async def test_routing_by_domain_sets_priority_and_tag(service: Service) -> None:
    await rules.add_rule(
        service,
        "vip",
        event="created",
        condition="from:@acme.com",
        actions=["priority=high", "tag+=vip"],
    )
    t, _ = await _created(service, email="boss@acme.com")
    assert t.priority_label == "high"
    assert [tag.name for tag in t.tags] == ["vip"]
    assert t.priority_override_by == "rule:vip"
    actors = await _audit_actors(service, t.number)
    assert ("rule:vip", "changed", "high") in actors
    assert ("rule:vip", "tagged", "vip") in actors

    plain, _ = await _created(service, email="x@acme.com.evil.org")
    assert plain.priority_label == "normal" and plain.tags == []


async def test_rule_fires_once_per_event_instance(service: Service) -> None:
    await rules.add_rule(
        service, "note-new", event="created", condition="", actions=["note=Triaged by rule"]
    )
    t, fired = await _created(service)
    assert len(fired) == 1
    # the hook retried (a crash after the commit...): nothing fires twice
    assert await rules.run_rules(service, "created", t.number, service.clock()) == []
    notes = [a for a in (await service.ticket_detail(t.number)).articles if a.kind == "note"]
    assert len(notes) == 1


async def test_customer_replied_rule(service: Service, clock: FakeClock) -> None:
    await rules.add_rule(
        service,
        "reply-bump",
        event="customer_replied",
        condition="status:open",
        actions=["tag+=followup"],
    )
    t = await _ticket(service)
    agent = Actor("agent", "x")
    await service.update_ticket(agent, t.number, status=Status.PENDING)
    clock.advance(minutes=5)
    with _hook_calls(service) as calls:
        await service.add_customer_message(
            MAIL, t.number, ArticleInput(kind=ArticleKind.EMAIL_IN, body="any news?")
        )
    # the reply reopened the ticket, then the hook ran the rule against the open ticket
    fired = _fired(calls, "customer_replied", t.number)
    assert len(fired) == 1 and "reply-bump" in fired[0]
    after = await service.get_ticket(t.number)
    assert after.status == Status.OPEN.value
    assert [tag.name for tag in after.tags] == ["followup"]
    assert ("rule:reply-bump", "tagged", "followup") in await _audit_actors(service, t.number)
    # a retried hook fires nothing
    assert await rules.run_rules(service, "customer_replied", t.number, clock.now) == []
    # a second reply is a new event instance
    await service.update_ticket(agent, t.number, tags_remove=["followup"])
    assert (await service.get_ticket(t.number)).tags == []
    with _hook_calls(service) as calls:
        await service.add_customer_message(
            MAIL, t.number, ArticleInput(kind=ArticleKind.EMAIL_IN, body="hello?")
        )
    assert len(_fired(calls, "customer_replied", t.number)) == 1
    assert [tag.name for tag in (await service.get_ticket(t.number)).tags] == ["followup"]
    actors = await _audit_actors(service, t.number)
    assert actors.count(("rule:reply-bump", "tagged", "followup")) == 2
    assert await rules.run_rules(service, "customer_replied", t.number, clock.now) == []
    assert await _runs(service, t.number) == ["reply-bump", "reply-bump"]


# --- assignment --------------------------------------------------------------------------


async def test_round_robin_is_fair_over_1000_tickets(service: Service) -> None:
    await service.add_queue("Support")
    await service.add_queue("Other")
    for login in ("ann", "ben", "cid"):
        await service.add_agent(login, login.title(), queues=["Support"])
    await service.add_agent("dan", "Dan", queues=["Support"])
    await service.set_agent_active("dan", False)  # inactive: never picked
    await service.add_agent("eve", "Eve", queues=["Other"])  # not in the queue
    await rules.set_assignment(service, "Support", strategy="round_robin")
    await rules.add_rule(
        service,
        "auto-assign",
        event="created",
        condition="queue:Support is:unassigned",
        actions=["assign=auto"],
    )
    backlog, created = 960, 40  # 1,000 tickets in all
    # a backlog that predates the rule, seeded in one batched insert (no hooks ran on it)
    async with service.db.write() as session:
        qid = (await session.execute(select(Queue.id).where(Queue.name == "Support"))).scalar_one()
        now = service.clock()
        await session.execute(
            insert(Ticket),
            [
                {
                    "number": 100_000 + i,
                    "subject": f"t{i}",
                    "queue_id": qid,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(backlog)
            ],
        )
    # the backlog path: one transaction, each assignment a Service.update_ticket
    lines = await rules.assign_backlog(service, "Support", service.clock())
    assert len(lines) == backlog and all(" assigned " in line for line in lines)
    # the rule path: new tickets, each assigned by the 'created' hook, the rotation going on
    with _hook_calls(service) as calls:
        numbers = [
            (await _ticket(service, email=f"c{i}@example.com", queue="Support")).number
            for i in range(created)
        ]
    for n in numbers:
        fired = _fired(calls, "created", n)
        assert len(fired) == 1 and "auto-assign" in fired[0] and "assigned" in fired[0]
    assert await rules.run_rules(service, "created", numbers[-1], service.clock()) == []
    async with service.db.read() as session:
        rows = (
            await session.execute(
                select(Ticket.assignee_id, func.count())
                .where(Ticket.queue_id == qid)
                .group_by(Ticket.assignee_id)
            )
        ).all()
    counts = {aid: n for aid, n in rows}
    assert None not in counts
    assert len(counts) == 3
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == 1000
    assert {(await service.agent(x)).id for x in ("ann", "ben", "cid")} == set(counts)
    detail = await service.ticket_detail(numbers[-1])
    assert any(a.actor == "rule:auto-assign" and a.action == "assigned" for a in detail.audit)


async def test_least_loaded(service: Service) -> None:
    await service.add_queue("Support")
    for login in ("ann", "ben", "cid"):
        await service.add_agent(login, login.title(), queues=["Support"])
    agent = Actor("agent", "admin")
    for _ in range(2):
        t = await _ticket(service, queue="Support")
        await service.update_ticket(agent, t.number, assignee="ann")
    t = await _ticket(service, queue="Support")
    await service.update_ticket(agent, t.number, assignee="cid")
    for _ in range(3):  # solved tickets are not load
        t = await _ticket(service, queue="Support")
        await service.update_ticket(agent, t.number, assignee="ben", status=Status.SOLVED)
    await rules.set_assignment(service, "Support", strategy="least_loaded")
    await rules.add_rule(
        service, "assign", event="created", condition="is:unassigned", actions=["assign=auto"]
    )
    picked = []
    for _ in range(4):
        t, _ = await _created(service, queue="Support")
        assert t.assignee is not None
        picked.append(t.assignee.login)
    # loads ann 2, ben 0, cid 1 -> ben; then ben 1 = cid 1 -> cid (after ben in rotation);
    # then ann 2, ben 1, cid 2 -> ben; then all 2 -> next after ben: cid
    assert picked == ["ben", "cid", "ben", "cid"]


async def test_backlog_batches_write_what_update_ticket_writes(
    service: Service, clock: FakeClock
) -> None:
    """assign_backlog writes set-based per batch; each ticket must end up exactly as
    Service.update_ticket(assignee=...) leaves its twin: priority from the matrix (audited)
    unless overridden, the 'assigned' audit row, version, updated_at, one 'updated' event,
    and the SLA clocks recomputed after the change (a policy on priority:>=high)."""
    await service.add_queue("Support")
    await service.add_queue("Twins")
    for login in ("ann", "ben"):
        await service.add_agent(login, login.title(), queues=["Support"])
    await rules.set_assignment(service, "Support", strategy="round_robin")
    await sla.add_calendar(service.db, "office", timezone="UTC", hours="mon-fri 09:00-17:00")
    await sla.add_policy(
        service.db,
        "high",
        calendar="office",
        condition="priority:>=high",
        targets=sla.parse_targets(first_response="1h", resolution="4h"),
    )
    await sla.add_policy(
        service.db, "rest", calendar="office", targets=sla.parse_targets(resolution="16h")
    )
    # (impact, urgency, priority, override, status); the default matrix: high x high = urgent
    kinds = [
        (2, 2, 1, None, "open"),  # derived priority differs: audited priority change
        (2, 2, 1, "agent:x", "open"),  # overridden: left alone
        (1, 1, 1, None, "new"),
        (0, 0, 3, None, "pending"),  # derived low: urgent -> low, clock paused
        (1, 1, 1, None, "on-hold"),
        (2, 1, 1, None, "answered"),
        (1, 2, 1, None, "open"),
    ]
    async with service.db.write() as session:
        qids = {name: qid for name, qid in (await session.execute(select(Queue.name, Queue.id)))}
        now = clock()
        created = now - timedelta(hours=30)
        await session.execute(
            insert(Ticket),
            [
                {
                    "number": 500 + 100 * twin + i,
                    "subject": f"t{i}",
                    "queue_id": qids["Twins" if twin else "Support"],
                    "impact": impact,
                    "urgency": urgency,
                    "priority": prio,
                    "priority_override_by": override,
                    "status": status,
                    "created_at": created + timedelta(minutes=i),
                    "updated_at": created,
                    "last_customer_at": created + timedelta(minutes=i),
                }
                for twin in (0, 1)
                for i, (impact, urgency, prio, override, status) in enumerate(kinds)
            ],
        )
    clock.advance(minutes=5)
    lines = await rules.assign_backlog(service, "Support", clock(), batch=3)  # 3 transactions
    assert [line.split()[0] for line in lines] == [f"#{500 + i}" for i in range(len(kinds))]
    picked = [line.split()[2] for line in lines]
    assert picked == ["ann", "ben"] * 3 + ["ann"]
    async with service.db.write() as session:  # the twins, one update_ticket each
        for i, login in enumerate(picked):
            await service.update_ticket(SYSTEM, 600 + i, assignee=login, session=session)

    async def snapshot(number: int) -> tuple[Any, ...]:
        async with service.db.read() as session:
            t = (
                (await session.execute(select(Ticket).where(Ticket.number == number)))
                .unique()
                .scalar_one()
            )
            audit = (
                await session.execute(
                    select(
                        AuditEvent.actor,
                        AuditEvent.action,
                        AuditEvent.field,
                        AuditEvent.old_value,
                        AuditEvent.new_value,
                        AuditEvent.created_at,
                    )
                    .where(AuditEvent.ticket_id == t.id)
                    .order_by(AuditEvent.id)
                )
            ).all()
            events = (
                await session.execute(
                    select(Event.kind, Event.actor, Event.created_at).where(Event.ticket_id == t.id)
                )
            ).all()
            row = await session.get(TicketSla, t.id)
            assert row is not None
            clocks = {
                c: getattr(row, c)
                for c in TicketSla.__table__.columns.keys()  # noqa: SIM118
                if c != "ticket_id"
            }
            return (
                t.assignee.login if t.assignee else None,
                t.priority,
                t.version,
                t.updated_at,
                t.next_due_at,
                audit,
                events,
                clocks,
            )

    for i in range(len(kinds)):
        mine, twin = await snapshot(500 + i), await snapshot(600 + i)
        assert mine == twin, f"kind {kinds[i]}"
    first = await snapshot(500)
    assert first[1] == 3 and first[2] == 2  # priority normal -> urgent, version 1 -> 2
    assert [a[1] for a in first[5]] == ["changed", "assigned"]
    assert first[7]["policy_id"] is not None and first[7]["first_response_due"] is not None
    paused = await snapshot(503)
    assert paused[1] == 0 and paused[7]["paused_status"] == "pending"
    # the queue's rotation carried across the batches and was saved
    async with service.db.read() as session:
        q = (await session.execute(select(Queue).where(Queue.name == "Support"))).scalar_one()
    assert q.settings["rr_cursor"] == (await service.agent("ann")).id


async def test_language_and_skill_matching(service: Service, clock: FakeClock) -> None:
    await service.add_queue("Support")
    await service.add_agent("anna", "Anna", queues=["Support"], languages=["lv", "en"])
    await service.add_agent("bob", "Bob", queues=["Support"], languages=["de"])
    await service.add_agent("carl", "Carl", queues=["Support"])  # lists no languages: any
    await service.add_agent("dana", "Dana", queues=["Support"], languages=["lv"], skills=["sap"])
    await rules.set_assignment(service, "Support", strategy="round_robin")
    await rules.add_rule(
        service, "assign", event="created", condition="is:unassigned", actions=["assign=auto"]
    )

    async def who(**kw: Any) -> str | None:
        t, _ = await _created(service, queue="Support", **kw)
        return t.assignee.login if t.assignee else None

    # a Latvian SAP ticket: only Dana speaks Latvian and has the skill
    assert await who(language="lv", tags=("sap",)) == "dana"
    assert await who(language="lv-LV", tags=("sap",)) == "dana"
    # German: Bob or Carl (no languages listed), never Anna or Dana
    german = {await who(language="de") for _ in range(4)}
    assert german == {"bob", "carl"}
    # Latvian without a skill: Anna, Carl, Dana in turn
    latvian = [await who(language="lv") for _ in range(3)]
    assert sorted(x or "" for x in latvian) == ["anna", "carl", "dana"]
    # a tag nobody has as a skill is not a requirement
    assert await who(language="en", tags=("printer",)) in {"anna", "carl"}
    # French: only Carl lists no languages
    assert await who(language="fr") == "carl"

    # presence required: only agents with a fresh console heartbeat
    await rules.set_assignment(service, "Support", require_presence=True)
    bob = await service.agent("bob")
    await service.touch_presence(bob.id, "s1", None)
    assert await who(language="de") == "bob"
    clock.advance(seconds=31)
    t, fired = await _created(service, queue="Support", language="de")
    assert t.assignee is None
    assert "no eligible agent" in fired[0]


async def test_manual_queue_and_explicit_login(service: Service) -> None:
    await service.add_queue("Support")
    await service.add_agent("ann", "Ann", queues=["Support"])
    await rules.add_rule(
        service, "auto", event="created", condition="queue:Support", actions=["assign=auto"]
    )
    t, fired = await _created(service, queue="Support")
    assert t.assignee is None and "by hand" in fired[0]
    await rules.add_rule(
        service, "to-ann", event="created", condition="tag:ann", actions=["assign=ann"]
    )
    t, _ = await _created(service, tags=("ann",))
    assert t.assignee is not None and t.assignee.login == "ann"


# --- escalation (time rules) -----------------------------------------------------------------


async def test_escalation_fires_exactly_once(service: Service, clock: FakeClock) -> None:
    await service.add_queue("Support")
    await service.add_agent("lead", "Lea Lead", "lead@example.com", queues=["Support"])
    await rules.set_assignment(service, "Support", lead="lead")
    if _has_sla_key():
        await sla.add_calendar(service.db, "office", timezone="UTC", hours="mon-fri 09:00-17:00")
        await sla.add_policy(
            service.db,
            "default",
            calendar="office",
            targets=sla.parse_targets(first_response="1h"),
        )
        condition, before, after = "sla:warning", 30, 20  # warning at 80% of 1h: 09:48
    else:
        condition, before, after = "created:>2h is:active", 90, 40
    await rules.add_rule(
        service,
        "escalate",
        event="time",
        condition=condition,
        actions=["priority=urgent", "notify=lead"],
    )
    t = await _ticket(service, queue="Support")
    other = await _ticket(service, email="o@example.com")
    await service.update_ticket(Actor("agent", "x"), other.number, status=Status.SOLVED)

    clock.advance(minutes=before)
    assert await rules.run_time_rules(service, clock.now) == []
    clock.advance(minutes=after)
    fired = await rules.run_time_rules(service, clock.now)
    assert len(fired) == 1 and "notified lead" in fired[0]
    for _ in range(5):
        clock.advance(minutes=1)
        assert await rules.run_time_rules(service, clock.now) == []

    t = await service.get_ticket(t.number)
    assert t.priority_label == "urgent"
    actors = await _audit_actors(service, t.number)
    assert [a for a in actors if a[0] == "rule:escalate"] == [
        ("rule:escalate", "override", "rule:escalate"),
        ("rule:escalate", "changed", "urgent"),
        ("rule:escalate", "notified", "lead"),
    ]
    async with service.db.read() as session:
        notify = (
            await session.execute(
                select(func.count()).select_from(Event).where(Event.kind == "notify")
            )
        ).scalar_one()
        mails = (
            (await session.execute(select(Outbox).where(Outbox.kind == "notification")))
            .scalars()
            .all()
        )
    assert notify == 1
    assert [m.rcpt_to for m in mails] == [["lead@example.com"]]


async def test_time_rule_rearms_when_condition_stops_holding(
    service: Service, clock: FakeClock
) -> None:
    await rules.add_rule(
        service, "stale", event="time", condition="tag:stale", actions=["note=Still stale"]
    )
    t = await _ticket(service, tags=("stale",))
    agent = Actor("agent", "x")
    assert len(await rules.run_time_rules(service, clock.now)) == 1
    assert await rules.run_time_rules(service, clock.now) == []
    await service.update_ticket(agent, t.number, tags_remove=["stale"])
    assert await rules.run_time_rules(service, clock.now) == []
    await service.update_ticket(agent, t.number, tags_add=["stale"])
    assert len(await rules.run_time_rules(service, clock.now)) == 1


# --- loop safety -----------------------------------------------------------------------------


async def test_no_rule_loops(service: Service, clock: FakeClock) -> None:
    await rules.add_rule(
        service, "flip", event="updated", condition="tag:ping", actions=["tag-=ping", "tag+=pong"]
    )
    await rules.add_rule(
        service, "flop", event="updated", condition="tag:pong", actions=["tag-=pong", "tag+=ping"]
    )
    t = await _ticket(service)
    with _hook_calls(service) as calls:
        await service.update_ticket(Actor("agent", "alice"), t.number, tags_add=["ping"])
    assert _names(_fired(calls, "updated", t.number)) == ["flip", "flop"]
    after = await service.get_ticket(t.number)
    assert [tag.name for tag in after.tags] == ["ping"]  # flipped and flopped back, then stop
    actors = await _audit_actors(service, t.number)
    by_rule = Counter(a[0] for a in actors if a[0].startswith("rule:"))
    assert by_rule == {"rule:flip": 2, "rule:flop": 2}
    assert ("rule:flip", "tagged", "pong") in actors
    assert ("rule:flop", "tagged", "ping") in actors
    # the same change seen again (a retried hook) fires nothing
    assert await rules.run_rules(service, "updated", t.number, clock.now) == []
    async with service.db.read() as session:
        runs = (await session.execute(select(func.count()).select_from(RuleRun))).scalar_one()
    assert runs == 2


async def test_created_changes_run_updated_rules_once(service: Service) -> None:
    await rules.add_rule(
        service, "tag-vip", event="created", condition="from:@acme.com", actions=["tag+=vip"]
    )
    await rules.add_rule(
        service,
        "vip-note",
        event="updated",
        condition="tag:vip",
        actions=["note=VIP customer", "priority=high"],
    )
    t, fired = await _created(service, email="a@acme.com")
    assert [f.split(":")[0] for f in fired] == [f"#{t.number} tag-vip", f"#{t.number} vip-note"]
    notes = [a for a in (await service.ticket_detail(t.number)).articles if a.kind == "note"]
    assert len(notes) == 1
    assert t.priority_label == "high"


# --- automatic mail ---------------------------------------------------------------------------


async def test_apply_canned_queues_an_automatic_mail(service: Service) -> None:
    await service.add_queue("Support", ["support@help.example"])
    await service.add_canned("welcome", "Hello {{customer.first_name}}, we got #{{ticket.number}}.")
    await rules.add_rule(
        service, "ack", event="created", condition="queue:Support", actions=["canned=welcome"]
    )
    t, fired = await _created(service, email="anna@x.lv", name="Anna Berzina", queue="Support")
    assert "queued to anna@x.lv" in fired[0]
    async with service.db.read() as session:
        ob = (await session.execute(select(Outbox))).scalars().one()
        art = (
            (await session.execute(select(Article).where(Article.id == ob.article_id)))
            .unique()
            .scalar_one()
        )
    assert ob.kind == "ack" and ob.rcpt_to == ["anna@x.lv"] and ob.status == "queued"
    assert art.kind == "email_out" and art.meta["rule"] == "ack"
    assert art.body_text == f"Hello Anna, we got #{t.number}."
    assert art.message_id and art.message_id.endswith("@help.example")
    assert ("rule:ack", "auto-replied", f"article {art.id} (welcome)") in await _audit_actors(
        service, t.number
    )
    # no name: the variable stays unfilled, and an automatic mail is never sent half-filled
    _, fired = await _created(service, email="nobody@x.lv", queue="Support")
    assert "unfilled variables customer.first_name" in fired[0]
    # never to robots, nor in answer to automatic mail (RFC 3834)
    _, fired = await _created(service, email="noreply@x.lv", name="Robot", queue="Support")
    assert "no address that takes replies" in fired[0]
    with _hook_calls(service) as calls:
        auto = await service.create_ticket(
            MAIL,
            subject="Out of office",
            customer_email="away@x.lv",
            customer_name="Away Person",
            queue="Support",
            article=ArticleInput(
                kind=ArticleKind.EMAIL_IN, body="I am away", meta={"auto": True, "reason": "ooo"}
            ),
        )
    fired = _fired(calls, "created", auto.number)
    assert "automatic (ooo)" in fired[0]
    assert await rules.run_rules(service, "created", auto.number, service.clock()) == []
    async with service.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Outbox))).scalar_one() == 1


# --- management and dry run -----------------------------------------------------------------


async def test_add_list_disable_and_validation(service: Service) -> None:
    await service.add_queue("Baltics")
    with pytest.raises(rules.RuleError, match="condition"):
        await rules.add_rule(service, "bad", event="created", condition="lang:", actions=["tag+=x"])
    with pytest.raises(rules.RuleError, match="no queue"):
        await rules.add_rule(service, "bad", event="created", actions=["queue=Nowhere"])
    with pytest.raises(rules.RuleError, match="unknown event"):
        await rules.add_rule(service, "bad", event="deleted", actions=["tag+=x"])
    with pytest.raises(rules.RuleError, match="unknown priority"):
        await rules.add_rule(service, "bad", event="created", actions=["priority=asap"])
    with pytest.raises(rules.RuleError, match="cannot set the status"):
        await rules.add_rule(service, "bad", event="created", actions=["status=postponed"])
    a = await rules.add_rule(
        service, "lv", event="created", condition="lang:lv", actions=["queue=Baltics"]
    )
    b = await rules.add_rule(
        service, "esc", event="time", condition="priority:urgent", actions=["notify=lead"]
    )
    with pytest.raises(rules.RuleError, match="exists already"):
        await rules.add_rule(service, "lv", event="created", actions=["tag+=x"])
    assert [r.name for r in await rules.list_rules(service)] == ["lv", "esc"]
    assert a.actions == [{"type": "set_queue", "value": "Baltics"}]
    assert b.actions == [{"type": "notify", "value": "lead", "mail": True}]
    await rules.disable_rule(service, "lv")
    assert [r.name for r in await rules.list_rules(service, include_disabled=False)] == ["esc"]
    t, fired = await _created(service, language="lv")
    assert t.queue is None and fired == []
    await rules.enable_rule(service, "lv")
    t, fired = await _created(service, language="lv")
    assert t.queue is not None


def test_parse_action() -> None:
    assert rules.parse_action("tag+=vip, urgent") == {
        "type": "add_tags",
        "value": ["vip", "urgent"],
    }
    assert rules.parse_action("tag-=spam") == {"type": "remove_tags", "value": ["spam"]}
    assert rules.parse_action('note="Call them back"') == {
        "type": "add_note",
        "value": "Call them back",
    }
    assert rules.parse_action("canned=update:notification") == {
        "type": "apply_canned",
        "value": "update",
        "kind": "notification",
    }
    assert rules.parse_action("notify=alice:nomail") == {
        "type": "notify",
        "value": "alice",
        "mail": False,
    }
    assert rules.parse_action("assign=auto") == {"type": "assign", "value": "auto"}
    with pytest.raises(rules.RuleError):
        rules.parse_action("explode=now")


async def test_test_rule_is_a_dry_run(service: Service) -> None:
    await service.add_queue("Baltics")
    await service.add_agent("anna", "Anna", queues=["Baltics"], languages=["lv"])
    await rules.set_assignment(service, "Baltics", strategy="round_robin")
    # tickets from before the rules existed (the hook ran no rules on them)
    t = await _ticket(service, language="lv", queue="Baltics")
    plain = await _ticket(service, email="d@example.com", language="de")
    await rules.add_rule(
        service,
        "lv",
        event="created",
        condition="lang:lv",
        actions=["queue=Baltics", "tag+=baltic", "priority=high"],
    )
    await rules.add_rule(
        service, "assign", event="created", condition="queue:Baltics", actions=["assign=auto"]
    )

    out = await rules.test_rule(service, f"#{t.number}")
    assert [(r.rule, r.changes) for r in out] == [
        ("lv", ["tag +baltic", "priority: normal -> high"]),
        ("assign", ["assignee: - -> anna (round robin)"]),
    ]
    out = await rules.test_rule(service, "lv")  # a rule's name: tickets its condition matches
    assert [r.ticket for r in out] == [t.number]
    out = await rules.test_rule(service, "lang:de")  # a query: the tickets, no rule matching
    assert [(r.ticket, r.rule) for r in out] == [(plain.number, None)]
    # nothing was written
    after = await service.get_ticket(t.number)
    assert after.assignee is None and after.tags == [] and after.version == t.version
    async with service.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(RuleRun))).scalar_one() == 0
        audit = (
            await session.execute(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.actor.startswith("rule:"))
            )
        ).scalar_one()
    assert audit == 0


async def test_time_rules_skip_fired_tickets_in_sql(service: Service, clock: FakeClock) -> None:
    await rules.add_rule(
        service, "old", event="time", condition="created:>1h is:active", actions=["tag+=old"]
    )
    numbers = [(await _ticket(service, email=f"c{i}@example.com")).number for i in range(7)]
    clock.advance(hours=2)
    fired = await rules.run_time_rules(service, clock.now, batch=3)  # several keyset batches
    assert len(fired) == 7
    assert await rules.run_time_rules(service, clock.now, batch=3) == []
    for n in numbers:
        assert [tag.name for tag in (await service.get_ticket(n)).tags] == ["old"]
    # a ticket created later is picked up on its own
    late = await _ticket(service, email="late@example.com")
    clock.advance(hours=2)
    fired = await rules.run_time_rules(service, clock.now)
    assert len(fired) == 1 and fired[0].startswith(f"#{late.number} ")
