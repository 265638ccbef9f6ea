"""SQLAlchemy 2 typed ORM models for the helpdesk store (UTC everywhere)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as UTC and always returned timezone-aware.

    SQLite has no timezone type: values are stored naive-in-UTC and re-tagged on load.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC datetimes")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Status(enum.StrEnum):
    """Ticket states; their meaning is fixed, their display labels are configurable."""

    NEW = "new"
    OPEN = "open"
    ANSWERED = "answered"
    PENDING = "pending"
    ON_HOLD = "on-hold"
    POSTPONED = "postponed"
    SOLVED = "solved"
    CLOSED = "closed"
    MERGED = "merged"


ACTIVE_STATUSES: frozenset[Status] = frozenset(
    {Status.NEW, Status.OPEN, Status.ANSWERED, Status.PENDING, Status.ON_HOLD, Status.POSTPONED}
)
INACTIVE_STATUSES: frozenset[Status] = frozenset({Status.SOLVED, Status.CLOSED, Status.MERGED})


def _sql_list(values: frozenset[Status]) -> str:
    return ", ".join(f"'{v.value}'" for v in sorted(values))


#: The audit rows of a reopen, as the partial index ``ix_audit_events_reopens`` states it.
#: Queries must spell the condition with this exact text (literals, not parameters) for
#: the databases to see that the index covers them.
REOPEN_WHERE = (
    "action = 'status' AND old_value IN ('closed', 'solved') "
    f"AND new_value IN ({_sql_list(ACTIVE_STATUSES)})"
)
#: The audit rows of CSAT ratings, as the partial index ``ix_audit_events_csat`` states it.
CSAT_WHERE = "action = 'csat'"


class Priority(enum.IntEnum):
    """Ticket priority; stored as a small integer so it sorts and compares."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Level(enum.IntEnum):
    """Impact or urgency, each low/medium/high."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class ArticleKind(enum.StrEnum):
    """What one entry of a ticket's thread is."""

    EMAIL_IN = "email_in"
    EMAIL_OUT = "email_out"
    NOTE = "note"
    PHONE = "phone"
    SYSTEM = "system"


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base with a naming convention so migrations get stable names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class Counter(Base):
    """Named counters (ticket numbers) incremented inside write transactions."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Setting(Base):
    """Team-wide settings kept in the store (priority matrix, status labels...)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class AgentQueue(Base):
    """Which queues an agent works."""

    __tablename__ = "agent_queues"
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    queue_id: Mapped[int] = mapped_column(
        ForeignKey("queues.id", ondelete="CASCADE"), primary_key=True
    )


class Agent(Base):
    """A support agent; `login` is the Unix user name."""

    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20), default="agent")
    languages: Mapped[list[str]] = mapped_column(default=list)
    skills: Mapped[list[str]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queues: Mapped[list[Queue]] = relationship(secondary="agent_queues", lazy="selectin")


class Queue(Base):
    """A ticket queue with the mail addresses that feed it."""

    __tablename__ = "queues"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    addresses: Mapped[list[str]] = mapped_column(default=list)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Organization(Base):
    """A customer organization; `tier` such as 'vip'."""

    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    domains: Mapped[list[str]] = mapped_column(default=list)
    tier: Mapped[str | None] = mapped_column(String(40))
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Customer(Base):
    """Someone who writes to support."""

    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(60))
    language: Mapped[str | None] = mapped_column(String(10))
    timezone: Mapped[str | None] = mapped_column(String(60))
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL"), index=True
    )
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    organization: Mapped[Organization | None] = relationship(lazy="joined")
    emails: Mapped[list[CustomerEmail]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", back_populates="customer"
    )


class CustomerEmail(Base):
    """Additional addresses of a customer (the primary one is on the customer row too)."""

    __tablename__ = "customer_emails"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320), unique=True)
    customer: Mapped[Customer] = relationship(back_populates="emails")


class TicketTag(Base):
    """Tags on tickets."""

    __tablename__ = "ticket_tags"
    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(
        ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Tag(Base):
    """A tag name."""

    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Ticket(Base):
    """A support ticket: the unit of work."""

    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default=Status.NEW.value)
    priority: Mapped[int] = mapped_column(SmallInteger, default=int(Priority.NORMAL))
    impact: Mapped[int] = mapped_column(SmallInteger, default=int(Level.MEDIUM))
    urgency: Mapped[int] = mapped_column(SmallInteger, default=int(Level.MEDIUM))
    priority_override_by: Mapped[str | None] = mapped_column(String(100))
    type: Mapped[str | None] = mapped_column(String(40))
    queue_id: Mapped[int | None] = mapped_column(ForeignKey("queues.id", ondelete="SET NULL"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL"), index=True
    )
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL"), index=True
    )
    language: Mapped[str | None] = mapped_column(String(10))
    channel: Mapped[str] = mapped_column(String(20), default="email")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    first_response_at: Mapped[datetime | None] = mapped_column()
    solved_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()
    postponed_until: Mapped[datetime | None] = mapped_column()
    last_customer_at: Mapped[datetime | None] = mapped_column()
    #: The nearest SLA due time (filled by the SLA engine); part of the "next" order key.
    next_due_at: Mapped[datetime | None] = mapped_column()
    merged_into_id: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.id", ondelete="SET NULL")
    )
    linked_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.id", ondelete="SET NULL")
    )
    version: Mapped[int] = mapped_column(Integer, default=1)

    queue: Mapped[Queue | None] = relationship(lazy="joined")
    assignee: Mapped[Agent | None] = relationship(lazy="joined")
    customer: Mapped[Customer | None] = relationship(lazy="joined")
    organization: Mapped[Organization | None] = relationship(lazy="joined")
    tags: Mapped[list[Tag]] = relationship(
        secondary="ticket_tags", lazy="selectin", order_by="Tag.name"
    )

    __table_args__ = (
        Index("ix_tickets_updated", "updated_at", "id"),
        Index("ix_tickets_status_updated", "status", "updated_at", "id"),
        Index("ix_tickets_assignee_status_updated", "assignee_id", "status", "updated_at", "id"),
        Index("ix_tickets_queue_status_updated", "queue_id", "status", "updated_at", "id"),
        Index("ix_tickets_created", "created_at", "id"),
        # The "what to do next" order: priority desc, nearest due, longest waiting.
        Index("ix_tickets_next", "status", "priority", "next_due_at", "last_customer_at", "id"),
        Index("ix_tickets_postponed", "postponed_until"),
        # Reports: tickets solved in a period (migration 0005).
        Index("ix_tickets_solved", "solved_at"),
        # Migration 0007 adds two SQLite-only covering expression indexes for the reports,
        # ix_tickets_report_created and ix_tickets_report_solved (queue, agent, the times
        # and their epoch milliseconds as store/reports.py spells them); like 0004's
        # ix_tickets_next_order they exist in the migration only (expression indexes are
        # not reflected, and PostgreSQL has no use for them).
    )

    @property
    def priority_label(self) -> str:
        return Priority(self.priority).label


class Article(Base):
    """One entry of a ticket's thread: a mail in or out, a note, a call, a system line."""

    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    author_agent_id: Mapped[int | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL")
    )
    author_customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL")
    )
    from_addr: Mapped[str] = mapped_column(Text, default="")
    to_addrs: Mapped[str] = mapped_column(Text, default="")
    cc_addrs: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    body_text: Mapped[str] = mapped_column(Text, default="")
    quoted_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(10))
    #: For outbound mail: queued / sent / failed / cancelled.
    delivery_status: Mapped[str | None] = mapped_column(String(20))
    delivery_error: Mapped[str | None] = mapped_column(Text)
    raw_blob: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    author_agent: Mapped[Agent | None] = relationship(lazy="joined")
    attachments: Mapped[list[Attachment]] = relationship(lazy="selectin", order_by="Attachment.id")

    __table_args__ = (
        Index("ix_articles_ticket_created", "ticket_id", "created_at", "id"),
        # A ticket's mails of one kind by time, read from the index alone: the reports'
        # first-contact check and the SLA engine's latest agent reply (migration 0005).
        Index("ix_articles_ticket_kind_created", "ticket_id", "kind", "created_at"),
    )

    @property
    def internal(self) -> bool:
        return self.kind == ArticleKind.NOTE.value


class Blob(Base):
    """Content stored once by its SHA-256 (attachments, raw mail)."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    """A file attached to an article."""

    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    content_id: Mapped[str | None] = mapped_column(String(255))


class CannedResponse(Base):
    """A reusable reply body with {{variables}}; owner NULL means shared."""

    __tablename__ = "canned_responses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("name", "owner_id", name="uq_canned_name_owner"),)


class SavedView(Base):
    """A named query; owner NULL means shared with the team."""

    __tablename__ = "saved_views"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    query: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("name", "owner_id", name="uq_view_name_owner"),)


class AuditEvent(Base):
    """Who changed which field from what to what, and when."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), index=True
    )
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(40))
    field: Mapped[str | None] = mapped_column(String(60))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # CSAT ratings by time (reports; migration 0005). Partial, like the next one, so
        # that the planner never prefers it for other actions.
        Index(
            "ix_audit_events_csat",
            "created_at",
            sqlite_where=text(CSAT_WHERE),
            postgresql_where=text(CSAT_WHERE),
        ),
        # Only the reopens (a solved/closed ticket made active again): a tiny index that
        # finds the reopened tickets without reading the audit log (migration 0005).
        Index(
            "ix_audit_events_reopens",
            "created_at",
            "ticket_id",
            sqlite_where=text(REOPEN_WHERE),
            postgresql_where=text(REOPEN_WHERE),
        ),
    )


class Event(Base):
    """The change feed: one row per committed change, read by id."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(120), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Draft(Base):
    """A reply or note being written, saved continuously so nothing is lost."""

    __tablename__ = "drafts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(Text, default="")
    #: The newest article id the agent had seen when starting to write.
    base_article_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("ticket_id", "agent_id", "kind", name="uq_draft_ticket_agent_kind"),
    )


class Presence(Base):
    """Who is looking at or writing on which ticket (heartbeat-refreshed)."""

    __tablename__ = "presence"
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    session: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(Integer, index=True)
    mode: Mapped[str] = mapped_column(String(20), default="viewing")
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketLink(Base):
    """A link between tickets (e.g. a reply to a closed ticket opens a follow-up)."""

    __tablename__ = "ticket_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))


class MailAccount(Base):
    """An IMAP mailbox feeding a queue; secrets are never stored, only how to get them."""

    __tablename__ = "mail_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    security: Mapped[str] = mapped_column(String(10), default="tls")
    username: Mapped[str] = mapped_column(String(320))
    password_env: Mapped[str | None] = mapped_column(String(200))
    password_command: Mapped[str | None] = mapped_column(Text)
    use_keyring: Mapped[bool] = mapped_column(Boolean, default=False)
    oauth2_token_command: Mapped[str | None] = mapped_column(Text)
    folders: Mapped[list[str]] = mapped_column(default=list)
    queue_id: Mapped[int | None] = mapped_column(ForeignKey("queues.id", ondelete="SET NULL"))
    after: Mapped[str] = mapped_column(String(200), default="leave")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailFolderState(Base):
    """Per account and folder: UIDVALIDITY and the highest UID ingested."""

    __tablename__ = "mail_folder_state"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    folder: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger)
    stopped_reason: Mapped[str | None] = mapped_column(Text)


class MailSeen(Base):
    """Which server message (account, folder, uidvalidity, uid) became which article."""

    __tablename__ = "mail_seen"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    folder: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    article_id: Mapped[int | None] = mapped_column(Integer)
    quarantine_id: Mapped[int | None] = mapped_column(Integer)


class MailHeartbeat(Base):
    """The sync daemon's health per account, shown by the console and `mail status`."""

    __tablename__ = "mail_heartbeat"
    account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    last_success_at: Mapped[datetime | None] = mapped_column()
    last_error_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[datetime | None] = mapped_column()
    backlog: Mapped[int] = mapped_column(Integer, default=0)


class Quarantine(Base):
    """A mail that could not become a ticket: raw bytes kept with the error."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_accounts.id", ondelete="SET NULL")
    )
    folder: Mapped[str | None] = mapped_column(String(500))
    uid: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(500), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="held")
    ticket_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Outbox(Base):
    """Outbound mail committed before delivery, with its retry state."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    article_id: Mapped[int | None] = mapped_column(
        ForeignKey("articles.id", ondelete="SET NULL"), index=True
    )
    ticket_id: Mapped[int | None] = mapped_column(Integer, index=True)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    mail_from: Mapped[str] = mapped_column(String(320), default="")
    rcpt_to: Mapped[list[str]] = mapped_column(default=list)
    #: The single recipient of automatic mail (for per-sender rate limits).
    rcpt_to_key: Mapped[str | None] = mapped_column(String(320), index=True)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    kind: Mapped[str] = mapped_column(String(20), default="reply")
    status: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
