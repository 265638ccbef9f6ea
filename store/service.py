"""The one write path: validate, apply, audit, bump the version and append to the change feed."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import getaddresses
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import lifecycle, search_index
from store.bulk_ingest import MailBatchWriter
from store.engine import Database, NotFoundError, StoreError
from store.models import (
    ACTIVE_STATUSES,
    Agent,
    AgentQueue,
    Article,
    ArticleKind,
    Attachment,
    AuditEvent,
    Blob,
    CannedResponse,
    Counter,
    Customer,
    CustomerEmail,
    Draft,
    Event,
    Level,
    Organization,
    Outbox,
    Presence,
    Priority,
    Queue,
    SavedView,
    Setting,
    Status,
    Tag,
    Ticket,
    TicketLink,
    TicketTag,
    utcnow,
)
from store.msgid import outgoing_message_id

PRESENCE_TTL = timedelta(seconds=30)
DEFAULT_AUTOCLOSE_DAYS = 7


class ValidationError(StoreError):
    """The change is not valid (bad status transition, empty subject...)."""


class ConflictError(StoreError):
    """Someone else changed the ticket since it was read: nothing was overwritten."""

    def __init__(
        self, number: int, expected: int, current: int, changes: Sequence[str] = ()
    ) -> None:
        who = f" ({'; '.join(changes)})" if changes else ""
        super().__init__(
            f"ticket #{number} was changed by someone else since you loaded it "
            f"(version {expected} -> {current}){who}; reload and try again"
        )
        self.number = number
        self.expected = expected
        self.current = current
        self.changes = list(changes)


@dataclass(frozen=True)
class Actor:
    """Who is making a change: an agent, the mail daemon, a rule or the system."""

    kind: str
    name: str
    agent_id: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


SYSTEM = Actor("system", "helpdesk")
MAIL = Actor("mail", "sync")


@dataclass
class AttachmentInput:
    """A file to attach to a new article."""

    filename: str
    data: bytes
    mime_type: str = "application/octet-stream"
    inline: bool = False
    content_id: str | None = None


@dataclass
class ArticleInput:
    """The fields of a new thread entry."""

    kind: ArticleKind
    body: str = ""
    from_addr: str = ""
    to_addrs: str = ""
    cc_addrs: str = ""
    subject: str = ""
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None
    content_hash: str | None = None
    quoted_text: str = ""
    body_html: str | None = None
    language: str | None = None
    raw: bytes | None = None
    attachments: list[AttachmentInput] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass
class TicketDetail:
    """A ticket with its thread and history, for the console and `ticket show`."""

    ticket: Ticket
    articles: list[Article]
    audit: list[AuditEvent]
    links: list[tuple[str, int]]
    merged_into_number: int | None = None


_UNSET: Any = object()


def _fmt(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


class Service:
    """Every change to tickets and admin data goes through here."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    # ----------------------------------------------------------------- helpers
    async def _notify(self, session: AsyncSession, event_id: int) -> None:
        if self.db.dialect == "postgresql":
            await session.execute(select(func.pg_notify("helpdesk_events", str(event_id))))

    async def _event(
        self, session: AsyncSession, ticket_id: int | None, kind: str, actor: Actor
    ) -> None:
        ev = Event(ticket_id=ticket_id, kind=kind, actor=str(actor), created_at=self.clock())
        session.add(ev)
        await session.flush()
        await self._notify(session, ev.id)

    def _audit(
        self,
        session: AsyncSession,
        ticket_id: int | None,
        actor: Actor,
        action: str,
        fld: str | None = None,
        old: object = None,
        new: object = None,
    ) -> None:
        session.add(
            AuditEvent(
                ticket_id=ticket_id,
                actor=str(actor),
                action=action,
                field=fld,
                old_value=_fmt(old),
                new_value=_fmt(new),
                created_at=self.clock(),
            )
        )

    async def _next_number(self, session: AsyncSession) -> int:
        result = await session.execute(
            update(Counter)
            .where(Counter.name == "ticket")
            .values(value=Counter.value + 1)
            .returning(Counter.value)
        )
        value = result.scalar_one_or_none()
        if value is None:
            raise StoreError("the store has no ticket counter; run `helpdesk db upgrade`")
        return int(value)

    async def _ticket_for_update(self, session: AsyncSession, number: int) -> Ticket:
        stmt = select(Ticket).where(Ticket.number == number)
        if self.db.dialect == "postgresql":
            stmt = stmt.with_for_update(of=Ticket)
        ticket = (await session.execute(stmt)).unique().scalar_one_or_none()
        if ticket is None:
            raise NotFoundError(f"no ticket #{number}")
        return ticket

    async def _check_version(
        self, session: AsyncSession, ticket: Ticket, expected_version: int | None
    ) -> None:
        if expected_version is None or expected_version == ticket.version:
            return
        rows = (
            await session.execute(
                select(AuditEvent)
                .where(AuditEvent.ticket_id == ticket.id)
                .order_by(AuditEvent.id.desc())
                .limit(5)
            )
        ).scalars()
        changes = [f"{a.actor} {a.action} {a.field or ''}".strip() for a in rows]
        raise ConflictError(ticket.number, expected_version, ticket.version, changes)

    async def _sla(self, session: AsyncSession, ticket: Ticket) -> None:
        """Keep the ticket's SLA clocks and `next_due_at` current, in the same transaction."""
        from store import sla

        await sla.recompute_ticket(session, ticket, self.clock())

    def _touch(self, ticket: Ticket) -> None:
        ticket.updated_at = self.clock()
        ticket.version += 1

    async def _matrix(self, session: AsyncSession) -> dict[tuple[Level, Level], Priority]:
        value = await session.get(Setting, "priority_matrix")
        return lifecycle.matrix_from_setting(value.value if value else None)

    async def _store_blob(self, session: AsyncSession, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if await session.get(Blob, digest) is None:
            session.add(Blob(sha256=digest, size=len(data), data=data))
            await session.flush()
        return digest

    async def _agent_by_login(self, session: AsyncSession, login: str) -> Agent:
        agent = (
            await session.execute(select(Agent).where(Agent.login == login))
        ).scalar_one_or_none()
        if agent is None:
            raise NotFoundError(
                f"no agent {login!r}; add one with `helpdesk agent add {login} --name ...`"
            )
        return agent

    async def _queue_by_name(self, session: AsyncSession, name: str) -> Queue:
        queue = (
            await session.execute(select(Queue).where(func.lower(Queue.name) == name.lower()))
        ).scalar_one_or_none()
        if queue is None:
            raise NotFoundError(f"no queue {name!r}; add one with `helpdesk queue add {name!r}`")
        return queue

    async def _tag(self, session: AsyncSession, name: str) -> Tag:
        name = name.strip().lower()
        if not name or any(c.isspace() for c in name):
            raise ValidationError(f"invalid tag {name!r}: tags are single words")
        tag = (await session.execute(select(Tag).where(Tag.name == name))).scalar_one_or_none()
        if tag is None:
            tag = Tag(name=name)
            session.add(tag)
            await session.flush()
        return tag

    async def customer_for(self, session: AsyncSession, email: str, name: str = "") -> Customer:
        """Find the customer by any of their addresses, or create them (org by mail domain)."""
        email = email.strip().lower()
        if not email:
            email = "unknown@invalid"
        customer = (
            (await session.execute(select(Customer).where(Customer.email == email)))
            .unique()
            .scalar_one_or_none()
        )
        if customer is None:
            alt = (
                await session.execute(select(CustomerEmail).where(CustomerEmail.email == email))
            ).scalar_one_or_none()
            if alt is not None:
                customer = await session.get(Customer, alt.customer_id)
        if customer is not None:
            if name and not customer.name:
                customer.name = name
            return customer
        domain = email.rpartition("@")[2]
        org_id = None
        if domain:
            for org in (await session.execute(select(Organization))).scalars():
                if domain in [d.lower() for d in org.domains]:
                    org_id = org.id
                    break
        customer = Customer(email=email, name=name, organization_id=org_id, created_at=self.clock())
        session.add(customer)
        await session.flush()
        return customer

    async def _add_article(
        self, session: AsyncSession, ticket: Ticket, actor: Actor, data: ArticleInput
    ) -> Article:
        now = data.created_at or self.clock()
        raw_sha = await self._store_blob(session, data.raw) if data.raw is not None else None
        article = Article(
            ticket_id=ticket.id,
            kind=data.kind.value,
            author_agent_id=actor.agent_id,
            author_customer_id=ticket.customer_id if data.kind is ArticleKind.EMAIL_IN else None,
            from_addr=data.from_addr,
            to_addrs=data.to_addrs,
            cc_addrs=data.cc_addrs,
            subject=data.subject,
            message_id=data.message_id,
            in_reply_to=data.in_reply_to,
            references=data.references,
            content_hash=data.content_hash,
            body_text=data.body,
            quoted_text=data.quoted_text,
            body_html=data.body_html,
            language=data.language,
            raw_blob=raw_sha,
            meta=data.meta,
            created_at=now,
        )
        session.add(article)
        await session.flush()
        for att in data.attachments:
            sha = await self._store_blob(session, att.data)
            session.add(
                Attachment(
                    article_id=article.id,
                    filename=att.filename,
                    mime_type=att.mime_type,
                    size=len(att.data),
                    sha256=sha,
                    inline=att.inline,
                    content_id=att.content_id,
                )
            )
        if article.body_text:
            await search_index.index_articles(
                session,
                self.db.dialect,
                [search_index.ArticleText(article.ticket_id, article.id, article.body_text)],
            )
        return article

    async def _after_commit(self, event: str, number: int, actor: Actor) -> list[str]:
        """Run the rules for a committed change; a broken rule never fails the change itself."""
        if actor.kind == "rule":
            return []
        from store.rules import run_rules

        try:
            return await run_rules(self, event, number, self.clock())
        except Exception:  # noqa: BLE001 - logged, and the triggering change stays committed
            logging.getLogger(__name__).exception("rules failed on #%s (%s)", number, event)
            return []

    # ----------------------------------------------------------------- tickets
    async def create_ticket(
        self,
        actor: Actor,
        *,
        subject: str,
        customer_email: str,
        customer_name: str = "",
        article: ArticleInput | None = None,
        queue: str | None = None,
        priority: Priority | None = None,
        impact: Level = Level.MEDIUM,
        urgency: Level = Level.MEDIUM,
        tags: Iterable[str] = (),
        assignee: str | None = None,
        language: str | None = None,
        channel: str = "email",
        type: str | None = None,
        linked_from: int | None = None,
        session: AsyncSession | None = None,
    ) -> Ticket:
        """Open a new ticket with its first article."""
        if session is None:
            async with self.db.write() as s:
                created = await self.create_ticket(
                    actor,
                    subject=subject,
                    customer_email=customer_email,
                    customer_name=customer_name,
                    article=article,
                    queue=queue,
                    priority=priority,
                    impact=impact,
                    urgency=urgency,
                    tags=tags,
                    assignee=assignee,
                    language=language,
                    channel=channel,
                    type=type,
                    linked_from=linked_from,
                    session=s,
                )
            if await self._after_commit("created", created.number, actor):
                created = await self.get_ticket(created.number)
            return created
        now = article.created_at if article and article.created_at else self.clock()
        customer = await self.customer_for(session, customer_email, customer_name)
        q = await self._queue_by_name(session, queue) if queue else None
        agent = await self._agent_by_login(session, assignee) if assignee else None
        matrix = await self._matrix(session)
        derived = lifecycle.derive_priority(impact, urgency, matrix)
        number = await self._next_number(session)
        from_customer = article is None or article.kind is ArticleKind.EMAIL_IN
        ticket = Ticket(
            number=number,
            subject=subject.strip() or "(no subject)",
            status=Status.NEW.value,
            priority=int(priority if priority is not None else derived),
            impact=int(impact),
            urgency=int(urgency),
            priority_override_by=str(actor)
            if priority is not None and priority != derived
            else None,
            type=type,
            queue_id=q.id if q else None,
            assignee_id=agent.id if agent else None,
            customer_id=customer.id,
            organization_id=customer.organization_id,
            language=language or (article.language if article else None),
            channel=channel,
            created_at=now,
            updated_at=now,
            last_customer_at=now if from_customer else None,
            linked_from_id=None,
        )
        session.add(ticket)
        await session.flush()
        await search_index.index_ticket(session, self.db.dialect, ticket.id, ticket.subject)
        if article is not None:
            await self._add_article(session, ticket, actor, article)
        for name in tags:
            tag = await self._tag(session, name)
            session.add(TicketTag(ticket_id=ticket.id, tag_id=tag.id))
        if linked_from is not None:
            old = await self._ticket_for_update(session, linked_from)
            ticket.linked_from_id = old.id
            session.add(TicketLink(ticket_id=ticket.id, other_id=old.id, kind="follow-up-of"))
            session.add(TicketLink(ticket_id=old.id, other_id=ticket.id, kind="followed-up-by"))
        self._audit(session, ticket.id, actor, "created", None, None, f"#{number}")
        await self._event(session, ticket.id, "created", actor)
        await self._sla(session, ticket)
        await session.flush()
        await session.refresh(ticket)
        return ticket

    async def update_ticket(
        self,
        actor: Actor,
        number: int,
        *,
        expected_version: int | None = None,
        status: Status | None = None,
        priority: Priority | str | None = None,
        impact: Level | None = None,
        urgency: Level | None = None,
        assignee: str | None = _UNSET,
        queue: str | None = _UNSET,
        tags_add: Iterable[str] = (),
        tags_remove: Iterable[str] = (),
        postpone_until: datetime | None = None,
        subject: str | None = None,
        type: str | None = _UNSET,
        session: AsyncSession | None = None,
    ) -> Ticket:
        """Change fields of a ticket; refused with ConflictError if `expected_version` is stale.

        `priority="auto"` drops an agent's override and goes back to the matrix.
        `assignee=None` unassigns; `queue=None` removes the queue.
        """
        if session is None:
            async with self.db.write() as s:
                updated = await self.update_ticket(
                    actor,
                    number,
                    expected_version=expected_version,
                    status=status,
                    priority=priority,
                    impact=impact,
                    urgency=urgency,
                    assignee=assignee,
                    queue=queue,
                    tags_add=tags_add,
                    tags_remove=tags_remove,
                    postpone_until=postpone_until,
                    subject=subject,
                    type=type,
                    session=s,
                )
                before = s.info.get("version_before")
            if before != updated.version and await self._after_commit("updated", number, actor):
                updated = await self.get_ticket(number)
            return updated
        t = await self._ticket_for_update(session, number)
        session.info["version_before"] = t.version
        await self._check_version(session, t, expected_version)
        changed = False
        now = self.clock()

        if postpone_until is not None:
            if postpone_until <= now:
                raise ValidationError("the postpone time must be in the future")
            if status is None:
                status = Status.POSTPONED
            elif status is not Status.POSTPONED:
                raise ValidationError(
                    "--postpone sets the status to postponed; do not give another status"
                )
        if (
            status is Status.POSTPONED
            and postpone_until is None
            and t.status != Status.POSTPONED.value
        ):
            raise ValidationError("postponing needs a wake time (e.g. --postpone 2d)")

        if status is not None and status.value != t.status:
            try:
                lifecycle.check_transition(Status(t.status), status)
            except lifecycle.TransitionError as exc:
                raise ValidationError(f"#{number}: {exc}") from None
            self._apply_status(session, t, actor, status, now)
            changed = True
        if postpone_until is not None:
            self._audit(
                session,
                t.id,
                actor,
                "postponed",
                "postponed_until",
                t.postponed_until,
                postpone_until,
            )
            t.postponed_until = postpone_until
            changed = True

        matrix = await self._matrix(session)
        if impact is not None and int(impact) != t.impact:
            self._audit(
                session, t.id, actor, "changed", "impact", Level(t.impact).label, impact.label
            )
            t.impact = int(impact)
            changed = True
        if urgency is not None and int(urgency) != t.urgency:
            self._audit(
                session, t.id, actor, "changed", "urgency", Level(t.urgency).label, urgency.label
            )
            t.urgency = int(urgency)
            changed = True
        derived = lifecycle.derive_priority(Level(t.impact), Level(t.urgency), matrix)
        new_priority: Priority | None = None
        if priority == "auto":
            if t.priority_override_by is not None:
                self._audit(
                    session,
                    t.id,
                    actor,
                    "override-cleared",
                    "priority",
                    t.priority_override_by,
                    None,
                )
                t.priority_override_by = None
                changed = True
            new_priority = derived
        elif isinstance(priority, Priority):
            new_priority = priority
            override = None if priority == derived else str(actor)
            if override != t.priority_override_by and (override or t.priority_override_by):
                self._audit(
                    session, t.id, actor, "override", "priority", t.priority_override_by, override
                )
                t.priority_override_by = override
                changed = True
        elif t.priority_override_by is None:
            new_priority = derived
        if new_priority is not None and int(new_priority) != t.priority:
            self._audit(
                session,
                t.id,
                actor,
                "changed",
                "priority",
                Priority(t.priority).label,
                new_priority.label,
            )
            t.priority = int(new_priority)
            changed = True

        if assignee is not _UNSET:
            agent = await self._agent_by_login(session, assignee) if assignee else None
            if agent is not None and not agent.active:
                raise ValidationError(f"agent {agent.login!r} is disabled")
            new_id = agent.id if agent else None
            if new_id != t.assignee_id:
                old = t.assignee.login if t.assignee else None
                self._audit(
                    session,
                    t.id,
                    actor,
                    "assigned",
                    "assignee",
                    old,
                    agent.login if agent else None,
                )
                t.assignee_id = new_id
                changed = True
        if queue is not _UNSET:
            q = await self._queue_by_name(session, queue) if queue else None
            new_qid = q.id if q else None
            if new_qid != t.queue_id:
                old_q = t.queue.name if t.queue else None
                self._audit(session, t.id, actor, "changed", "queue", old_q, q.name if q else None)
                t.queue_id = new_qid
                changed = True
        if subject is not None and subject.strip() and subject.strip() != t.subject:
            self._audit(session, t.id, actor, "changed", "subject", t.subject, subject.strip())
            t.subject = subject.strip()
            await search_index.index_ticket(session, self.db.dialect, t.id, t.subject, replace=True)
            changed = True
        if type is not _UNSET and type != t.type:
            self._audit(session, t.id, actor, "changed", "type", t.type, type)
            t.type = type
            changed = True

        current = {tag.name for tag in t.tags}
        for name in tags_add:
            tag = await self._tag(session, name)
            if tag.name not in current:
                session.add(TicketTag(ticket_id=t.id, tag_id=tag.id))
                self._audit(session, t.id, actor, "tagged", "tags", None, tag.name)
                current.add(tag.name)
                changed = True
        for name in tags_remove:
            name = name.strip().lower()
            if name in current:
                tag_id = (
                    await session.execute(select(Tag.id).where(Tag.name == name))
                ).scalar_one()
                await session.execute(
                    delete(TicketTag).where(TicketTag.ticket_id == t.id, TicketTag.tag_id == tag_id)
                )
                self._audit(session, t.id, actor, "untagged", "tags", name, None)
                current.discard(name)
                changed = True

        if changed:
            self._touch(t)
            await self._sla(session, t)
            await self._event(session, t.id, "updated", actor)
            await session.flush()
            await session.refresh(t)
        return t

    def _apply_status(
        self, session: AsyncSession, t: Ticket, actor: Actor, status: Status, now: datetime
    ) -> None:
        self._audit(session, t.id, actor, "status", "status", t.status, status.value)
        t.status = status.value
        if status is Status.SOLVED:
            t.solved_at = now
        elif status is Status.CLOSED:
            t.closed_at = now
            t.solved_at = t.solved_at or now
        elif status in ACTIVE_STATUSES:
            t.solved_at = None
        if status is not Status.POSTPONED:
            t.postponed_until = None

    async def add_reply(
        self,
        actor: Actor,
        number: int,
        body: str,
        *,
        status: Status | None = None,
        to_addrs: str | None = None,
        cc_addrs: str = "",
        attachments: Sequence[AttachmentInput] = (),
        expected_version: int | None = None,
        domain: str = "helpdesk.invalid",
    ) -> Article:
        """An agent's reply to the customer: stored and queued for delivery; status -> answered."""
        if not body.strip():
            raise ValidationError("the reply is empty")
        async with self.db.write() as session:
            t = await self._ticket_for_update(session, number)
            await self._check_version(session, t, expected_version)
            if Status(t.status) in (Status.CLOSED, Status.MERGED):
                raise ValidationError(f"#{number} is {t.status}; it cannot be replied to")
            target = status or Status.ANSWERED
            now = self.clock()
            customer = t.customer
            msgid = await outgoing_message_id(session, domain, t.number)
            refs = await self._thread_references(session, t.id)
            article = await self._add_article(
                session,
                t,
                actor,
                ArticleInput(
                    kind=ArticleKind.EMAIL_OUT,
                    body=body,
                    to_addrs=to_addrs
                    if to_addrs is not None
                    else (customer.email if customer else ""),
                    cc_addrs=cc_addrs,
                    subject=f"Re: {t.subject}"
                    if not t.subject.lower().startswith("re:")
                    else t.subject,
                    message_id=msgid,
                    in_reply_to=refs[-1] if refs else None,
                    references=" ".join(f"<{r}>" for r in refs) or None,
                    attachments=list(attachments),
                    # the same instant as first_response_at: the reply itself is not a
                    # later contact (first-contact resolution compares the two)
                    created_at=now,
                ),
            )
            article.delivery_status = "queued"
            session.add(
                Outbox(
                    article_id=article.id,
                    ticket_id=t.id,
                    message_id=msgid,
                    rcpt_to=[
                        addr.strip()
                        for _name, addr in getaddresses([article.to_addrs, cc_addrs])
                        if addr.strip()
                    ],
                    kind="reply",
                    status="queued",
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            if t.first_response_at is None:
                t.first_response_at = now
            if target.value != t.status:
                try:
                    lifecycle.check_transition(Status(t.status), target)
                except lifecycle.TransitionError as exc:
                    raise ValidationError(f"#{number}: {exc}") from None
                self._apply_status(session, t, actor, target, now)
            self._audit(session, t.id, actor, "replied", None, None, f"article {article.id}")
            self._touch(t)
            await self._sla(session, t)
            await self._event(session, t.id, "article", actor)
            return article

    async def _thread_references(self, session: AsyncSession, ticket_id: int) -> list[str]:
        rows = (
            await session.execute(
                select(Article.message_id)
                .where(Article.ticket_id == ticket_id, Article.message_id.is_not(None))
                .order_by(Article.created_at, Article.id)
            )
        ).scalars()
        return [r for r in rows if r][-20:]

    async def queue_automatic_mail(
        self,
        session: AsyncSession,
        ticket: Ticket,
        *,
        outbox_kind: str,
        to: str,
        subject: str,
        body: str,
        meta: dict[str, Any],
        domain: str,
        now: datetime,
        from_addr: str | None = None,
        references: Sequence[str] | None = None,
        article_kind: ArticleKind = ArticleKind.EMAIL_OUT,
    ) -> Article:
        """Store a mail nobody typed (an acknowledgement, a rule's canned reply, a survey) as an
        outbound article and queue it for delivery, inside the caller's transaction.

        It threads under `references` (default: the ticket's own thread) with a verifiable
        Message-ID of ours. Audit rows and change-feed events stay with the caller, which
        knows why the mail was sent.
        """
        refs = (
            list(references)
            if references is not None
            else await self._thread_references(session, ticket.id)
        )
        msgid = await outgoing_message_id(session, domain, ticket.number)
        article = Article(
            ticket_id=ticket.id,
            kind=article_kind.value,
            from_addr=from_addr,
            to_addrs=to,
            subject=subject,
            message_id=msgid,
            in_reply_to=refs[-1] if refs else None,
            references=" ".join(f"<{r}>" for r in refs) or None,
            body_text=body,
            delivery_status="queued",
            meta=meta,
            created_at=now,
        )
        session.add(article)
        await session.flush()
        session.add(
            Outbox(
                article_id=article.id,
                ticket_id=ticket.id,
                message_id=msgid,
                rcpt_to=[to],
                rcpt_to_key=to.lower(),
                kind=outbox_kind,
                status="queued",
                next_attempt_at=now,
                created_at=now,
            )
        )
        return article

    async def add_note(
        self,
        actor: Actor,
        number: int,
        body: str,
        *,
        kind: ArticleKind = ArticleKind.NOTE,
        expected_version: int | None = None,
    ) -> Article:
        """An internal note (or a phone/system entry); never sent to the customer."""
        if not body.strip():
            raise ValidationError("the note is empty")
        async with self.db.write() as session:
            t = await self._ticket_for_update(session, number)
            await self._check_version(session, t, expected_version)
            article = await self._add_article(session, t, actor, ArticleInput(kind=kind, body=body))
            self._audit(session, t.id, actor, "noted", None, None, f"article {article.id}")
            self._touch(t)
            await self._event(session, t.id, "article", actor)
            return article

    async def add_customer_message(
        self, actor: Actor, number: int, data: ArticleInput, *, session: AsyncSession | None = None
    ) -> tuple[Ticket, Article, bool]:
        """A customer's mail on an existing ticket: reopens it; on a closed ticket opens a linked one.

        Returns (ticket, article, created_new_ticket).
        """
        if session is None:
            async with self.db.write() as s:
                result = await self.add_customer_message(actor, number, data, session=s)
            event = "created" if result[2] else "customer_replied"
            if await self._after_commit(event, result[0].number, actor):
                result = (await self.get_ticket(result[0].number), result[1], result[2])
            return result
        t = await self._ticket_for_update(session, number)
        if t.status == Status.MERGED.value and t.merged_into_id is not None:
            target = await session.get(Ticket, t.merged_into_id)
            assert target is not None
            return await self.add_customer_message(actor, target.number, data, session=session)
        if t.status == Status.CLOSED.value:
            customer = t.customer
            new = await self.create_ticket(
                actor,
                subject=data.subject or t.subject,
                customer_email=customer.email if customer else data.from_addr,
                article=data,
                queue=t.queue.name if t.queue else None,
                language=data.language,
                linked_from=t.number,
                session=session,
            )
            article = (
                (await session.execute(select(Article).where(Article.ticket_id == new.id)))
                .scalars()
                .first()
            )
            assert article is not None
            return new, article, True
        now = data.created_at or self.clock()
        article = await self._add_article(session, t, actor, data)
        if Status(t.status) in lifecycle.REOPENED_BY_CUSTOMER and t.status != Status.OPEN.value:
            was_postponed = t.status == Status.POSTPONED.value
            self._apply_status(session, t, actor, Status.OPEN, now)
            if was_postponed:
                self._audit(
                    session, t.id, actor, "woken", "status", "postponed", "customer replied"
                )
        t.last_customer_at = now
        if data.language:
            t.language = data.language
        self._audit(session, t.id, actor, "customer-replied", None, None, f"article {article.id}")
        before = t.updated_at
        self._touch(t)
        if data.created_at is not None and before is not None:
            t.updated_at = max(before, data.created_at)  # an imported reply: its own date
        await self._sla(session, t)
        await self._event(session, t.id, "article", actor)
        await session.flush()
        return t, article, False

    # ----------------------------------------------------------------- mail ingest
    def mail_batch(self, session: AsyncSession) -> MailBatchWriter:
        """A bulk writer for many mails in the caller's write transaction (store/bulk_ingest.py):
        the same rows as `create_ticket` / `add_customer_message` / `attach_mail`, in bulk."""
        return MailBatchWriter(self, session)

    async def priority_matrix_in(
        self, session: AsyncSession
    ) -> dict[tuple[Level, Level], Priority]:
        """The team's priority matrix, read in the caller's transaction."""
        return await self._matrix(session)

    async def notify_event(self, session: AsyncSession, event_id: int) -> None:
        """Wake change-feed listeners (PostgreSQL NOTIFY; SQLite readers poll)."""
        await self._notify(session, event_id)

    async def attach_mail(
        self, actor: Actor, number: int, data: ArticleInput, why: str, *, session: AsyncSession
    ) -> tuple[Ticket, Article]:
        """Add a mail to a ticket (following merges) without changing its status: bounces,
        auto-replies, satisfaction ratings. Audited as ``mail-attached`` with `why`."""
        ticket = await self._ticket_for_update(session, number)
        hops = 0
        while (
            ticket.status == Status.MERGED.value and ticket.merged_into_id is not None and hops < 10
        ):
            target = await session.get(Ticket, ticket.merged_into_id)
            if target is None:
                break
            ticket = await self._ticket_for_update(session, target.number)
            hops += 1
        article = await self._add_article(session, ticket, actor, data)
        self._audit(
            session, ticket.id, actor, "mail-attached", None, None, f"article {article.id} ({why})"
        )
        self._touch(ticket)
        await self._event(session, ticket.id, "article", actor)
        return ticket, article

    async def append_article(
        self, session: AsyncSession, ticket: Ticket, actor: Actor, data: ArticleInput
    ) -> Article:
        """Add an article with no audit line, event or version bump of its own (for notes that
        belong to a change already audited, e.g. what an incoming mail left out)."""
        return await self._add_article(session, ticket, actor, data)

    async def merge(self, actor: Actor, source: int, into: int) -> Ticket:
        """Move the history of `source` into `into`; leave `source` as merged with a pointer."""
        if source == into:
            raise ValidationError("cannot merge a ticket into itself")
        async with self.db.write() as session:
            src = await self._ticket_for_update(session, source)
            dst = await self._ticket_for_update(session, into)
            if src.status == Status.MERGED.value:
                raise ValidationError(f"#{source} is already merged")
            if dst.status in (Status.MERGED.value, Status.CLOSED.value):
                raise ValidationError(f"cannot merge into #{into}: it is {dst.status}")
            await session.execute(
                update(Article).where(Article.ticket_id == src.id).values(ticket_id=dst.id)
            )
            await search_index.move_articles(session, self.db.dialect, src.id, dst.id)
            for tag in src.tags:
                if tag.name not in {x.name for x in dst.tags}:
                    session.add(TicketTag(ticket_id=dst.id, tag_id=tag.id))
            await self._add_article(
                session,
                dst,
                actor,
                ArticleInput(
                    kind=ArticleKind.SYSTEM,
                    body=f"Ticket #{src.number} ({src.subject}) was merged into this one.",
                ),
            )
            note = Article(
                ticket_id=src.id,
                kind=ArticleKind.SYSTEM.value,
                author_agent_id=actor.agent_id,
                body_text=f"Merged into #{dst.number}.",
                created_at=self.clock(),
            )
            session.add(note)
            self._audit(
                session, src.id, actor, "merged", "status", src.status, f"merged into #{dst.number}"
            )
            self._audit(session, dst.id, actor, "merged-in", None, None, f"#{src.number}")
            src.status = Status.MERGED.value
            src.merged_into_id = dst.id
            src.postponed_until = None
            if src.last_customer_at and (
                dst.last_customer_at is None or src.last_customer_at > dst.last_customer_at
            ):
                dst.last_customer_at = src.last_customer_at
            self._touch(src)
            self._touch(dst)
            await self._sla(session, src)
            await self._sla(session, dst)
            await self._event(session, src.id, "merged", actor)
            await self._event(session, dst.id, "article", actor)
            await session.flush()
            await session.refresh(dst)
            return dst

    async def tick(self, now: datetime | None = None) -> dict[str, list[int]]:
        """Time-based lifecycle: wake postponed tickets, close solved ones after N quiet days."""
        now = now or self.clock()
        woken: list[int] = []
        closed: list[int] = []
        async with self.db.write() as session:
            days_setting = await session.get(Setting, "autoclose_days")
            days = int(days_setting.value) if days_setting else DEFAULT_AUTOCLOSE_DAYS
            due = (
                (
                    await session.execute(
                        select(Ticket).where(
                            Ticket.status == Status.POSTPONED.value, Ticket.postponed_until <= now
                        )
                    )
                )
                .unique()
                .scalars()
                .all()
            )
            for t in due:
                self._audit(session, t.id, SYSTEM, "woken", "status", "postponed", "open")
                t.status = Status.OPEN.value
                t.postponed_until = None
                self._touch(t)
                await self._sla(session, t)
                await self._event(session, t.id, "updated", SYSTEM)
                woken.append(t.number)
            cutoff = now - timedelta(days=days)
            stale = (
                (
                    await session.execute(
                        select(Ticket).where(
                            Ticket.status == Status.SOLVED.value, Ticket.solved_at <= cutoff
                        )
                    )
                )
                .unique()
                .scalars()
                .all()
            )
            for t in stale:
                if t.last_customer_at and t.solved_at and t.last_customer_at > t.solved_at:
                    continue
                self._audit(session, t.id, SYSTEM, "auto-closed", "status", "solved", "closed")
                t.status = Status.CLOSED.value
                t.closed_at = now
                self._touch(t)
                await self._sla(session, t)
                await self._event(session, t.id, "updated", SYSTEM)
                closed.append(t.number)
        return {"woken": woken, "closed": closed}

    # ----------------------------------------------------------------- reads
    async def get_ticket(self, number: int) -> Ticket:
        async with self.db.read() as session:
            t = (
                (await session.execute(select(Ticket).where(Ticket.number == number)))
                .unique()
                .scalar_one_or_none()
            )
            if t is None:
                raise NotFoundError(f"no ticket #{number}")
            return t

    async def ticket_detail(self, number: int) -> TicketDetail:
        """The ticket, its thread in order, its audit trail and links."""
        async with self.db.read() as session:
            t = (
                (await session.execute(select(Ticket).where(Ticket.number == number)))
                .unique()
                .scalar_one_or_none()
            )
            if t is None:
                raise NotFoundError(f"no ticket #{number}")
            articles = list(
                (
                    await session.execute(
                        select(Article)
                        .where(Article.ticket_id == t.id)
                        .order_by(Article.created_at, Article.id)
                    )
                )
                .unique()
                .scalars()
            )
            audit = list(
                (
                    await session.execute(
                        select(AuditEvent)
                        .where(AuditEvent.ticket_id == t.id)
                        .order_by(AuditEvent.id)
                    )
                ).scalars()
            )
            link_rows = (
                await session.execute(
                    select(TicketLink.kind, Ticket.number)
                    .join(Ticket, Ticket.id == TicketLink.other_id)
                    .where(TicketLink.ticket_id == t.id)
                )
            ).all()
            merged_into = None
            if t.merged_into_id:
                merged_into = (
                    await session.execute(
                        select(Ticket.number).where(Ticket.id == t.merged_into_id)
                    )
                ).scalar_one_or_none()
            return TicketDetail(t, articles, audit, [(k, n) for k, n in link_rows], merged_into)

    async def blob(self, sha256: str) -> bytes:
        async with self.db.read() as session:
            b = await session.get(Blob, sha256)
            if b is None:
                raise NotFoundError(f"no stored content {sha256[:12]}")
            return b.data

    async def customer_tickets(self, customer_id: int, limit: int = 50) -> list[Ticket]:
        async with self.db.read() as session:
            return list(
                (
                    await session.execute(
                        select(Ticket)
                        .where(Ticket.customer_id == customer_id)
                        .order_by(Ticket.updated_at.desc(), Ticket.id.desc())
                        .limit(limit)
                    )
                )
                .unique()
                .scalars()
            )

    async def last_event_id(self) -> int:
        async with self.db.read() as session:
            return int(
                (await session.execute(select(func.coalesce(func.max(Event.id), 0)))).scalar_one()
            )

    async def events_since(self, last_id: int, limit: int = 1000) -> list[Event]:
        async with self.db.read() as session:
            return list(
                (
                    await session.execute(
                        select(Event).where(Event.id > last_id).order_by(Event.id).limit(limit)
                    )
                ).scalars()
            )

    # ----------------------------------------------------------------- agents & queues
    async def add_agent(
        self,
        login: str,
        name: str,
        email: str | None = None,
        *,
        admin: bool = False,
        queues: Sequence[str] = (),
        languages: Sequence[str] = (),
        skills: Sequence[str] = (),
    ) -> Agent:
        login = login.strip()
        if not login or any(c.isspace() for c in login):
            raise ValidationError(f"invalid login {login!r}")
        async with self.db.write() as session:
            exists = (
                await session.execute(select(Agent).where(Agent.login == login))
            ).scalar_one_or_none()
            if exists:
                raise ValidationError(f"agent {login!r} already exists")
            agent = Agent(
                login=login,
                name=name or login,
                email=email,
                role="admin" if admin else "agent",
                languages=list(languages),
                skills=list(skills),
                created_at=self.clock(),
            )
            session.add(agent)
            await session.flush()
            for qname in queues:
                q = await self._queue_by_name(session, qname)
                session.add(AgentQueue(agent_id=agent.id, queue_id=q.id))
            self._audit(session, None, SYSTEM, "agent-added", "agent", None, login)
            await self._event(session, None, "agent", SYSTEM)
            return agent

    async def update_agent(
        self,
        login: str,
        *,
        name: str | None = None,
        email: str | None = None,
        admin: bool | None = None,
        queues: Sequence[str] | None = None,
        languages: Sequence[str] | None = None,
        skills: Sequence[str] | None = None,
    ) -> Agent:
        """Change only the given fields of an agent (lists replace); each change is audited."""
        async with self.db.write() as session:
            agent = await self._agent_by_login(session, login)
            changes: list[tuple[str, object, object]] = []
            if name is not None and name.strip() and name != agent.name:
                changes.append(("name", agent.name, name))
                agent.name = name
            if email is not None and (email or None) != agent.email:
                changes.append(("email", agent.email, email or None))
                agent.email = email or None
            if admin is not None and (agent.role == "admin") != admin:
                role = "admin" if admin else "agent"
                changes.append(("role", agent.role, role))
                agent.role = role
            for fld, new in (("languages", languages), ("skills", skills)):
                if new is not None:
                    cleaned = list(dict.fromkeys(x.strip() for x in new if x.strip()))
                    if cleaned != list(getattr(agent, fld) or []):
                        changes.append(
                            (fld, ",".join(getattr(agent, fld) or []), ",".join(cleaned))
                        )
                        setattr(agent, fld, cleaned)
            if queues is not None:
                rows = [await self._queue_by_name(session, q) for q in dict.fromkeys(queues)]
                old = sorted(q.name for q in agent.queues)
                if sorted(q.name for q in rows) != old:
                    changes.append(
                        ("queues", ",".join(old), ",".join(sorted(q.name for q in rows)))
                    )
                    agent.queues = rows
            for fld, old_value, new_value in changes:
                self._audit(
                    session,
                    None,
                    SYSTEM,
                    "agent-updated",
                    f"agent.{fld}",
                    f"{login}: {old_value if old_value is not None else '-'}",
                    f"{login}: {new_value if new_value is not None else '-'}",
                )
            if changes:
                await self._event(session, None, "agent", SYSTEM)
            await session.flush()
            return agent

    async def agent(self, login: str) -> Agent:
        async with self.db.read() as session:
            return await self._agent_by_login(session, login)

    async def list_agents(self, include_inactive: bool = True) -> list[Agent]:
        async with self.db.read() as session:
            stmt = select(Agent).order_by(Agent.login)
            if not include_inactive:
                stmt = stmt.where(Agent.active.is_(True))
            return list((await session.execute(stmt)).scalars())

    async def set_agent_active(self, login: str, active: bool) -> Agent:
        async with self.db.write() as session:
            agent = await self._agent_by_login(session, login)
            agent.active = active
            self._audit(
                session,
                None,
                SYSTEM,
                "agent-enabled" if active else "agent-disabled",
                "agent",
                None,
                login,
            )
            return agent

    async def add_queue(self, name: str, addresses: Sequence[str] = ()) -> Queue:
        name = name.strip()
        if not name:
            raise ValidationError("a queue needs a name")
        async with self.db.write() as session:
            q = Queue(
                name=name, addresses=[a.strip().lower() for a in addresses], created_at=self.clock()
            )
            session.add(q)
            try:
                await session.flush()
            except IntegrityError:
                raise ValidationError(f"queue {name!r} already exists") from None
            return q

    async def update_queue(
        self,
        name: str,
        *,
        ack: str | None = None,
        no_ack: bool = False,
        ack_limit: int | None = None,
        addresses: Sequence[str] | None = None,
    ) -> tuple[Queue, list[str]]:
        """Change a queue's addresses and acknowledgement; only what is given changes.

        `ack` names the shared canned response new mail tickets are acknowledged with (read
        by mail_sync.autoreply). Returns the queue and the changes made (audited).
        """
        if ack is not None and no_ack:
            raise ValidationError("give either an acknowledgement template or none, not both")
        async with self.db.write() as session:
            q = await self._queue_by_name(session, name)
            settings = dict(q.settings or {})
            changes: list[str] = []
            if ack is not None:
                if await _owned_by_name(session, CannedResponse, ack, None) is None:
                    raise ValidationError(
                        f"no shared canned response {ack!r}; "
                        f"add one with `helpdesk canned add {ack!r} --body ...`"
                    )
                settings["ack"] = ack
                changes.append(f"ack={ack}")
            if no_ack and "ack" in settings:
                settings.pop("ack")
                changes.append("ack=-")
            if ack_limit is not None:
                if ack_limit < 0:
                    raise ValidationError("the acknowledgement limit cannot be negative")
                settings["ack_limit_per_hour"] = ack_limit
                changes.append(f"ack_limit_per_hour={ack_limit}")
            if addresses is not None:
                new = list(dict.fromkeys(a.strip().lower() for a in addresses if a.strip()))
                if new != list(q.addresses or []):
                    q.addresses = new
                    changes.append(f"addresses={','.join(new) or '-'}")
            q.settings = settings
            if changes:
                self._audit(
                    session,
                    None,
                    SYSTEM,
                    "queue-settings",
                    "queue",
                    None,
                    f"{q.name}: {' '.join(changes)}",
                )
                await self._event(session, None, "queue", SYSTEM)
            return q, changes

    async def list_queues(self) -> list[Queue]:
        async with self.db.read() as session:
            return list((await session.execute(select(Queue).order_by(Queue.name))).scalars())

    async def add_organization(
        self, name: str, domains: Sequence[str] = (), tier: str | None = None
    ) -> Organization:
        async with self.db.write() as session:
            org = Organization(
                name=name,
                domains=[d.lower().lstrip("@") for d in domains],
                tier=tier,
                created_at=self.clock(),
            )
            session.add(org)
            try:
                await session.flush()
            except IntegrityError:
                raise ValidationError(f"organization {name!r} already exists") from None
            return org

    # ----------------------------------------------------------------- canned responses & views
    async def add_canned(self, name: str, body: str, owner: str | None = None) -> CannedResponse:
        async with self.db.write() as session:
            owner_id = (await self._agent_by_login(session, owner)).id if owner else None
            existing = await _owned_by_name(session, CannedResponse, name, owner_id)
            if existing is not None:
                existing.body = body
                return existing
            c = CannedResponse(name=name, body=body, owner_id=owner_id, created_at=self.clock())
            session.add(c)
            return c

    async def list_canned(self, agent_id: int | None = None) -> list[CannedResponse]:
        async with self.db.read() as session:
            stmt = select(CannedResponse).order_by(CannedResponse.name)
            if agent_id is not None:
                stmt = stmt.where(
                    (CannedResponse.owner_id.is_(None)) | (CannedResponse.owner_id == agent_id)
                )
            return list((await session.execute(stmt)).scalars())

    async def add_view(self, name: str, query: str, owner: str | None = None) -> SavedView:
        from store.query import parse  # validate before saving

        parse(query)
        async with self.db.write() as session:
            owner_id = (await self._agent_by_login(session, owner)).id if owner else None
            existing = await _owned_by_name(session, SavedView, name, owner_id)
            if existing is not None:
                existing.query = query
                return existing
            v = SavedView(name=name, query=query, owner_id=owner_id, created_at=self.clock())
            session.add(v)
            await self._event(session, None, "view", SYSTEM)
            return v

    async def list_views(self, agent_id: int | None = None) -> list[SavedView]:
        async with self.db.read() as session:
            stmt = select(SavedView).order_by(
                SavedView.owner_id.is_(None), SavedView.position, SavedView.name
            )
            if agent_id is not None:
                stmt = stmt.where((SavedView.owner_id.is_(None)) | (SavedView.owner_id == agent_id))
            return list((await session.execute(stmt)).scalars())

    async def remove_view(self, view_id: int) -> None:
        async with self.db.write() as session:
            await session.execute(delete(SavedView).where(SavedView.id == view_id))

    # ----------------------------------------------------------------- settings
    async def get_setting(self, key: str, default: Any = None) -> Any:
        async with self.db.read() as session:
            s = await session.get(Setting, key)
            return s.value if s else default

    async def set_setting(self, key: str, value: Any) -> None:
        async with self.db.write() as session:
            s = await session.get(Setting, key)
            if s is None:
                session.add(Setting(key=key, value=value))
            else:
                s.value = value
            self._audit(session, None, SYSTEM, "setting", key, None, value)
            await self._event(session, None, "setting", SYSTEM)

    async def priority_matrix(self) -> dict[tuple[Level, Level], Priority]:
        return lifecycle.matrix_from_setting(await self.get_setting("priority_matrix"))

    async def set_priority_matrix(self, matrix: dict[tuple[Level, Level], Priority]) -> None:
        await self.set_setting("priority_matrix", lifecycle.matrix_to_setting(matrix))

    async def status_labels(self, language: str | None = None) -> dict[str, str]:
        """Display labels per status (team-renamed; per language for customer-facing text)."""
        labels = dict(lifecycle.DEFAULT_LABELS)
        stored = await self.get_setting("status_labels", {}) or {}
        labels.update(stored.get("default", {}))
        if language:
            labels.update(stored.get(language, {}))
        return labels

    async def set_status_label(
        self, status: Status, label: str, language: str | None = None
    ) -> None:
        stored = dict(await self.get_setting("status_labels", {}) or {})
        bucket = dict(stored.get(language or "default", {}))
        bucket[status.value] = label
        stored[language or "default"] = bucket
        await self.set_setting("status_labels", stored)

    # ----------------------------------------------------------------- drafts & presence
    async def save_draft(
        self,
        agent_id: int,
        ticket_id: int,
        kind: str,
        body: str,
        base_article_id: int | None = None,
    ) -> None:
        async with self.db.write() as session:
            d = (
                await session.execute(
                    select(Draft).where(
                        Draft.ticket_id == ticket_id, Draft.agent_id == agent_id, Draft.kind == kind
                    )
                )
            ).scalar_one_or_none()
            if d is None:
                session.add(
                    Draft(
                        ticket_id=ticket_id,
                        agent_id=agent_id,
                        kind=kind,
                        body=body,
                        base_article_id=base_article_id,
                        updated_at=self.clock(),
                    )
                )
            else:
                d.body = body
                d.updated_at = self.clock()

    async def get_draft(self, agent_id: int, ticket_id: int, kind: str) -> Draft | None:
        async with self.db.read() as session:
            return (
                await session.execute(
                    select(Draft).where(
                        Draft.ticket_id == ticket_id, Draft.agent_id == agent_id, Draft.kind == kind
                    )
                )
            ).scalar_one_or_none()

    async def drafts_for(self, agent_id: int, ticket_id: int) -> list[Draft]:
        async with self.db.read() as session:
            return list(
                (
                    await session.execute(
                        select(Draft).where(
                            Draft.ticket_id == ticket_id, Draft.agent_id == agent_id
                        )
                    )
                ).scalars()
            )

    async def delete_draft(self, agent_id: int, ticket_id: int, kind: str) -> None:
        async with self.db.write() as session:
            await session.execute(
                delete(Draft).where(
                    Draft.ticket_id == ticket_id, Draft.agent_id == agent_id, Draft.kind == kind
                )
            )

    async def touch_presence(
        self, agent_id: int, session_id: str, ticket_id: int | None, mode: str = "viewing"
    ) -> None:
        """Record that an agent's console is on a ticket (None: on the queue)."""
        async with self.db.write() as session:
            p = await session.get(Presence, (agent_id, session_id))
            changed = p is None or p.ticket_id != ticket_id or p.mode != mode
            if p is None:
                session.add(
                    Presence(
                        agent_id=agent_id,
                        session=session_id,
                        ticket_id=ticket_id,
                        mode=mode,
                        seen_at=self.clock(),
                    )
                )
            else:
                p.ticket_id, p.mode, p.seen_at = ticket_id, mode, self.clock()
            if changed:
                await self._event(
                    session, ticket_id, "presence", Actor("agent", str(agent_id), agent_id)
                )

    async def clear_presence(self, agent_id: int, session_id: str) -> None:
        async with self.db.write() as session:
            p = await session.get(Presence, (agent_id, session_id))
            if p is not None:
                tid = p.ticket_id
                await session.delete(p)
                await self._event(session, tid, "presence", Actor("agent", str(agent_id), agent_id))

    async def presence(
        self, ticket_id: int | None = None
    ) -> list[tuple[str, str, int | None, str]]:
        """Live presence rows: (login, name, ticket_id, mode), stale heartbeats dropped."""
        cutoff = self.clock() - PRESENCE_TTL
        async with self.db.read() as session:
            stmt = (
                select(Agent.login, Agent.name, Presence.ticket_id, Presence.mode)
                .join(Agent, Agent.id == Presence.agent_id)
                .where(Presence.seen_at >= cutoff)
            )
            if ticket_id is not None:
                stmt = stmt.where(Presence.ticket_id == ticket_id)
            return [(r[0], r[1], r[2], r[3]) for r in (await session.execute(stmt)).all()]

    async def articles_after(self, ticket_id: int, article_id: int) -> list[Article]:
        """Articles added to a ticket after `article_id` (to warn a writer before sending)."""
        async with self.db.read() as session:
            return list(
                (
                    await session.execute(
                        select(Article)
                        .where(Article.ticket_id == ticket_id, Article.id > article_id)
                        .order_by(Article.id)
                    )
                )
                .unique()
                .scalars()
            )


_Owned = TypeVar("_Owned", CannedResponse, SavedView)


async def _owned_by_name(
    session: AsyncSession, model: type[_Owned], name: str, owner_id: int | None
) -> _Owned | None:
    """The shared (owner None) or personal canned response or view called `name`."""
    owner = model.owner_id.is_(None) if owner_id is None else model.owner_id == owner_id
    return (
        await session.execute(select(model).where(model.name == name, owner))
    ).scalar_one_or_none()
