"""Rules (triggers) and assignment: condition (a query) -> actions, applied through the Service.

A rule runs on one event: ``created`` (a new ticket), ``customer_replied`` (a customer's
mail on an existing ticket), ``updated`` (fields changed) or ``time`` (every minute, from
the daemon). Its condition is a query in the store's query language, so any condition can
be tried in the console's filter bar; its actions are a list of objects:

=================  =====================================================================
``set_queue``      ``{"type": "set_queue", "value": "Baltics"}`` (``""``: no queue)
``set_priority``   low / normal / high / urgent (``auto``: back to impact x urgency)
``set_impact``     low / medium / high; ``set_urgency`` likewise
``set_status``     open, pending, on-hold, solved... (not postponed: it needs a wake time)
``add_tags``       ``{"type": "add_tags", "value": ["vip"]}``; ``remove_tags`` likewise
``assign``         a login, ``none``, or ``auto`` (the queue's strategy), ``round_robin``,
                   ``least_loaded``
``apply_canned``   a shared canned response sent to the customer as an automatic mail
                   (``Auto-Submitted: auto-replied``; ``"kind": "notification"`` for
                   ``auto-generated``)
``add_note``       an internal note
``notify``         an agent's login, ``lead`` (the queue's ``settings["lead"]``) or
                   ``assignee``: a feed event of kind ``notify``, an audit line and, if
                   the agent has an address and ``"mail"`` is not false, a notification
                   mail
=================  =====================================================================

Every change is made by `store.service.Service` with the actor ``rule:NAME``, so the
audit log names the rule. Within one rule, field changes are applied together (one
transaction), then assignment, then mail, notes and notifications.

Idempotence and loop safety:

* `run_rules` is called after the triggering transaction committed. The *instance* of an
  event is the ticket's newest feed event not made by a rule; a rule fires at most once
  per (ticket, event instance) (a `RuleRun` row, claimed before acting).
* Rules of the event run in position order, each evaluated against the ticket as the
  earlier rules left it. If they changed the ticket, the ``updated`` rules run once more
  (depth 1) with the rules that already fired in this chain left out; changes made there
  trigger nothing further. While a chain runs, nested `run_rules` calls (a service hook
  reacting to a rule's own change) return at once.
* Time rules fire once per ticket while their condition holds (fingerprint ``time``);
  when the condition stops holding the run is forgotten, so the rule can fire again the
  next time the ticket gets into that state.

Assignment strategy per queue lives in ``Queue.settings``: ``{"assign": "manual" |
"round_robin" | "least_loaded", "require_presence": bool, "rr_cursor": agent_id,
"lead": login}``. Eligible agents are active, work the queue (`AgentQueue`), list the
ticket's language (when they list languages), have the skills the ticket's tags ask for
(a tag that is some eligible agent's skill is a requirement; the agents covering most of
them are kept), and, with ``require_presence``, have a console heartbeat fresher than 30 s.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import lifecycle
from store.engine import StoreError
from store.models import (
    ACTIVE_STATUSES,
    Agent,
    AgentQueue,
    Article,
    ArticleKind,
    AuditEvent,
    CannedResponse,
    Event,
    Level,
    Outbox,
    Presence,
    Priority,
    Queue,
    Status,
    Tag,
    Ticket,
    TicketTag,
)
from store.query import QueryContext, QueryError, compile_where, parse
from store.rules_models import RULE_EVENTS, Rule, RuleRun
from store.service import (
    PRESENCE_TTL,
    SYSTEM,
    Actor,
    NotFoundError,
    Service,
    ValidationError,
)

__all__ = [
    "ACTION_TYPES",
    "ASSIGN_STRATEGIES",
    "RuleError",
    "RuleTest",
    "add_rule",
    "assign_backlog",
    "assign_ticket",
    "describe_action",
    "disable_rule",
    "eligible_agents",
    "enable_rule",
    "list_rules",
    "parse_action",
    "remove_rule",
    "run_rules",
    "run_time_rules",
    "set_assignment",
    "test_rule",
]

log = logging.getLogger(__name__)

ACTION_TYPES: tuple[str, ...] = (
    "set_queue",
    "set_priority",
    "set_impact",
    "set_urgency",
    "set_status",
    "add_tags",
    "remove_tags",
    "assign",
    "apply_canned",
    "add_note",
    "notify",
)
ASSIGN_STRATEGIES: tuple[str, ...] = ("manual", "round_robin", "least_loaded")
#: Automatic mails to one address per hour, across rules (RFC 3834: do not flood).
AUTO_MAIL_LIMIT_PER_HOUR = 3
#: Tickets handled per query by one time rule (keyset batches).
TIME_BATCH = 500

_NO_REPLY = {"mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply", "do-not-reply"}
#: Set while a rule chain runs: nested run_rules calls (service hooks) return at once.
_IN_CHAIN: contextvars.ContextVar[bool] = contextvars.ContextVar("rules_in_chain", default=False)


class RuleError(ValidationError):
    """A rule that cannot be added or run as written (bad event, condition or action)."""


# --- actions: parsing and checking ---------------------------------------------------------

_ALIASES = {
    "queue": "set_queue",
    "priority": "set_priority",
    "impact": "set_impact",
    "urgency": "set_urgency",
    "status": "set_status",
    "tag": "add_tags",
    "tags": "add_tags",
    "tag+": "add_tags",
    "tag-": "remove_tags",
    "untag": "remove_tags",
    "assignee": "assign",
    "canned": "apply_canned",
    "reply": "apply_canned",
    "note": "add_note",
}
_ACTION_RE = re.compile(r"^\s*([A-Za-z_]+[+-]?)\s*(?:=|:)\s*(.*?)\s*$", re.S)


def parse_action(text: str) -> dict[str, Any]:
    """``"set_queue=Baltics"``, ``"priority=high"``, ``"tag+=vip,urgent"``, ``"assign=auto"``,
    ``"canned=welcome"``, ``"canned=status-update:notification"``, ``"note=Check the
    contract"``, ``"notify=lead"`` -> an action object (checked by `check_action`)."""
    m = _ACTION_RE.match(text)
    if not m:
        raise RuleError(
            f"cannot read action {text!r}; write NAME=VALUE, e.g. queue=Baltics, priority=high, "
            "tag+=vip, tag-=spam, assign=auto, canned=welcome, note=TEXT, notify=lead"
        )
    name, value = m.group(1).lower(), m.group(2)
    kind = _ALIASES.get(name, name)
    if kind not in ACTION_TYPES:
        raise RuleError(f"unknown action {name!r} (one of: {', '.join(ACTION_TYPES)})")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    action: dict[str, Any] = {"type": kind}
    if kind in ("add_tags", "remove_tags"):
        action["value"] = [t for t in re.split(r"[,\s]+", value) if t]
    elif (
        kind == "apply_canned"
        and ":" in value
        and value.rsplit(":", 1)[1]
        in (
            "ack",
            "notification",
        )
    ):
        action["value"], action["kind"] = value.rsplit(":", 1)
    elif kind == "notify" and value.endswith(":nomail"):
        action["value"], action["mail"] = value[: -len(":nomail")], False
    else:
        action["value"] = value
    return check_action(action)


def _level(value: str) -> Level:
    try:
        return Level[value.strip().upper()]
    except KeyError:
        raise RuleError(f"unknown level {value!r} (low, medium, high)") from None


def _priority(value: str) -> Priority | str:
    v = value.strip().lower()
    if v == "auto":
        return "auto"
    try:
        return Priority[v.upper()]
    except KeyError:
        raise RuleError(f"unknown priority {value!r} (low, normal, high, urgent, auto)") from None


def _status(value: str) -> Status:
    try:
        status = Status(value.strip().lower())
    except ValueError:
        raise RuleError(
            f"unknown status {value!r} (one of: {', '.join(s.value for s in Status)})"
        ) from None
    if status in (Status.POSTPONED, Status.MERGED, Status.NEW):
        raise RuleError(f"a rule cannot set the status {status.value!r}")
    return status


def check_action(action: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an action object's shape and values (not that queues/agents exist)."""
    if not isinstance(action, Mapping) or action.get("type") not in ACTION_TYPES:
        raise RuleError(f"unknown action {action!r} (types: {', '.join(ACTION_TYPES)})")
    out = dict(action)
    kind, value = out["type"], out.get("value")
    if kind in ("add_tags", "remove_tags"):
        tags = [value] if isinstance(value, str) else list(value or [])
        tags = [str(t).strip().lower() for t in tags if str(t).strip()]
        if not tags or any(any(c.isspace() for c in t) for t in tags):
            raise RuleError(f"{kind} wants one or more single-word tags")
        out["value"] = tags
        return out
    if not isinstance(value, str):
        raise RuleError(f"{kind} wants a text value")
    if kind == "set_priority":
        _priority(value)
    elif kind in ("set_impact", "set_urgency"):
        _level(value)
    elif kind == "set_status":
        _status(value)
    elif kind in ("add_note", "apply_canned", "notify") and not value.strip():
        raise RuleError(f"{kind} needs a value")
    if kind == "apply_canned" and out.setdefault("kind", "ack") not in ("ack", "notification"):
        raise RuleError("apply_canned kind is 'ack' (auto-replied) or 'notification'")
    if kind == "notify":
        out["mail"] = bool(out.get("mail", True))
    return out


def describe_action(action: Mapping[str, Any]) -> str:
    """One line for `rule list`."""
    kind, value = action.get("type"), action.get("value")
    if isinstance(value, list):
        value = ",".join(value)
    extra = ""
    if kind == "apply_canned" and action.get("kind", "ack") != "ack":
        extra = f" ({action['kind']})"
    if kind == "notify" and action.get("mail") is False:
        extra = " (no mail)"
    return f"{kind}={value}{extra}"


async def _check_references(session: AsyncSession, actions: Sequence[Mapping[str, Any]]) -> None:
    """Catch typos when the rule is added: unknown queues, agents, canned responses."""
    for a in actions:
        kind, value = a["type"], a.get("value")
        if kind == "set_queue" and value:
            found = (
                await session.execute(
                    select(Queue.id).where(func.lower(Queue.name) == value.lower())
                )
            ).scalar_one_or_none()
            if found is None:
                raise RuleError(f"no queue {value!r}; add one with `helpdesk queue add {value!r}`")
        elif (kind == "assign" and value not in ("auto", "none", "", *ASSIGN_STRATEGIES)) or (
            kind == "notify" and value not in ("lead", "assignee")
        ):
            found = (
                await session.execute(select(Agent.id).where(Agent.login == value))
            ).scalar_one_or_none()
            if found is None:
                raise RuleError(f"no agent {value!r}")
        elif kind == "apply_canned":
            found = (
                await session.execute(
                    select(CannedResponse.id).where(
                        CannedResponse.name == value, CannedResponse.owner_id.is_(None)
                    )
                )
            ).scalar_one_or_none()
            if found is None:
                raise RuleError(f"no shared canned response {value!r}")


def _check_condition(condition: str) -> str:
    condition = condition.strip()
    if condition:
        try:
            parse(condition)
        except QueryError as exc:
            raise RuleError(f"condition: {exc}") from None
    return condition


# --- rule management -----------------------------------------------------------------------


async def add_rule(
    service: Service,
    name: str,
    *,
    event: str,
    condition: str = "",
    actions: Sequence[str | Mapping[str, Any]],
    position: int | None = None,
    enabled: bool = True,
) -> Rule:
    """A new rule; `actions` are objects or ``NAME=VALUE`` texts (see `parse_action`).

    `position` None puts it after the event's other rules.
    """
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise RuleError(f"invalid rule name {name!r}: one word, e.g. route-latvian")
    if event not in RULE_EVENTS:
        raise RuleError(f"unknown event {event!r} (one of: {', '.join(RULE_EVENTS)})")
    condition = _check_condition(condition)
    checked = [parse_action(a) if isinstance(a, str) else check_action(a) for a in actions]
    if not checked:
        raise RuleError("a rule needs at least one action")
    async with service.db.write() as session:
        await _check_references(session, checked)
        if (await session.execute(select(Rule.id).where(Rule.name == name))).first():
            raise RuleError(f"a rule named {name!r} exists already")
        if position is None:
            top = (
                await session.execute(select(func.max(Rule.position)).where(Rule.event == event))
            ).scalar()
            position = (top or 0) + 10
        rule = Rule(
            name=name,
            event=event,
            condition=condition,
            actions=checked,
            position=position,
            enabled=enabled,
            created_at=service.clock(),
        )
        session.add(rule)
        await session.flush()
        summary = f"on {event} if {condition or '(all)'} then " + "; ".join(
            describe_action(a) for a in checked
        )
        service._audit(session, None, SYSTEM, "rule-added", "rule", None, f"{name}: {summary}")
        await service._event(session, None, "rule", SYSTEM)
        return rule


async def list_rules(
    service: Service, event: str | None = None, *, include_disabled: bool = True
) -> list[Rule]:
    """Rules by event, then position."""
    async with service.db.read() as session:
        stmt = select(Rule).order_by(Rule.event, Rule.position, Rule.id)
        if event is not None:
            stmt = stmt.where(Rule.event == event)
        if not include_disabled:
            stmt = stmt.where(Rule.enabled.is_(True))
        return list((await session.execute(stmt)).scalars())


async def _set_enabled(service: Service, name: str, enabled: bool) -> Rule:
    async with service.db.write() as session:
        rule = (await session.execute(select(Rule).where(Rule.name == name))).scalar_one_or_none()
        if rule is None:
            raise NotFoundError(f"no rule {name!r}; see `helpdesk rule list`")
        if rule.enabled != enabled:
            rule.enabled = enabled
            action = "rule-enabled" if enabled else "rule-disabled"
            service._audit(session, None, SYSTEM, action, "rule", None, name)
            await service._event(session, None, "rule", SYSTEM)
        return rule


async def disable_rule(service: Service, name: str) -> Rule:
    return await _set_enabled(service, name, False)


async def enable_rule(service: Service, name: str) -> Rule:
    return await _set_enabled(service, name, True)


async def remove_rule(service: Service, name: str) -> None:
    async with service.db.write() as session:
        rule = (await session.execute(select(Rule).where(Rule.name == name))).scalar_one_or_none()
        if rule is None:
            raise NotFoundError(f"no rule {name!r}; see `helpdesk rule list`")
        await session.delete(rule)
        service._audit(session, None, SYSTEM, "rule-removed", "rule", None, name)
        await service._event(session, None, "rule", SYSTEM)


# --- matching ------------------------------------------------------------------------------


def _ctx(service: Service, now: datetime) -> QueryContext:
    return QueryContext(me_agent_id=None, now=now, dialect=service.db.dialect)


def _where(rule: Rule, ctx: QueryContext) -> ColumnElement[bool]:
    return compile_where(parse(rule.condition), ctx) if rule.condition.strip() else true()


async def _evaluate(
    service: Service,
    rules: Sequence[Rule],
    ticket_id: int,
    now: datetime,
    session: AsyncSession | None = None,
) -> tuple[int, dict[int, bool]] | None:
    """(ticket version, {rule id: matches}) in one query; None when the ticket is gone."""
    ctx = _ctx(service, now)
    cols: list[Any] = [Ticket.version]
    ids: list[int] = []
    bad: dict[int, bool] = {}
    for rule in rules:
        try:
            cond = _where(rule, ctx)
        except (QueryError, ValueError) as exc:
            log.warning("rule=%s condition error: %s", rule.name, exc)
            bad[rule.id] = False
            continue
        cols.append(case((cond, 1), else_=0).label(f"r{rule.id}"))
        ids.append(rule.id)
    stmt = select(*cols).where(Ticket.id == ticket_id)
    if session is not None:
        row = (await session.execute(stmt)).first()
    else:
        async with service.db.read() as s:
            row = (await s.execute(stmt)).first()
    if row is None:
        return None
    matches = {rid: bool(row[i + 1]) for i, rid in enumerate(ids)}
    matches.update(bad)
    return int(row[0]), matches


async def _claim(
    service: Service, rule: Rule, ticket_id: int, fingerprint: str, now: datetime
) -> int | None:
    """Record the firing before acting (at most once); the run's id, or None if it had."""
    try:
        async with service.db.write() as session:
            run = RuleRun(
                rule_id=rule.id, ticket_id=ticket_id, fingerprint=fingerprint, fired_at=now
            )
            session.add(run)
            await session.flush()
            return int(run.id)
    except IntegrityError:
        return None


# --- assignment ----------------------------------------------------------------------------


def _lang(code: str | None) -> str:
    return (code or "").strip().lower().replace("_", "-").split("-")[0]


def _speaks(agent: Agent, language: str | None) -> bool:
    if not language or not agent.languages:
        return True
    want = _lang(language)
    return any(_lang(x) == want for x in agent.languages)


async def _queue_agents(
    session: AsyncSession, queue: Queue, now: datetime, require_presence: bool | None = None
) -> list[Agent]:
    """Active agents working `queue` (and present, if the queue asks), by id."""
    settings = dict(queue.settings or {})
    presence = (
        settings.get("require_presence", False) if require_presence is None else require_presence
    )
    stmt = (
        select(Agent)
        .join(AgentQueue, AgentQueue.agent_id == Agent.id)
        .where(AgentQueue.queue_id == queue.id, Agent.active.is_(True))
        .order_by(Agent.id)
    )
    if presence:
        stmt = stmt.where(
            Agent.id.in_(select(Presence.agent_id).where(Presence.seen_at >= now - PRESENCE_TTL))
        )
    return list((await session.execute(stmt)).scalars())


def _fit(agents: Sequence[Agent], language: str | None, tags: Iterable[str]) -> list[Agent]:
    """The agents who read `language` and best cover the skills the tags ask for."""
    speakers = [a for a in agents if _speaks(a, language)]
    if not speakers:
        return []
    known = {s.lower() for a in speakers for s in (a.skills or [])}
    wanted = set(tags) & known
    if not wanted:
        return speakers
    cover = {a.id: len(wanted & {s.lower() for s in (a.skills or [])}) for a in speakers}
    best = max(cover.values())
    return [a for a in speakers if cover[a.id] == best]


async def eligible_agents(
    session: AsyncSession,
    ticket: Ticket,
    queue: Queue,
    now: datetime,
    *,
    require_presence: bool | None = None,
) -> list[Agent]:
    """Agents who may get `ticket` in `queue`, by id (see the module notes)."""
    agents = await _queue_agents(session, queue, now, require_presence)
    return _fit(agents, ticket.language, [t.name for t in ticket.tags])


def _choose(
    agents: Sequence[Agent], cursor: int | None, strategy: str, loads: Mapping[int, int]
) -> tuple[Agent, str]:
    order = _rotation(agents, cursor)
    if strategy == "least_loaded":
        rank = {a.id: i for i, a in enumerate(order)}
        chosen = min(order, key=lambda a: (loads.get(a.id, 0), rank[a.id]))
        return chosen, f"least loaded ({loads.get(chosen.id, 0)} active)"
    return order[0], "round robin"


def _rotation(agents: Sequence[Agent], cursor: int | None) -> list[Agent]:
    """Agents in round-robin order: the first one after `cursor` (by id) comes first."""
    if cursor is None:
        return list(agents)
    after = [a for a in agents if a.id > cursor]
    return after + [a for a in agents if a.id <= cursor]


async def _loads(session: AsyncSession, agent_ids: Sequence[int]) -> dict[int, int]:
    rows = await session.execute(
        select(Ticket.assignee_id, func.count())
        .where(
            Ticket.assignee_id.in_(list(agent_ids)),
            Ticket.status.in_(sorted(s.value for s in ACTIVE_STATUSES)),
        )
        .group_by(Ticket.assignee_id)
    )
    counts = {int(aid): int(n) for aid, n in rows.all() if aid is not None}
    return {aid: counts.get(aid, 0) for aid in agent_ids}


async def _pick(
    session: AsyncSession, ticket: Ticket, queue: Queue, strategy: str, now: datetime
) -> tuple[Agent | None, str]:
    """The agent the strategy picks (no write), and why none when there is none."""
    agents = await eligible_agents(session, ticket, queue, now)
    if not agents:
        lang = f", language {ticket.language}" if ticket.language else ""
        return None, f"no eligible agent in queue {queue.name}{lang}"
    cursor = (queue.settings or {}).get("rr_cursor")
    loads = await _loads(session, [a.id for a in agents]) if strategy == "least_loaded" else {}
    return _choose(agents, int(cursor) if cursor is not None else None, strategy, loads)


async def set_assignment(
    service: Service,
    queue: str,
    *,
    strategy: str | None = None,
    require_presence: bool | None = None,
    lead: str | None = None,
) -> Queue:
    """Set a queue's assignment strategy, presence requirement and lead (`queue assign`)."""
    if strategy is not None and strategy not in ASSIGN_STRATEGIES:
        raise RuleError(f"unknown strategy {strategy!r} (one of: {', '.join(ASSIGN_STRATEGIES)})")
    async with service.db.write() as session:
        q = await service._queue_by_name(session, queue)
        settings = dict(q.settings or {})
        changes: list[str] = []
        if strategy is not None:
            settings["assign"] = strategy
            changes.append(f"assign={strategy}")
        if require_presence is not None:
            settings["require_presence"] = require_presence
            changes.append(f"require_presence={require_presence}")
        if lead is not None:
            if lead:
                await service._agent_by_login(session, lead)
                settings["lead"] = lead
            else:
                settings.pop("lead", None)
            changes.append(f"lead={lead or '-'}")
        q.settings = settings
        if changes:
            service._audit(
                session,
                None,
                SYSTEM,
                "queue-settings",
                "queue",
                None,
                f"{q.name}: {' '.join(changes)}",
            )
            await service._event(session, None, "queue", SYSTEM)
        return q


async def assign_ticket(
    service: Service,
    number: int,
    now: datetime,
    *,
    actor: Actor = SYSTEM,
    strategy: str | None = None,
) -> str:
    """Assign an unassigned ticket by its queue's strategy (or `strategy`); what happened.

    The pick, the queue's round-robin cursor and the assignment commit together.
    """
    async with service.db.write() as session:
        t = await service._ticket_for_update(session, number)
        if t.assignee_id is not None:
            return f"already assigned to {t.assignee.login if t.assignee else t.assignee_id}"
        if t.queue_id is None:
            return "not assigned: the ticket has no queue"
        qstmt = select(Queue).where(Queue.id == t.queue_id)
        if service.db.dialect == "postgresql":
            qstmt = qstmt.with_for_update()
        queue = (await session.execute(qstmt)).scalar_one()
        how = strategy or (queue.settings or {}).get("assign", "manual")
        if how not in ASSIGN_STRATEGIES:
            return f"not assigned: unknown strategy {how!r} on queue {queue.name}"
        if how == "manual":
            return f"not assigned: queue {queue.name} is assigned by hand"
        agent, why = await _pick(session, t, queue, how, now)
        if agent is None:
            return f"not assigned: {why}"
        queue.settings = {**(queue.settings or {}), "rr_cursor": agent.id}
        await service.update_ticket(actor, number, assignee=agent.login, session=session)
        return f"assigned {agent.login} ({why})"


#: Tickets assigned per write transaction by `assign_backlog`.
BACKLOG_BATCH = 500


async def assign_backlog(
    service: Service,
    queue: str,
    now: datetime,
    *,
    actor: Actor = SYSTEM,
    strategy: str | None = None,
    limit: int | None = None,
    batch: int = BACKLOG_BATCH,
) -> list[str]:
    """Assign a queue's unassigned active tickets, oldest first; one line per ticket.

    For a queue switched to round robin / least-loaded, or agents coming online. The
    candidates, their tags and the agents' loads are read once; then each `batch` of
    tickets is one write transaction with a few set-based statements, writing what
    `Service.update_ticket(actor, number, assignee=...)` writes for each ticket (the
    priority the matrix gives when it differs and nobody overrode it, the ``assigned``
    audit row, ``updated_at``, the version, the SLA clocks, an ``updated`` event) and
    the queue's round-robin cursor. A ticket assigned or closed by someone else since the
    candidates were read is left alone (and reported).
    """
    async with service.db.read() as session:
        q = await service._queue_by_name(session, queue)
        how = strategy or (q.settings or {}).get("assign", "manual")
        if how not in ("round_robin", "least_loaded"):
            raise RuleError(f"queue {q.name} is assigned by hand (strategy {how!r})")
        agents = await _queue_agents(session, q, now)
        stmt = (
            select(Ticket.id, Ticket.number, Ticket.language)
            .where(
                Ticket.queue_id == q.id,
                Ticket.assignee_id.is_(None),
                Ticket.status.in_(_ACTIVE),
            )
            .order_by(Ticket.created_at, Ticket.id)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = [tuple(r) for r in (await session.execute(stmt)).all()]
        tags: dict[int, list[str]] = {}
        ids = [r[0] for r in rows]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for tid, name in (
                await session.execute(
                    select(TicketTag.ticket_id, Tag.name)
                    .join(Tag, Tag.id == TicketTag.tag_id)
                    .where(TicketTag.ticket_id.in_(chunk))
                )
            ).all():
                tags.setdefault(tid, []).append(name)
        loads = await _loads(session, [a.id for a in agents]) if how == "least_loaded" else {}
    out: list[str] = []
    for start in range(0, len(rows), max(1, batch)):
        part = rows[start : start + max(1, batch)]
        async with service.db.write() as session:
            qstmt = select(Queue).where(Queue.id == q.id)
            if service.db.dialect == "postgresql":
                qstmt = qstmt.with_for_update()
            locked = (await session.execute(qstmt)).scalar_one()
            # read in every batch: an assignment made between two batches (a rule on a new
            # ticket) moved the rotation on, and the next batch continues from there
            value = (locked.settings or {}).get("rr_cursor")
            cursor = await _assign_part(
                service,
                session,
                actor,
                how,
                q.id,
                agents,
                part,
                tags,
                loads,
                int(value) if value is not None else None,
                out,
            )
            locked.settings = {**(locked.settings or {}), "rr_cursor": cursor}
    return out


_ACTIVE = sorted(s.value for s in ACTIVE_STATUSES)


async def _assign_part(
    service: Service,
    session: AsyncSession,
    actor: Actor,
    how: str,
    queue_id: int,
    agents: Sequence[Agent],
    part: Sequence[tuple[Any, ...]],
    tags: Mapping[int, list[str]],
    loads: dict[int, int],
    cursor: int | None,
    out: list[str],
) -> int | None:
    """One transaction of `assign_backlog`: picks, then set-based writes. Returns the cursor."""
    stmt = select(
        Ticket.id, Ticket.priority, Ticket.impact, Ticket.urgency, Ticket.priority_override_by
    ).where(
        Ticket.id.in_([r[0] for r in part]),
        Ticket.queue_id == queue_id,
        Ticket.assignee_id.is_(None),
        Ticket.status.in_(_ACTIVE),
    )
    if service.db.dialect == "postgresql":
        stmt = stmt.with_for_update(of=Ticket)
    current = {r[0]: r for r in (await session.execute(stmt)).all()}
    matrix = await service._matrix(session)
    who = str(actor)
    audits: list[AuditEvent] = []
    events: list[Event] = []
    changes: list[dict[str, Any]] = []
    for tid, number, language in part:
        row = current.get(tid)
        if row is None:
            out.append(f"#{number} not assigned: assigned or closed meanwhile")
            continue
        fit = _fit(agents, language, tags.get(tid, []))
        if not fit:
            out.append(f"#{number} not assigned: no eligible agent")
            continue
        agent, why = _choose(fit, cursor, how, loads)
        # What Service.update_ticket(actor, number, assignee=login) writes, in its order.
        _, priority, impact, urgency, override = row
        if override is None:
            derived = lifecycle.derive_priority(Level(impact), Level(urgency), matrix)
            if int(derived) != priority:
                audits.append(
                    _audit_row(
                        service,
                        tid,
                        who,
                        "changed",
                        "priority",
                        Priority(priority).label,
                        derived.label,
                    )
                )
                priority = int(derived)
        audits.append(_audit_row(service, tid, who, "assigned", "assignee", None, agent.login))
        changes.append(
            {
                "b_id": tid,
                "assignee_id": agent.id,
                "priority": priority,
                "updated_at": service.clock(),
            }
        )
        events.append(Event(ticket_id=tid, kind="updated", actor=who, created_at=service.clock()))
        cursor = agent.id
        loads[agent.id] = loads.get(agent.id, 0) + 1
        out.append(f"#{number} assigned {agent.login} ({why})")
    if not changes:
        return cursor
    session.add_all(audits)
    tickets = cast(Table, Ticket.__table__)
    await session.execute(
        update(tickets)
        .where(tickets.c.id == bindparam("b_id"))
        .values(version=tickets.c.version + 1),
        changes,
    )
    from store import sla

    await sla.recompute_tickets(session, [c["b_id"] for c in changes], service.clock())
    session.add_all(events)
    await session.flush()
    for ev in events:
        await service._notify(session, ev.id)
    return cursor


def _audit_row(
    service: Service,
    ticket_id: int,
    actor: str,
    action: str,
    fld: str,
    old: str | None,
    new: str | None,
) -> AuditEvent:
    return AuditEvent(
        ticket_id=ticket_id,
        actor=actor,
        action=action,
        field=fld,
        old_value=old,
        new_value=new,
        created_at=service.clock(),
    )


# --- applying actions ----------------------------------------------------------------------


def _mail_domain(ticket: Ticket) -> str:
    if ticket.queue and ticket.queue.addresses:
        domain = ticket.queue.addresses[0].rpartition("@")[2]
        if domain:
            return domain
    return "helpdesk.invalid"


async def _our_addresses(session: AsyncSession) -> set[str]:
    return {
        a.lower() for q in (await session.execute(select(Queue))).scalars() for a in q.addresses
    }


async def _apply_canned(service: Service, actor: Actor, number: int, name: str, kind: str) -> str:
    """The canned response as an automatic mail to the customer (RFC 3834 rules apply)."""
    from store.templates import context_from, render

    async with service.db.write() as session:
        t = await service._ticket_for_update(session, number)
        to = (t.customer.email if t.customer else "").strip().lower()
        if not to or to.endswith("@invalid") or to.partition("@")[0] in _NO_REPLY:
            return f"canned reply {name!r} not sent: no address that takes replies"
        if to in await _our_addresses(session):
            return f"canned reply {name!r} not sent: {to} is one of our own addresses"
        last_in = (
            await session.execute(
                select(Article.meta)
                .where(Article.ticket_id == t.id, Article.kind == ArticleKind.EMAIL_IN.value)
                .order_by(Article.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if last_in and last_in.get("auto") is True:
            why = last_in.get("reason") or "automatic"
            return f"canned reply {name!r} not sent: the customer's mail is automatic ({why})"
        if t.status in (Status.CLOSED.value, Status.MERGED.value):
            return f"canned reply {name!r} not sent: the ticket is {t.status}"
        since = service.clock() - timedelta(hours=1)
        sent = (
            await session.execute(
                select(func.count())
                .select_from(Outbox)
                .where(
                    Outbox.kind.in_(("ack", "notification")),
                    Outbox.created_at >= since,
                    Outbox.rcpt_to_key == to,
                )
            )
        ).scalar_one()
        if sent >= AUTO_MAIL_LIMIT_PER_HOUR:
            return f"canned reply {name!r} not sent: {sent} automatic mails to {to} this hour"
        canned = (
            await session.execute(
                select(CannedResponse).where(
                    CannedResponse.name == name, CannedResponse.owner_id.is_(None)
                )
            )
        ).scalar_one_or_none()
        if canned is None:
            return f"canned reply {name!r} not sent: no such shared canned response"
        sender = SimpleNamespace(name=t.queue.name if t.queue else "Support")
        rendered = render(canned.body, context_from(t, sender))
        if not rendered.ok:
            missing = ", ".join(rendered.unknown + rendered.empty)
            return f"canned reply {name!r} not sent: unfilled variables {missing}"
        subject = t.subject if t.subject.lower().startswith("re:") else f"Re: {t.subject}"
        article = await service.queue_automatic_mail(
            session,
            t,
            outbox_kind=kind,
            to=to,
            subject=subject,
            body=rendered.text,
            meta={"auto": kind, "rule": actor.name, "canned": name},
            domain=_mail_domain(t),
            now=service.clock(),
        )
        service._audit(
            session, t.id, actor, "auto-replied", None, None, f"article {article.id} ({name})"
        )
        service._touch(t)
        await service._event(session, t.id, "article", actor)
        return f"canned reply {name!r} queued to {to}"


async def _notify(service: Service, actor: Actor, number: int, who: str, mail: bool) -> str:
    async with service.db.write() as session:
        t = await service._ticket_for_update(session, number)
        login: str | None
        if who == "lead":
            login = (t.queue.settings or {}).get("lead") if t.queue else None
            if not login:
                return "nobody notified: the ticket's queue has no lead (queue settings 'lead')"
        elif who == "assignee":
            login = t.assignee.login if t.assignee else None
            if not login:
                return "nobody notified: the ticket is unassigned"
        else:
            login = who
        agent = (
            await session.execute(select(Agent).where(Agent.login == login))
        ).scalar_one_or_none()
        if agent is None:
            return f"nobody notified: no agent {login!r}"
        service._audit(session, t.id, actor, "notified", "agent", None, agent.login)
        await service._event(session, t.id, "notify", actor)
        if mail and agent.email:
            await service.queue_automatic_mail(
                session,
                t,
                outbox_kind="notification",
                article_kind=ArticleKind.SYSTEM,
                domain=_mail_domain(t),
                now=service.clock(),
                to=agent.email,
                subject=f"[rule {actor.name}] #{t.number} {t.subject}",
                body=(
                    f"Rule {actor.name} asks you to look at ticket #{t.number}: {t.subject}\n"
                    f"Status {t.status}, priority {Priority(t.priority).label}"
                    + (f", queue {t.queue.name}" if t.queue else "")
                    + ".\n"
                ),
                meta={"auto": "notification", "rule": actor.name, "notify": agent.login},
            )
            return f"notified {agent.login} (mail to {agent.email})"
        return f"notified {agent.login}"


async def _apply(service: Service, rule: Rule, number: int, now: datetime) -> list[str]:
    """Apply a rule's actions to one ticket through the service; what was done."""
    actor = Actor("rule", rule.name)
    fields: dict[str, Any] = {}
    tags_add: list[str] = []
    tags_remove: list[str] = []
    later: list[dict[str, Any]] = []
    for a in rule.actions:
        kind, value = a.get("type"), a.get("value")
        if kind == "set_queue":
            fields["queue"] = value or None
        elif kind == "set_priority":
            fields["priority"] = _priority(value)
        elif kind == "set_impact":
            fields["impact"] = _level(value)
        elif kind == "set_urgency":
            fields["urgency"] = _level(value)
        elif kind == "set_status":
            fields["status"] = _status(value)
        elif kind == "add_tags":
            tags_add += list(value)
            tags_remove = [t for t in tags_remove if t not in value]
        elif kind == "remove_tags":
            tags_remove += list(value)
            tags_add = [t for t in tags_add if t not in value]
        elif kind == "assign" and value not in ("auto", *ASSIGN_STRATEGIES):
            fields["assignee"] = None if value in ("none", "") else value
        else:
            later.append(dict(a))
    done: list[str] = []
    if fields or tags_add or tags_remove:
        try:
            await service.update_ticket(
                actor, number, tags_add=tags_add, tags_remove=tags_remove, **fields
            )
            parts = [
                f"{k}={getattr(v, 'label', getattr(v, 'value', v))}" for k, v in fields.items()
            ]
            parts += [f"+{t}" for t in tags_add] + [f"-{t}" for t in tags_remove]
            done.append("set " + " ".join(parts))
        except StoreError as exc:
            done.append(f"error: {exc}")
    for a in later:
        kind, value = a["type"], a.get("value", "")
        try:
            if kind == "assign":
                strategy = None if value == "auto" else value
                done.append(
                    await assign_ticket(service, number, now, actor=actor, strategy=strategy)
                )
            elif kind == "apply_canned":
                done.append(
                    await _apply_canned(service, actor, number, value, a.get("kind", "ack"))
                )
            elif kind == "add_note":
                await service.add_note(actor, number, value)
                done.append("note added")
            elif kind == "notify":
                done.append(await _notify(service, actor, number, value, a.get("mail", True)))
        except StoreError as exc:
            done.append(f"error: {exc}")
    return done


# --- running rules -------------------------------------------------------------------------


async def _enabled(session: AsyncSession, events: Iterable[str]) -> list[Rule]:
    return list(
        (
            await session.execute(
                select(Rule)
                .where(Rule.enabled.is_(True), Rule.event.in_(list(events)))
                .order_by(Rule.position, Rule.id)
            )
        ).scalars()
    )


async def _round(
    service: Service,
    rules: Sequence[Rule],
    ticket_id: int,
    number: int,
    fingerprint: str,
    now: datetime,
    fired: set[int],
    out: list[str],
    state: tuple[int, dict[int, bool]] | None = None,
    track: bool = False,
) -> bool:
    """Fire each matching rule once, in order, each against the ticket as the earlier ones
    left it. With `track`: whether the ticket changed (else False)."""
    pending = [r for r in rules if r.id not in fired]
    if not pending:
        return False
    if state is None:
        state = await _evaluate(service, pending, ticket_id, now)
    if state is None:
        return False
    start_version, matches = state
    version = start_version
    for i, rule in enumerate(pending):
        if not matches.get(rule.id):
            continue
        run_id = await _claim(service, rule, ticket_id, fingerprint, now)
        if run_id is None:
            continue
        fired.add(rule.id)
        done = await _apply(service, rule, number, now)
        out.append(f"#{number} {rule.name}: " + ("; ".join(done) or "nothing to do"))
        rest = pending[i + 1 :]
        if rest or track:
            fresh = await _evaluate(service, rest, ticket_id, now)
            if fresh is None:
                return False  # the ticket is gone
            version = fresh[0]
            matches.update(fresh[1])
    return version != start_version


async def _chain(
    service: Service,
    rules: Sequence[Rule],
    updated_rules: Sequence[Rule],
    ticket_id: int,
    number: int,
    fingerprint: str,
    cascade_fingerprint: str,
    now: datetime,
    fired: set[int],
    state: tuple[int, dict[int, bool]] | None = None,
) -> list[str]:
    out: list[str] = []
    changed = await _round(
        service,
        rules,
        ticket_id,
        number,
        fingerprint,
        now,
        fired,
        out,
        state,
        track=bool(updated_rules),
    )
    if changed and updated_rules:
        # depth 1: the rules' own changes run the 'updated' rules once, and no further
        await _round(
            service, updated_rules, ticket_id, number, cascade_fingerprint, now, fired, out
        )
    return out


async def _instance(session: AsyncSession, ticket_id: int) -> int:
    """The id of the ticket's newest feed event not made by a rule (the event instance)."""
    value = (
        await session.execute(
            select(func.max(Event.id)).where(
                Event.ticket_id == ticket_id,
                Event.kind.in_(("created", "updated", "article", "merged")),
                ~Event.actor.startswith("rule:"),
            )
        )
    ).scalar()
    return int(value or 0)


async def run_rules(service: Service, event: str, ticket_number: int, now: datetime) -> list[str]:
    """Apply every enabled rule of `event` whose condition matches the ticket, in order.

    Call after the triggering transaction committed. Returns one line per rule fired.
    Nested calls made while a chain runs (a service hook seeing a rule's change) do nothing.
    """
    if event not in RULE_EVENTS or event == "time":
        raise RuleError(f"run_rules runs created/customer_replied/updated rules, not {event!r}")
    if _IN_CHAIN.get():
        return []
    token = _IN_CHAIN.set(True)
    try:
        async with service.db.read() as session:
            rules = await _enabled(session, {event, "updated"})
            own = [r for r in rules if r.event == event]
            if not own:
                return []
            updated = [r for r in rules if r.event == "updated"]
            ticket_id = (
                await session.execute(select(Ticket.id).where(Ticket.number == ticket_number))
            ).scalar_one_or_none()
            if ticket_id is None:
                raise NotFoundError(f"no ticket #{ticket_number}")
            instance = await _instance(session, ticket_id)
            first = await _evaluate(service, own, ticket_id, now, session)
        return await _chain(
            service,
            own,
            updated,
            ticket_id,
            ticket_number,
            f"{event}:e{instance}",
            f"updated:e{instance}",
            now,
            set(),
            first,
        )
    finally:
        _IN_CHAIN.reset(token)


def _not_fired(rule: Rule) -> ColumnElement[bool]:
    return ~exists().where(
        RuleRun.rule_id == rule.id, RuleRun.ticket_id == Ticket.id, RuleRun.fingerprint == "time"
    )


async def run_time_rules(service: Service, now: datetime, *, batch: int = TIME_BATCH) -> list[str]:
    """Fire time rules on the tickets matching their condition now, once per state.

    Matching tickets are found in SQL, those already fired (a ``time`` run) left out;
    runs of tickets that no longer match are forgotten first, re-arming the rule for them.
    """
    if _IN_CHAIN.get():
        return []
    token = _IN_CHAIN.set(True)
    try:
        async with service.db.read() as session:
            rules = await _enabled(session, {"time", "updated"})
        timed = [r for r in rules if r.event == "time"]
        updated = [r for r in rules if r.event == "updated"]
        ctx = _ctx(service, now)
        out: list[str] = []
        for rule in timed:
            try:
                where = _where(rule, ctx)
            except (QueryError, ValueError) as exc:
                log.warning("rule=%s condition error: %s", rule.name, exc)
                out.append(f"{rule.name}: condition error: {exc}")
                continue
            async with service.db.write() as session:
                await session.execute(
                    delete(RuleRun).where(
                        RuleRun.rule_id == rule.id,
                        RuleRun.fingerprint == "time",
                        ~RuleRun.ticket_id.in_(select(Ticket.id).where(where)),
                    )
                )
            last_id = 0
            while True:
                async with service.db.read() as session:
                    rows = (
                        await session.execute(
                            select(Ticket.id, Ticket.number)
                            .where(and_(where, _not_fired(rule)), Ticket.id > last_id)
                            .order_by(Ticket.id)
                            .limit(batch)
                        )
                    ).all()
                for ticket_id, number in rows:
                    last_id = ticket_id
                    run_id = await _claim(service, rule, ticket_id, "time", now)
                    if run_id is None:
                        continue
                    before = await _version(service, ticket_id)
                    done = await _apply(service, rule, number, now)
                    out.append(f"#{number} {rule.name}: " + ("; ".join(done) or "nothing to do"))
                    if updated and await _version(service, ticket_id) != before:
                        out += await _chain(
                            service,
                            updated,
                            [],
                            ticket_id,
                            number,
                            f"updated:r{run_id}",
                            "",
                            now,
                            {rule.id},
                        )
                if len(rows) < batch:
                    break
        return out
    finally:
        _IN_CHAIN.reset(token)


async def _version(service: Service, ticket_id: int) -> int | None:
    async with service.db.read() as session:
        return (
            await session.execute(select(Ticket.version).where(Ticket.id == ticket_id))
        ).scalar_one_or_none()


# --- dry run -------------------------------------------------------------------------------


@dataclass
class RuleTest:
    """What a rule would do to one ticket (`rule` None: the ticket matched, no rule does)."""

    ticket: int
    rule: str | None = None
    event: str | None = None
    changes: list[str] = field(default_factory=list)


def _label(value: int, enum: type[Priority] | type[Level]) -> str:
    return enum(value).label


async def _preview(
    service: Service, session: AsyncSession, rule: Rule, t: Ticket, now: datetime
) -> list[str]:
    """The changes `rule` would make to `t` as it is now (no writes)."""
    out: list[str] = []
    tags = {tag.name for tag in t.tags}
    for a in rule.actions:
        kind, value = a.get("type"), a.get("value")
        if kind == "set_queue":
            old = t.queue.name if t.queue else None
            if (old or "").lower() != (value or "").lower():
                out.append(f"queue: {old or '-'} -> {value or '-'}")
        elif kind == "set_priority":
            p = _priority(value)
            if isinstance(p, Priority) and int(p) != t.priority:
                out.append(f"priority: {_label(t.priority, Priority)} -> {p.label}")
            elif p == "auto" and t.priority_override_by:
                out.append("priority: back to impact x urgency")
        elif kind in ("set_impact", "set_urgency"):
            fld = kind.removeprefix("set_")
            lv = _level(value)
            if int(lv) != getattr(t, fld):
                out.append(f"{fld}: {_label(getattr(t, fld), Level)} -> {lv.label}")
        elif kind == "set_status":
            st = _status(value)
            if st.value != t.status:
                out.append(f"status: {t.status} -> {st.value}")
        elif kind == "add_tags":
            out += [f"tag +{x}" for x in value if x not in tags]
        elif kind == "remove_tags":
            out += [f"tag -{x}" for x in value if x in tags]
        elif kind == "assign":
            if value in ("auto", *ASSIGN_STRATEGIES):
                out.append(await _preview_assign(session, t, value, now))
            else:
                old = t.assignee.login if t.assignee else None
                new = None if value in ("none", "") else value
                if old != new:
                    out.append(f"assignee: {old or '-'} -> {new or '-'}")
        elif kind == "apply_canned":
            to = t.customer.email if t.customer else "-"
            out.append(f"automatic mail ({a.get('kind', 'ack')}) {value!r} to {to}")
        elif kind == "add_note":
            out.append(f"internal note: {value[:60]}")
        elif kind == "notify":
            out.append(f"notify {value}" + ("" if a.get("mail", True) else " (no mail)"))
    return out


async def _preview_assign(session: AsyncSession, t: Ticket, value: str, now: datetime) -> str:
    if t.assignee_id is not None:
        return "assign: already assigned"
    queue = await session.get(Queue, t.queue_id) if t.queue_id else None
    if queue is None:
        return "assign: the ticket has no queue"
    how = value if value != "auto" else (queue.settings or {}).get("assign", "manual")
    if how not in ("round_robin", "least_loaded"):
        return f"assign: queue {queue.name} is assigned by hand"
    agent, why = await _pick(session, t, queue, how, now)
    return f"assignee: - -> {agent.login} ({why})" if agent else f"assign: {why}"


async def test_rule(
    service: Service,
    query_or_ticket: str,
    now: datetime | None = None,
    *,
    rule: str | None = None,
    limit: int = 20,
) -> list[RuleTest]:
    """Dry run: which tickets and rules match, and what each rule would change.

    `query_or_ticket` is a ticket (``1234`` or ``#1234``): every enabled rule (or `rule`)
    whose condition matches it; a rule's name: the tickets its condition matches now; or a
    query: the tickets it selects (up to `limit`), each with the rules matching it. Each
    rule is previewed against the ticket as it is now, not as earlier rules would leave it.
    """
    now = now or service.clock()
    text = query_or_ticket.strip()
    ctx = _ctx(service, now)
    async with service.db.read() as session:
        all_rules = await _enabled(session, RULE_EVENTS)
        named = (await session.execute(select(Rule).where(Rule.name == text))).scalar_one_or_none()
        if rule is not None:
            chosen = (
                await session.execute(select(Rule).where(Rule.name == rule))
            ).scalar_one_or_none()
            if chosen is None:
                raise NotFoundError(f"no rule {rule!r}; see `helpdesk rule list`")
            all_rules = [chosen]
        elif named is not None:
            all_rules = [named]
        m = re.fullmatch(r"#?(\d+)", text)
        if m:
            stmt = select(Ticket).where(Ticket.number == int(m.group(1)))
        else:
            where = (
                _where(named, ctx)
                if named is not None
                else (compile_where(parse(text), ctx) if text else true())
            )
            stmt = select(Ticket).where(where).order_by(Ticket.id.desc()).limit(limit)
        tickets = list((await session.execute(stmt)).unique().scalars())
        if m and not tickets:
            raise NotFoundError(f"no ticket #{m.group(1)}")
        results: list[RuleTest] = []
        for t in tickets:
            hits = 0
            for r in all_rules:
                try:
                    cond = _where(r, ctx)
                except (QueryError, ValueError) as exc:
                    results.append(RuleTest(t.number, r.name, r.event, [f"condition error: {exc}"]))
                    continue
                found = (
                    await session.execute(select(Ticket.id).where(Ticket.id == t.id, cond))
                ).first()
                if found is None:
                    continue
                hits += 1
                results.append(
                    RuleTest(t.number, r.name, r.event, await _preview(service, session, r, t, now))
                )
            if not hits:
                results.append(RuleTest(t.number))
        return results
