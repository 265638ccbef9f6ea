"""Customer satisfaction: the survey mail sent when a ticket is solved, and the rating replies.

When a ticket is solved, the customer may get a mail asking them to rate it by replying with a
number 1-5 (and a comment). A reply to that survey is recorded as a rating on the ticket
instead of reopening it.

The configuration is the store Setting ``csat`` (see `CsatSettings`). `queue_surveys` is called
by the daemon's periodic tick: it queues one survey per solve (an audit row ``csat-survey``
records the decision, queued or skipped and why, so a solve is looked at once), through the
outbox (``Outbox.kind='csat'``, an ``email_out`` article with ``meta['csat_survey']``).
A rating is an audit row ``action='csat'``, ``field='csat'``, ``new_value`` '1'..'5' (what
`store.reports` reads), a system note with the comment, and a change-feed event.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mail_sync.autoreply import suppression_reason
from store.engine import Database
from store.models import (
    Article,
    ArticleKind,
    AuditEvent,
    CannedResponse,
    Event,
    MailAccount,
    Outbox,
    Queue,
    Setting,
    Status,
    Ticket,
)
from store.sanitize import clean_line, clean_text
from store.service import Service
from store.templates import MARK_CLOSE, MARK_OPEN, VARIABLES, context_from, render
from store.timeparse import parse_offset

log = logging.getLogger("helpdesk.csat")

#: The store Setting holding the survey configuration.
SETTING_KEY = "csat"
#: Outbox.kind of survey mail.
OUTBOX_KIND = "csat"
#: The audit action recording what happened to one solve (survey queued, or skipped and why).
SURVEY_ACTION = "csat-survey"
#: Who the survey and the ratings are attributed to in the audit log and the change feed.
ACTOR = "mail:csat"
DEFAULT_DELAY = timedelta(hours=1)
#: Solves older than this (after the delay) are not surveyed: a late survey is noise.
MAX_AGE = timedelta(days=7)
#: Surveys queued per call (the daemon calls every minute).
BATCH = 100
SUBJECT = "How did we do?"
#: The survey text when no canned response is configured ({{variables}} as in canned replies).
DEFAULT_BODY = """Hello {{customer.first_name}},

your request "{{ticket.subject}}" has been solved.

How did we do? Please reply to this mail with a number from 1 (poor) to 5 (excellent),
and a comment if you like, for example:

    5 quick and friendly help

Thank you!
"""
MAX_COMMENT = 2000


@dataclass(frozen=True)
class Rating:
    """A customer's answer to a satisfaction survey."""

    score: int
    comment: str
    survey_message_id: str


@dataclass
class CsatSettings:
    """The Setting ``csat``: whether surveys go out, with which text, how long after the solve."""

    enabled: bool = False
    #: A shared canned response to use as the survey text; None for `DEFAULT_BODY`.
    template: str | None = None
    delay_seconds: int = int(DEFAULT_DELAY.total_seconds())
    #: Queues that never send surveys (names, compared case-insensitively).
    skip_queues: list[str] = field(default_factory=list)
    #: When surveys were (last) enabled: tickets solved before are never surveyed.
    enabled_at: str | None = None

    @property
    def delay(self) -> timedelta:
        return timedelta(seconds=self.delay_seconds)

    @classmethod
    def from_value(cls, value: Any) -> CsatSettings:
        if not isinstance(value, dict):
            return cls()
        return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})

    def to_value(self) -> dict[str, Any]:
        return asdict(self)

    def enabled_since(self) -> datetime | None:
        if not self.enabled_at:
            return None
        moment = datetime.fromisoformat(self.enabled_at)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_delay(text: str) -> timedelta:
    """`1h`, `30min`, `2d`, `0min` -> a delay; ValueError with what is accepted otherwise."""
    value = text.strip().lower()
    if value in ("0", "none"):
        return timedelta(0)
    offset = parse_offset(value)
    if offset is None or value.startswith("+"):
        raise ValueError(f"cannot read the delay {text!r}; use e.g. 30min, 1h, 2d")
    return offset


def describe_delay(delay: timedelta) -> str:
    """The inverse of `parse_delay` for display: 3600 s -> '1h'."""
    seconds = int(delay.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}min"


async def load_settings(session: AsyncSession) -> CsatSettings:
    """The survey settings of the store (defaults: disabled)."""
    row = await session.get(Setting, SETTING_KEY)
    return CsatSettings.from_value(row.value if row is not None else None)


# ----------------------------------------------------------------------------- surveys
@dataclass
class _MailContext:
    smtp: dict[str, Any]
    own: set[str]
    domain: str
    tag_format: str


async def _mail_context(session: AsyncSession) -> _MailContext:
    row = await session.get(Setting, "smtp")
    smtp: dict[str, Any] = row.value if row is not None and isinstance(row.value, dict) else {}
    own: set[str] = set()
    from_address = str(smtp.get("from_address") or "")
    if "@" in from_address:
        own.add(from_address.lower())
    for addrs in (await session.execute(select(Queue.addresses))).scalars():
        own.update(a.strip().lower() for a in addrs or [] if a.strip())
    for username in (await session.execute(select(MailAccount.username))).scalars():
        if "@" in username:
            own.add(username.lower())
    domain = from_address.rpartition("@")[2] if "@" in from_address else "helpdesk.invalid"
    tag_format = str(smtp.get("subject_tag") or "[#{number}]")
    return _MailContext(smtp, own, domain, tag_format)


async def _skip_reason(session: AsyncSession, ticket: Ticket, ctx: _MailContext) -> str | None:
    """Why this ticket's customer gets no survey (None: they may get one)."""
    customer = ticket.customer
    email = (customer.email if customer else "") or ""
    if "@" not in email or email.endswith("@invalid"):
        return "the customer has no mail address"
    first_in = (
        (
            await session.execute(
                select(Article)
                .where(
                    Article.ticket_id == ticket.id,
                    Article.kind == ArticleKind.EMAIL_IN.value,
                )
                .order_by(Article.created_at, Article.id)
                .limit(1)
            )
        )
        .unique()
        .scalar_one_or_none()
    )
    if first_in is None:
        return "the ticket did not come by mail"
    meta = first_in.meta or {}
    if meta.get("auto"):
        return f"the customer's mail is automatic ({clean_line(str(meta.get('reason') or 'auto'))})"
    return suppression_reason(
        sender=email,
        auto_submitted=False,
        is_bulk_or_list=False,
        is_bounce=False,
        ours=ctx.own,
    )


def _fill(body: str, ticket: Ticket, team: str) -> tuple[str, list[str]]:
    """The survey text; unknown variables are returned (the survey is then not sent).

    Known variables without a value (a customer without a name) become empty, so the customer
    never receives a ⟦mark⟧: "Hello {{customer.first_name}}," reads "Hello,".
    """
    from types import SimpleNamespace

    rendered = render(body, context_from(ticket, SimpleNamespace(name=team)))
    text = rendered.text
    for name in rendered.empty:
        if name in VARIABLES:
            text = text.replace(f"{MARK_OPEN}{name}{MARK_CLOSE}", "")
    text = re.sub(r"[ \t]+([,.!?:;])", r"\1", text)
    return text, rendered.unknown


async def _survey_text(
    session: AsyncSession, cfg: CsatSettings, ticket: Ticket
) -> tuple[str | None, str]:
    """(the body, '') or (None, why not)."""
    body = DEFAULT_BODY
    if cfg.template:
        canned = (
            await session.execute(
                select(CannedResponse).where(
                    CannedResponse.name == cfg.template, CannedResponse.owner_id.is_(None)
                )
            )
        ).scalar_one_or_none()
        if canned is None:
            return None, f"survey template {cfg.template!r} not found"
        body = canned.body
    text, unknown = _fill(body, ticket, ticket.queue.name if ticket.queue else "Support")
    if unknown:
        return None, f"survey template has unknown variables {', '.join(unknown)}"
    return text, ""


def _audit(session: AsyncSession, ticket_id: int, action: str, new: str, now: datetime) -> None:
    session.add(
        AuditEvent(
            ticket_id=ticket_id,
            actor=ACTOR,
            action=action,
            field="csat",
            old_value=None,
            new_value=new,
            created_at=now,
        )
    )


async def _event(session: AsyncSession, ticket_id: int, kind: str, now: datetime) -> None:
    """A change-feed row (and the PostgreSQL notification the service layer also sends)."""
    ev = Event(ticket_id=ticket_id, kind=kind, actor=ACTOR, created_at=now)
    session.add(ev)
    await session.flush()
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify("helpdesk_events", str(ev.id))))


def survey_candidates(cfg: CsatSettings, now: datetime, skip_queue_ids: Sequence[int]) -> Any:
    """Solved tickets due a survey: solved `delay` ago (not longer than `MAX_AGE` before),
    after surveys were enabled, with no survey decision since their last solve."""
    cutoff = now - cfg.delay
    since = now - cfg.delay - MAX_AGE
    enabled_since = cfg.enabled_since()
    if enabled_since is not None:
        since = max(since, enabled_since)
    decided = (
        select(AuditEvent.id)
        .where(
            AuditEvent.ticket_id == Ticket.id,
            AuditEvent.action == SURVEY_ACTION,
            AuditEvent.created_at >= Ticket.solved_at,
        )
        .correlate(Ticket)
        .exists()
    )
    stmt = select(Ticket).where(
        Ticket.status == Status.SOLVED.value,
        # updated_at >= solved_at always: lets the (status, updated_at) index narrow the scan
        Ticket.updated_at >= since,
        Ticket.solved_at >= since,
        Ticket.solved_at <= cutoff,
        Ticket.customer_id.is_not(None),
        ~decided,
    )
    if skip_queue_ids:
        stmt = stmt.where(
            (Ticket.queue_id.is_(None)) | (Ticket.queue_id.not_in(list(skip_queue_ids)))
        )
    return stmt.order_by(Ticket.solved_at, Ticket.id).limit(BATCH)


async def queue_surveys(db: Database, now: datetime) -> int:
    """Queue the survey mail of every ticket due one; returns how many were queued.

    Idempotent: each solve is decided once (an audit row ``csat-survey``: queued, or skipped
    with the reason, e.g. an automatic sender); a ticket reopened and solved again is due a
    new survey. Call it periodically (the daemon's tick).
    """
    from mail_sync.outbox import SmtpConfig

    async with db.read() as session:
        cfg = await load_settings(session)
    if not cfg.enabled:
        return 0
    queued = 0
    async with db.write() as session:
        ctx = await _mail_context(session)
        skip = {q.lower() for q in cfg.skip_queues}
        skip_ids = [
            qid
            for qid, name in (await session.execute(select(Queue.id, Queue.name))).all()
            if name.lower() in skip
        ]
        stmt = survey_candidates(cfg, now, skip_ids)
        if db.dialect == "postgresql":
            stmt = stmt.with_for_update(of=Ticket, skip_locked=True)
        tickets = list((await session.execute(stmt)).unique().scalars())
        smtp_cfg = SmtpConfig.from_setting(ctx.smtp)
        service = Service(db)
        for ticket in tickets:
            reason = await _skip_reason(session, ticket, ctx)
            body: str | None = None
            if reason is None:
                body, reason = await _survey_text(session, cfg, ticket)
            if body is None:
                _audit(session, ticket.id, SURVEY_ACTION, f"skipped: {reason}", now)
                log.info("ticket=%s event=csat-skipped reason=%r", ticket.number, reason)
                continue
            assert ticket.customer is not None
            rcpt = ticket.customer.email
            article = await service.queue_automatic_mail(
                session,
                ticket,
                outbox_kind=OUTBOX_KIND,
                to=rcpt,
                subject=f"{ctx.tag_format.format(number=ticket.number)} {SUBJECT}",
                body=body,
                meta={"auto": "csat", "csat_survey": True},
                domain=ctx.domain,
                now=now,
                from_addr=ticket.queue.addresses[0]
                if ticket.queue and ticket.queue.addresses
                else smtp_cfg.from_address,
            )
            _audit(session, ticket.id, SURVEY_ACTION, f"queued: article {article.id}", now)
            await _event(session, ticket.id, "article", now)
            queued += 1
            log.info("ticket=%s event=csat-queued", ticket.number)
    return queued


# ----------------------------------------------------------------------------- ratings
_STARS = re.compile(r"^\s*([★⭐]{1,5})[☆\s]*(.*)$", re.DOTALL)
_RATING = re.compile(
    r"""^\s*
    (?:(?:my\s+)?(?:rating|score|grade|note|vote|csat)\s*(?:is\s*)?[:=\-]?\s*)?
    ([1-5])
    (?!\d|[.,]\d)                              # not 12, 4.5, 4,5
    \s*(?:/\s*5|(?:out\s+)?of\s+5|stars?\b|\*+)?  # 5/5, 4 out of 5, 3 stars
    (?P<rest>.*)$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
#: A number followed by one of these is a quantity, not a rating ("5 minutes later...").
_UNITS = re.compile(
    r"^\s*(?:%|min\b|mins\b|minutes?\b|h\b|hours?\b|days?\b|weeks?\b|months?\b|years?\b"
    r"|times?\b|people\b|users?\b|printers?\b|pages?\b|tickets?\b|x\b|[-+*/]\s*\d)",
    re.IGNORECASE,
)
_QUOTE_START = re.compile(r"^\s*(?:>|On .{0,200}wrote:\s*$|-----\s*Original Message)", re.I)


def _new_lines(text: str) -> list[str]:
    """The reply's own lines: quoted text and the signature cut off, blank lines dropped."""
    lines: list[str] = []
    for line in clean_text(text or "").splitlines():
        if _QUOTE_START.match(line) or line.rstrip() == "--":
            break
        if line.strip():
            lines.append(line.strip())
    return lines


def parse_rating(text: str) -> tuple[int, str] | None:
    """(score, comment) when the reply clearly gives one rating 1-5, else None.

    The rating comes first: "5", "4 - quick answer", "Rating: 3", "5/5", "4 out of 5",
    "★★★★". Anything else, including a comment with a question in it, is a follow-up (None):
    a question must reopen the ticket, never hide in a rating.
    """
    lines = _new_lines(text)
    if not lines:
        return None
    first, others = lines[0], lines[1:]
    stars = _STARS.match(first)
    if stars is not None:
        score, rest = len(stars.group(1)), stars.group(2)
    else:
        m = _RATING.match(first)
        if m is None:
            return None
        rest = m.group("rest")
        if _UNITS.match(rest):
            return None
        score = int(m.group(1))
    rest = rest.strip().lstrip("-–—:,.;!)/ ").strip()
    if re.match(r"^(?:or|and|to|-)\s*[1-5]\b", rest, re.IGNORECASE):
        return None  # "4 or 5": not a single rating
    comment = "\n".join([rest, *others] if rest else others).strip()
    if "?" in comment:
        return None
    return score, comment[:MAX_COMMENT]


async def survey_ids(session: AsyncSession, ticket_number: int) -> set[str]:
    """The Message-IDs of the surveys sent for ticket `ticket_number`."""
    rows = await session.execute(
        select(Outbox.message_id)
        .join(Ticket, Ticket.id == Outbox.ticket_id)
        .where(Ticket.number == ticket_number, Outbox.kind == OUTBOX_KIND)
    )
    return {m for m in rows.scalars() if m}


async def rating_reply(
    session: AsyncSession,
    ticket_number: int,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    text: str,
) -> Rating | None:
    """The rating in a reply to ticket `ticket_number`'s survey, or None for any other mail.

    Only a reply naming one of the ticket's survey Message-IDs (In-Reply-To or References)
    whose own text starts with a single rating counts; see `parse_rating`.
    """
    named = [m.strip().strip("<>") for m in (*in_reply_to, *references) if m and m.strip()]
    if not named:
        return None
    ours = await survey_ids(session, ticket_number)
    hit = next((m for m in named if m in ours), None)
    if hit is None:
        return None
    parsed = parse_rating(text)
    if parsed is None:
        return None
    return Rating(parsed[0], parsed[1], hit)


async def record_rating(
    session: AsyncSession, ticket: Ticket, rating: Rating, article: Article
) -> None:
    """Store `rating` on `ticket` (the reply itself is `article`, already attached).

    An audit row ``csat`` (the shape `store.reports` reads; the previous rating is its old
    value), a system note with the score and the comment, and a change-feed event. The
    ticket's status is left as it is.
    """
    now = article.created_at or datetime.now(UTC)
    previous = (
        await session.execute(
            select(AuditEvent.new_value)
            .where(AuditEvent.ticket_id == ticket.id, AuditEvent.action == "csat")
            .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    session.add(
        AuditEvent(
            ticket_id=ticket.id,
            actor=ACTOR,
            action="csat",
            field="csat",
            old_value=previous,
            new_value=str(int(rating.score)),
            created_at=now,
        )
    )
    comment = clean_text(rating.comment).strip()
    note = f"Satisfaction rating {rating.score}/5 from the customer"
    note += f": {comment}" if comment else " (no comment)"
    session.add(
        Article(
            ticket_id=ticket.id,
            kind=ArticleKind.SYSTEM.value,
            body_text=note,
            meta={
                "csat": rating.score,
                "csat_comment": comment,
                "csat_reply_article": article.id,
                "csat_survey": rating.survey_message_id,
            },
            created_at=now,
        )
    )
    await _event(session, ticket.id, "updated", now)
