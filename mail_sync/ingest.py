"""Raw mail -> tickets in one transaction: dedupe, quarantine, bounces, loops, threading, queue.

The same pipeline serves IMAP sync, `helpdesk import` and quarantine retries. A batch of mails
is ingested in ONE write transaction (the sync engine adds its folder state to it), each mail
inside its own SAVEPOINT: a mail that fails for any reason of its own is rolled back alone and
quarantined with its raw bytes, and never blocks the rest.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from mail_sync import csat
from mail_sync import threading as mail_threading
from mail_sync.parse import DEFAULT_LANGUAGES, ParsedMail, ParseLimits
from mail_sync.prepare import (
    MB,
    IncomingMail,
    MailSource,
    PrepareJob,
    prepare_mail,
    split_header,
)
from store.bulk_ingest import ArticleSlot, MailBatchWriter, TicketSlot, in_values
from store.engine import StoreError
from store.models import (
    Article,
    ArticleKind,
    CannedResponse,
    Customer,
    MailAccount,
    MailSeen,
    Organization,
    Outbox,
    Quarantine,
    Queue,
    Setting,
    Status,
    Ticket,
    TicketLink,
)
from store.msgid import make_message_id
from store.service import MAIL, ArticleInput, AttachmentInput, NotFoundError, Service
from store.templates import render

log = logging.getLogger("helpdesk.mail.ingest")

#: A message larger than this is ingested with its header only (and a note naming what was
#: left out); the full message stays on the server.
DEFAULT_MAX_MESSAGE_BYTES = 50 * MB
#: Attachments larger than this are left out of the ticket (with a note naming them).
DEFAULT_MAX_ATTACHMENT_BYTES = 25 * MB
#: An imported (old) mail is never acknowledged: the customer wrote it long ago.
IMPORTED_NO_ACK = "acknowledgement not sent: imported mail"
#: How many duplicate deliveries an article remembers (for `mail explain`).
MAX_DUPLICATES_RECORDED = 20
#: Most mails planned into one bulk write (and looked up together).
SEGMENT_WINDOW = 500
#: PostgreSQL: one transaction-level advisory lock serialises all mail ingestion, so two
#: daemons (or a daemon and an import) cannot both miss each other's Message-ID.
PG_INGEST_LOCK = (0x4D41494C, 0)  # "MAIL", 0


@dataclass
class IngestResult:
    """What happened to one mail."""

    outcome: str  # created | threaded | duplicate | quarantined | seen
    reason: str
    ticket_number: int | None = None
    article_id: int | None = None
    quarantine_id: int | None = None
    source: str = ""


@dataclass
class IngestSummary:
    """Counts over many mails (the importer's and the engine's report)."""

    created: int = 0
    threaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    seen: int = 0
    #: Imported tickets put in the import's `--status` (solved or closed).
    set_status: int = 0
    results: list[IngestResult] = field(default_factory=list)

    def add(self, result: IngestResult, keep: bool = True) -> None:
        if result.outcome == "created":
            self.created += 1
        elif result.outcome == "threaded":
            self.threaded += 1
        elif result.outcome == "duplicate":
            self.duplicates += 1
        elif result.outcome == "quarantined":
            self.quarantined += 1
        else:
            self.seen += 1
        if keep:
            self.results.append(result)

    @property
    def total(self) -> int:
        return self.created + self.threaded + self.duplicates + self.quarantined + self.seen

    def as_dict(self) -> dict[str, int]:
        out = {
            "created": self.created,
            "threaded": self.threaded,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "already_seen": self.seen,
            "total": self.total,
        }
        if self.set_status:
            out["status_set"] = self.set_status
        return out


@dataclass
class _Context:
    """Per-transaction lookups shared by every mail of a batch."""

    secret: bytes
    tag_format: str
    queue_by_address: dict[str, str]
    queue_names: dict[int, str]
    own_addresses: set[str]
    domain: str
    #: Queue id by lower-cased name, and the ids of queues that send acknowledgements.
    queue_ids: dict[str, int] = field(default_factory=dict)
    ack_queues: set[int] = field(default_factory=set)
    #: Settings of the queues in `ack_queues` (template name, rate limit).
    ack_settings: dict[int, dict[str, Any]] = field(default_factory=dict)


_NAME_JUNK = re.compile(r'[\\"<>,;\x00-\x1f\x7f]')


def _fmt_addr(name: str, addr: str) -> str:
    name = _NAME_JUNK.sub("", name).strip() if name else ""
    return f'"{name}" <{addr}>' if name and addr else addr or name


def _header(parsed: ParsedMail, name: str) -> str | None:
    lname = name.lower()
    for k, v in parsed.headers:
        if k.lower() == lname:
            return v
    return None


#: The headers `auto_reason` looks at (lower case).
_AUTO_HEADERS = frozenset(
    {
        "auto-submitted",
        "x-autoreply",
        "x-autorespond",
        "x-autogenerated",
        "x-autoreply-from",
        "precedence",
        "list-id",
        "list-unsubscribe",
        "x-auto-response-suppress",
    }
)


def first_headers(parsed: ParsedMail) -> dict[str, str]:
    """The first value of each header, by lower-case name (one pass over the headers)."""
    found: dict[str, str] = {}
    for key, value in parsed.headers:
        lk = key.lower()
        if lk not in found:
            found[lk] = value
    return found


def auto_reason(
    parsed: ParsedMail, own: set[str], first: dict[str, str] | None = None
) -> tuple[str | None, bool]:
    """Why this mail must never be answered automatically (None: it may be), and whether it is
    "quiet" (an automatic mail that must not reopen a ticket: bounces, auto-replies, loops).
    `first`: `first_headers(parsed)` if the caller has it already."""
    sender = (parsed.from_addr or "").lower()
    if parsed.is_bounce:
        return "delivery status notification (bounce)", True
    if sender and sender in own:
        return f"sender {sender} is one of our own addresses", True
    found = first if first is not None else first_headers(parsed)

    def _header(_parsed: ParsedMail, name: str) -> str | None:
        return found.get(name.lower())

    auto_sub = _header(parsed, "Auto-Submitted")
    if auto_sub is not None and auto_sub.split(";", 1)[0].strip().lower() != "no":
        return f"Auto-Submitted: {auto_sub.strip()[:80]}", True
    for h in ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-Autoreply-From"):
        v = _header(parsed, h)
        if v is not None and v.strip().lower() not in ("no", "false", "0"):
            return f"{h}: {v.strip()[:80]}", True
    prec = (_header(parsed, "Precedence") or "").split(";", 1)[0].strip().lower()
    if prec in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {prec}", prec == "auto_reply"
    list_id = _header(parsed, "List-Id")
    if list_id is not None:
        return f"List-Id: {list_id.strip()[:80]}", False
    if _header(parsed, "List-Unsubscribe") is not None:
        return "List-Unsubscribe header (bulk mail)", False
    suppress = _header(parsed, "X-Auto-Response-Suppress")
    if suppress is not None:
        return f"X-Auto-Response-Suppress: {suppress.strip()[:80]}", False
    if parsed.return_path == "":
        return "empty Return-Path (<>): automatic mail", False
    if parsed.auto_submitted or parsed.is_bulk_or_list:
        return "automatic mail (auto-reply markers)", True
    return None, False


def _ack_recipient(item: IncomingMail, parsed: ParsedMail) -> tuple[str | None, str]:
    """(the Return-Path, the acknowledgement's recipient) as `queue_acknowledgement` finds
    them: the parsed Return-Path, else the one in the raw mail, else the From address."""
    from mail_sync.outbox import return_path_of

    return_path = parsed.return_path
    if return_path is None:
        return_path = return_path_of(item.raw)
    return return_path, (return_path or parsed.from_addr or "").strip().strip("<>").lower()


def _body_of(parsed: ParsedMail) -> tuple[str, str]:
    """(the article body, its folded quote): the new text, or all of it when nothing is new."""
    if parsed.new_text.strip():
        return parsed.new_text, parsed.quoted_text
    return parsed.text, ""


def _left_out_input(parsed: ParsedMail, left_out: list[str]) -> ArticleInput | None:
    """The internal note naming what a mail left out (size limits), or None."""
    if not left_out:
        return None
    who = parsed.from_addr or "(unknown sender)"
    lines = "\n".join(f"- {x}" for x in left_out[:50])
    body = f"Left out of the mail from {who} (Message-ID <{parsed.message_id or 'none'}>):\n{lines}"
    return ArticleInput(
        kind=ArticleKind.NOTE, body=body, meta={"auto": True, "reason": "size limits"}
    )


@dataclass
class _Known:
    """What the store holds for the rest of a batch, read with a few bulk queries."""

    #: MailSeen rows by server key: (article_id, quarantine_id).
    seen: dict[tuple[int, str, int, int], tuple[int | None, int | None]]
    #: Message-ID -> ticket id of the oldest stored article carrying it.
    by_mid: dict[str, int]
    #: Content hashes of stored articles without a Message-ID.
    hashes: set[str]
    #: The tickets those references point to, locked, as the bulk writer's slots.
    tickets: dict[int, TicketSlot]
    #: Ticket id by number, for the numbers the window's mails name in one of our
    #: (HMAC-verified) Message-IDs or in a subject tag; `numbers` is every number looked up.
    by_number: dict[int, int] = field(default_factory=dict)
    numbers: set[int] = field(default_factory=set)
    #: `threading.candidate_ids` of each mail of the window, by `id()` of its ParsedMail.
    candidates: dict[int, list[str]] = field(default_factory=dict)
    #: `threading.participants` of subject-tagged tickets (read when first needed).
    participants: dict[int, tuple[set[str], set[str]]] = field(default_factory=dict)
    #: Acknowledgements sent (or queued) in the last hour, by recipient (queues with
    #: acknowledgements only); counted up as the batch queues more.
    ack_sent: dict[str, int] = field(default_factory=dict)
    #: `autoreply.own_addresses`, read once (None until an acknowledgement needs it).
    ack_own: set[str] | None = None
    #: Acknowledgement templates by name (None: no such template).
    templates: dict[str, CannedResponse | None] = field(default_factory=dict)


@dataclass
class _AckJob:
    """An acknowledgement the segment queues: rendered once ticket numbers are known."""

    ticket: TicketSlot
    data: ArticleInput
    outbox: dict[str, Any]
    template: CannedResponse
    queue_name: str


@dataclass
class _Pending:
    """One article of the unwritten part of a batch, for in-batch duplicates."""

    slot: ArticleSlot
    content_hash: str
    sender: str
    subject: str
    body: str


@dataclass
class _Segment:
    """Mails planned into one bulk write: the writer, in-batch lookups, deferred results."""

    writer: MailBatchWriter
    by_mid: dict[str, TicketSlot] = field(default_factory=dict)
    articles_by_mid: dict[str, list[_Pending]] = field(default_factory=dict)
    by_hash: dict[str, ArticleSlot] = field(default_factory=dict)
    seen: dict[tuple[int, str, int, int], ArticleSlot | None] = field(default_factory=dict)
    results: list[Callable[[], IngestResult]] = field(default_factory=list)
    items: list[IncomingMail] = field(default_factory=list)
    acks: list[_AckJob] = field(default_factory=list)
    #: Senders of the mails this segment threads into tickets a subject tag may name
    #: (they are participants once written), by ticket id.
    senders: dict[int, set[str]] = field(default_factory=dict)


class _PlanFailed(Exception):
    """Planning a segment failed: write its mails one by one."""


def _chunks(seq: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _is_db_failure(exc: BaseException) -> bool:
    """Errors that are the database's fault, not the mail's: never quarantine for these."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Ingestor:
    """Turns raw mail into tickets through the service layer."""

    def __init__(
        self,
        service: Service,
        *,
        languages: Sequence[str] = DEFAULT_LANGUAGES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
        default_queue: str | None = None,
        own_addresses: Sequence[str] = (),
        parse_time_limit: float | None = 10.0,
        imported: bool = False,
    ) -> None:
        """`imported`: old mail from an archive (`helpdesk import`), not mail arriving now:
        articles (and the tickets they open) carry the mail's own Date instead of the time
        of ingest, and no acknowledgement is sent for it."""
        self.service = service
        self.imported = imported
        self.db = service.db
        self.languages = tuple(languages)
        self.max_message_bytes = max_message_bytes
        self.default_queue = default_queue
        self.extra_own = {a.strip().lower() for a in own_addresses if a and "@" in a}
        self.limits = ParseLimits(
            max_attachment_bytes=max_attachment_bytes,
            time_limit_s=parse_time_limit,
            max_message_bytes=None,
        )

    # ------------------------------------------------------------------ parsing (no DB)
    def prepare(
        self, raw: bytes, source: MailSource, *, omitted: str | None = None
    ) -> IncomingMail:
        """Parse a raw mail (CPU only: call it outside the transaction, e.g. in a thread).

        Over the size limit only the header is kept. A parse failure is recorded, not raised.
        """
        return prepare_mail(
            raw, source, omitted, self.limits, self.languages, self.max_message_bytes
        )

    def prepare_job(self) -> PrepareJob:
        """The parse settings, to parse in another process with `prepare_many`."""
        return PrepareJob(self.limits, self.languages, self.max_message_bytes)

    # ------------------------------------------------------------------ transactions
    async def ingest_batch(
        self,
        items: Sequence[IncomingMail],
        *,
        before_commit: Callable[[AsyncSession, list[IngestResult]], Awaitable[None]] | None = None,
        max_seconds: float | None = None,
    ) -> list[IngestResult]:
        """Ingest mails in one write transaction; `before_commit` adds to the same transaction.

        With `max_seconds`, the transaction commits once that much time has passed (after at
        least one mail): the result list is then shorter than `items` and the caller goes on
        with the rest in a new transaction. Results are in the order of `items`.
        """
        async with self.db.write() as session:
            await self.lock(session)
            ctx = await self._context(session)
            results = await self._ingest_items(session, ctx, items, max_seconds)
            if before_commit is not None:
                await before_commit(session, results)
        await self._run_rules(results)
        return results

    async def _ingest_items(
        self,
        session: AsyncSession,
        ctx: _Context,
        items: Sequence[IncomingMail],
        max_seconds: float | None,
    ) -> list[IngestResult]:
        """The bulk path: plan as many mails as possible into one bulk write (a segment); a
        mail the plan does not cover (quarantine, bounce, duplicate of stored mail, subject tag,
        closed ticket, acknowledgement...) goes through `ingest_one` after the segment before
        it is written, and the lookups are read again for the rest."""
        started = time.monotonic()
        results: list[IngestResult] = []
        i, n = 0, len(items)

        def over_time() -> bool:
            return max_seconds is not None and time.monotonic() - started > max_seconds

        while i < n:
            # A window bounds the lookups re-read after each one-by-one mail.
            end = min(n, i + SEGMENT_WINDOW)
            known = await self._known(session, items[i:end], ctx)
            seg = _Segment(self.service.mail_batch(session))
            fallback = broken = False
            while i < end:
                if (results or seg.items) and over_time():
                    break
                try:
                    planned = await self._plan(session, ctx, items[i], known, seg)
                except Exception as exc:
                    if _is_db_failure(exc):
                        raise
                    # A bug in planning must never lose mail: this segment goes one by one.
                    log.warning("event=bulk-plan-failed error=%s", type(exc).__name__)
                    planned, broken = False, True
                if not planned:
                    fallback = True
                    break
                seg.items.append(items[i])
                i += 1
            results.extend(await self._write_segment(session, ctx, seg, one_by_one=broken))
            if fallback and not (results and over_time()):
                results.append(await self.ingest_one(session, ctx, items[i]))
                session.expunge_all()
                i += 1
            if i < n and results and over_time():
                break
        return results

    async def _write_segment(
        self, session: AsyncSession, ctx: _Context, seg: _Segment, *, one_by_one: bool = False
    ) -> list[IngestResult]:
        """Write a planned segment in a SAVEPOINT; if that fails for a reason of the mails'
        own, ingest them one by one instead (the bad one is quarantined, none is lost)."""
        if not seg.items:
            return []
        try:
            if one_by_one:
                raise _PlanFailed
            async with session.begin_nested():
                await seg.writer.write()
        except Exception as exc:
            if _is_db_failure(exc):
                raise
            log.warning("event=bulk-write-failed error=%s: one by one", type(exc).__name__)
            session.expunge_all()
            out = []
            for item in seg.items:
                out.append(await self.ingest_one(session, ctx, item))
                session.expunge_all()
            return out
        session.expunge_all()
        return [r() for r in seg.results]

    async def _known(
        self, session: AsyncSession, items: Sequence[IncomingMail], ctx: _Context | None = None
    ) -> _Known:
        """Bulk lookups for `items`: server keys seen, stored Message-IDs (their own and the
        ones they reference), content hashes, and the referenced tickets (locked)."""
        dialect = self.db.dialect
        seen: dict[tuple[int, str, int, int], tuple[int | None, int | None]] = {}
        groups: dict[tuple[int, str, int], list[int]] = {}
        for it in items:
            key = it.source.seen_key
            if key is not None:
                groups.setdefault(key[:3], []).append(key[3])
        ms = MailSeen.__table__.c
        for (acct, folder, uv), uids in groups.items():
            for chunk in _chunks(sorted(set(uids))):
                for row in (
                    await session.execute(
                        select(ms.uid, ms.article_id, ms.quarantine_id).where(
                            ms.account_id == acct,
                            ms.folder == folder,
                            ms.uidvalidity == uv,
                            in_values(dialect, ms.uid, chunk),
                        )
                    )
                ).all():
                    seen[(acct, folder, uv, int(row.uid))] = (row.article_id, row.quarantine_id)
        own: set[str] = set()
        refs: set[str] = set()
        hashes_wanted: set[str] = set()
        candidates: dict[int, list[str]] = {}
        for it in items:
            p = it.parsed
            if p is None:
                continue
            if p.message_id:
                own.add(p.message_id)
            else:
                hashes_wanted.add(p.content_hash)
            ids = candidates[id(p)] = mail_threading.candidate_ids(p.in_reply_to, p.references)
            refs.update(ids)
        ac = Article.__table__.c
        by_mid: dict[str, int] = {}
        for chunk in _chunks(sorted(own | refs)):
            for mid, tid in (
                await session.execute(
                    select(ac.message_id, ac.ticket_id)
                    .where(in_values(dialect, ac.message_id, chunk))
                    .order_by(ac.id)
                )
            ).all():
                if mid:
                    by_mid.setdefault(mid, tid)
        hashes: set[str] = set()
        for chunk in _chunks(sorted(hashes_wanted)):
            hashes.update(
                (
                    await session.execute(
                        select(ac.content_hash).where(
                            in_values(dialect, ac.content_hash, chunk), ac.message_id.is_(None)
                        )
                    )
                ).scalars()
            )
        numbers: set[int] = set()
        if ctx is not None:
            for it in items:
                p = it.parsed
                if p is None:
                    continue
                for mid in candidates[id(p)]:
                    number = mail_threading.verify_message_id(mid, ctx.secret)
                    if number is not None:
                        numbers.add(number)
                tagged = mail_threading.find_tag(p.subject, ctx.tag_format)
                if tagged is not None:
                    numbers.add(tagged)
        by_number: dict[int, int] = {}
        tc = Ticket.__table__.c
        for chunk in _chunks(sorted(numbers)):
            for tid, number in (
                await session.execute(
                    select(tc.id, tc.number).where(in_values(dialect, tc.number, chunk))
                )
            ).all():
                by_number[int(number)] = int(tid)
        writer = self.service.mail_batch(session)
        tickets = await writer.load_tickets(
            [by_mid[m] for m in refs if m in by_mid] + list(by_number.values())
        )
        known = _Known(seen, by_mid, hashes, tickets, by_number, numbers, candidates)
        if ctx is not None and ctx.ack_queues:
            recipients = {_ack_recipient(it, it.parsed)[1] for it in items if it.parsed is not None}
            await self._count_acks(session, known, sorted(r for r in recipients if r))
        return known

    async def _decide_by_number(
        self,
        session: AsyncSession,
        ctx: _Context,
        known: _Known,
        seg: _Segment,
        parsed: ParsedMail,
        ids: Sequence[str],
    ) -> tuple[TicketSlot | None, str] | None:
        """`threading.decide` after no reference is a stored message, from the window's
        lookups: one of our HMAC-verified Message-IDs, then the subject tag (sender a
        participant of the tagged ticket, or of its organization). Returns (the ticket to
        thread into, why) or (None, why) for a new ticket; None when only the one-by-one path
        can tell (a tag naming no stored ticket; a sender who is no participant: a linked
        ticket). Senders this segment threaded into the ticket count as participants."""
        unverified: list[str] = []
        for mid in ids:
            number = mail_threading.verify_message_id(mid, ctx.secret)
            if number is not None:
                tid = known.by_number.get(number)
                if tid is not None and tid in known.tickets:
                    return known.tickets[tid], (
                        f"<{mid}> is one of our Message-IDs (HMAC verified) for ticket #{number}"
                    )
                if number not in known.numbers:
                    return None
                # no such ticket: decide() goes on with the next reference
            elif mail_threading.is_our_message_id(mid):
                unverified.append(mid)
        note = ""
        if unverified:
            note = f"; ignored unverified ticket Message-ID <{unverified[0]}>"
        elif ids:
            note = f"; none of {len(ids)} referenced Message-IDs is known"
        number = mail_threading.find_tag(parsed.subject, ctx.tag_format)
        if number is None:
            return None, mail_threading.new_ticket_reason(note)
        tid = known.by_number.get(number)
        if tid is None or tid not in known.tickets:
            return None
        tagged = known.tickets[tid]
        if tid not in known.participants:
            ticket = await session.get(Ticket, tid)
            if ticket is None:
                return None
            known.participants[tid] = await mail_threading.participants(session, ticket)
        addrs, domains = known.participants[tid]
        addrs = addrs | seg.senders.get(tid, set())
        tag = ctx.tag_format.replace("{number}", str(number))
        who = (parsed.from_addr or "").strip().lower()
        domain = who.rpartition("@")[2]
        if who and who in addrs:
            return tagged, f"subject tag {tag}; sender {who} is a participant of #{number}{note}"
        if who and domain and domain in domains:
            return tagged, (
                f"subject tag {tag}; sender domain {domain} belongs to the organization of "
                f"#{number}{note}"
            )
        return None

    async def _count_acks(
        self, session: AsyncSession, known: _Known, recipients: list[str]
    ) -> None:
        """One query for the rate limit of every acknowledgement a window may send."""
        since = self.service.clock() - timedelta(hours=1)
        oc = Outbox.__table__.c
        for chunk in _chunks(recipients):
            for key, n in (
                await session.execute(
                    select(oc.rcpt_to_key, func.count())
                    .where(
                        oc.kind == "ack",
                        oc.created_at >= since,
                        in_values(self.db.dialect, oc.rcpt_to_key, chunk),
                    )
                    .group_by(oc.rcpt_to_key)
                )
            ).all():
                known.ack_sent[key] = int(n)

    async def _plan_ack(
        self,
        session: AsyncSession,
        ctx: _Context,
        known: _Known,
        item: IncomingMail,
        parsed: ParsedMail,
        auto: str | None,
        queue_id: int,
    ) -> tuple[str, str, CannedResponse | None]:
        """`autoreply.queue_acknowledgement`'s decision for a new ticket of an acknowledging
        queue, from the batch's lookups: (outcome, recipient, template when one is queued)."""
        from mail_sync.autoreply import DEFAULT_LIMIT_PER_HOUR, own_addresses, suppression_reason
        from mail_sync.outbox import is_safe_address

        settings = ctx.ack_settings.get(queue_id, {})
        template_name = str(settings.get("ack"))
        return_path, recipient = _ack_recipient(item, parsed)
        if return_path is not None and not return_path.strip("<> "):
            return (
                "acknowledgement suppressed: the mail's Return-Path is <> (automatic mail)",
                recipient,
                None,
            )
        if known.ack_own is None:
            known.ack_own = await own_addresses(session)
        for address in dict.fromkeys([parsed.from_addr, recipient]):
            reason = suppression_reason(
                sender=address,
                auto_submitted=parsed.auto_submitted or auto is not None,
                is_bulk_or_list=parsed.is_bulk_or_list,
                is_bounce=parsed.is_bounce,
                ours=known.ack_own,
            )
            if reason:
                return f"acknowledgement suppressed: {reason}", recipient, None
        if not is_safe_address(recipient):
            return (
                f"acknowledgement suppressed: unusable return address {recipient!r}",
                recipient,
                None,
            )
        limit = int(settings.get("ack_limit_per_hour", DEFAULT_LIMIT_PER_HOUR))
        sent = known.ack_sent.get(recipient, 0)
        if sent >= limit:
            return (
                f"acknowledgement suppressed: {sent} already sent to {recipient} in the last "
                f"hour (limit {limit})",
                recipient,
                None,
            )
        if template_name not in known.templates:
            known.templates[template_name] = (
                await session.execute(
                    select(CannedResponse).where(
                        CannedResponse.name == template_name, CannedResponse.owner_id.is_(None)
                    )
                )
            ).scalar_one_or_none()
        canned = known.templates[template_name]
        if canned is None:
            return f"acknowledgement template {template_name!r} not found", recipient, None
        unknown = render(canned.body, {}).unknown  # the names only: not the ticket's values
        if unknown:
            return (
                "acknowledgement not sent: template has unknown variables " + ", ".join(unknown),
                recipient,
                None,
            )
        known.ack_sent[recipient] = sent + 1
        return "acknowledgement queued", recipient, canned

    async def _render_acks(self, session: AsyncSession, ctx: _Context, seg: _Segment) -> None:
        """Fill in the segment's acknowledgements once ticket numbers and customers are known
        (`MailBatchWriter.prepare`): the template rendered for each ticket, as
        `queue_acknowledgement` renders it, and a fresh verifiable Message-ID."""
        from store.templates import context_from

        cc, oc = Customer.__table__.c, Organization.__table__.c
        customer_ids = sorted({j.ticket.customer_id for j in seg.acks if j.ticket.customer_id})
        customers: dict[int, tuple[str, str, int | None]] = {}
        for chunk in _chunks(customer_ids):
            for row in (
                await session.execute(
                    select(cc.id, cc.name, cc.email, cc.organization_id).where(
                        in_values(self.db.dialect, cc.id, chunk)
                    )
                )
            ).all():
                customers[int(row.id)] = (row.name or "", row.email or "", row.organization_id)
        org_ids = sorted(
            {j.ticket.organization_id for j in seg.acks if j.ticket.organization_id}
            | {c[2] for c in customers.values() if c[2]}
        )
        orgs: dict[int, str] = {}
        for chunk in _chunks(org_ids):
            for oid, name in (
                await session.execute(
                    select(oc.id, oc.name).where(in_values(self.db.dialect, oc.id, chunk))
                )
            ).all():
                orgs[int(oid)] = name

        def org_of(oid: int | None) -> SimpleNamespace | None:
            return SimpleNamespace(name=orgs[oid]) if oid is not None and oid in orgs else None

        for job in seg.acks:
            t = job.ticket
            assert t.number is not None
            name, email, cust_org = customers.get(t.customer_id or 0, ("", "", None))
            customer = SimpleNamespace(
                name=name, email=email, organization=org_of(cust_org) if cust_org else None
            )
            ticket_view = SimpleNamespace(
                number=t.number,
                subject=t.subject,
                customer=customer if t.customer_id else None,
                organization=org_of(t.organization_id) if t.organization_id else None,
            )
            team = SimpleNamespace(name=job.queue_name)
            job.data.body = render(job.template.body, context_from(ticket_view, team)).text
            msgid = make_message_id(t.number, ctx.secret, ctx.domain)
            job.data.message_id = msgid
            job.outbox["message_id"] = msgid

    async def _plan(
        self,
        session: AsyncSession,
        ctx: _Context,
        item: IncomingMail,
        known: _Known,
        seg: _Segment,
    ) -> bool:
        """Plan one mail into the segment; False when it needs the one-by-one path."""
        src = item.source
        key = src.seen_key
        if key is not None:
            if key in known.seen:
                art_id, q_id = known.seen[key]
                seg.results.append(
                    lambda: IngestResult(
                        "seen",
                        "this server message was ingested before",
                        article_id=art_id,
                        quarantine_id=q_id,
                        source=src.label,
                    )
                )
                return True
            if key in seg.seen:
                prior = seg.seen[key]
                seg.results.append(
                    lambda: IngestResult(
                        "seen",
                        "this server message was ingested before",
                        article_id=prior.id if prior else None,
                        source=src.label,
                    )
                )
                return True
        parsed = item.parsed
        if parsed is None or parsed.is_bounce:
            return False
        writer = seg.writer

        # -- duplicates: of stored mail (one-by-one path), or of mail earlier in this batch
        dup: tuple[ArticleSlot, str] | None = None
        if parsed.message_id:
            if parsed.message_id in known.by_mid:
                return False
            pending = seg.articles_by_mid.get(parsed.message_id)
            if pending:
                sender = _fmt_addr(parsed.from_name, parsed.from_addr)
                body = _body_of(parsed)[0]
                for p in pending:
                    if p.content_hash == parsed.content_hash:
                        dup = p.slot, f"same Message-ID <{parsed.message_id}>, same bytes"
                    elif (
                        p.sender == sender
                        and p.subject == parsed.subject
                        and p.body.strip() == body.strip()
                    ):
                        dup = (
                            p.slot,
                            f"same Message-ID <{parsed.message_id}>, same sender/subject/text",
                        )
                    if dup is not None:
                        break
                if dup is None:
                    return False  # a reused Message-ID: noted by the one-by-one path
        else:
            if parsed.content_hash in known.hashes:
                return False
            if parsed.content_hash in seg.by_hash:
                dup = seg.by_hash[parsed.content_hash], "no Message-ID; same content"
        if dup is not None:
            original, why = dup
            dup_meta = original.data.meta
            dups = list(dup_meta.get("duplicates", []))
            if len(dups) < MAX_DUPLICATES_RECORDED:
                dups.append({"source": src.label, "why": why})
                dup_meta["duplicates"] = dups
            if key is not None:
                writer.mark_seen(key, original)
                seg.seen[key] = original
            seg.results.append(
                lambda: IngestResult(
                    "duplicate",
                    f"duplicate of article {original.id} on #{original.ticket.number} ({why})",
                    ticket_number=original.ticket.number,
                    article_id=original.id,
                    source=src.label,
                )
            )
            return True

        # -- threading: a stored (or earlier in this batch) message it references
        ids = known.candidates.get(id(parsed))
        if ids is None:
            ids = mail_threading.candidate_ids(parsed.in_reply_to, parsed.references)
        target: TicketSlot | None = None
        matched = ""
        for mid in ids:
            tid = known.by_mid.get(mid)
            if tid is not None and tid in known.tickets:
                target, matched = known.tickets[tid], mid
                break
            if tid is None and mid in seg.by_mid:
                target, matched = seg.by_mid[mid], mid
                break
        #: The threading reason when not a stored reference (`threading.decide`'s wording).
        decided: str | None = None
        if target is None:
            found = await self._decide_by_number(session, ctx, known, seg, parsed, ids)
            if found is None:
                return False  # the one-by-one path decides (and links, or names no ticket)
            target, decided = found
        first = first_headers(parsed)
        auto, quiet = auto_reason(parsed, ctx.own_addresses, first)
        meta: dict[str, Any] = {"source": src.label}
        if auto:
            meta["auto"] = True
            meta["reason"] = auto
        if parsed.warnings:
            meta["warnings"] = parsed.warnings[:20]
        left_out = list(parsed.truncated_parts)
        if item.omitted:
            left_out.insert(0, item.omitted)
        if left_out:
            meta["left_out"] = left_out[:50]

        note_input = _left_out_input(parsed, left_out)
        sender = _fmt_addr(parsed.from_name, parsed.from_addr)
        body = _body_of(parsed)[0]
        ack: tuple[str, str, CannedResponse | None] | None = None
        queue_id: int | None = None
        if target is not None:
            if target.status in (Status.CLOSED.value, Status.MERGED.value):
                return False
            text = parsed.new_text or parsed.text
            # rating_reply only finds a rating where parse_rating does: skip its query otherwise.
            if not quiet and not target.new and csat.parse_rating(text) is not None:
                assert target.number is not None
                rating = await csat.rating_reply(
                    session, target.number, parsed.in_reply_to, parsed.references, text
                )
                if rating is not None:
                    return False
            data = self._article_input(item, parsed, meta)
            ticket = target

            def set_reason(
                into: dict[str, Any] = meta,
                ticket: TicketSlot = ticket,
                mid: str = matched,
                decided: str | None = decided,
            ) -> None:
                assert ticket.number is not None
                why = decided or mail_threading.reply_reason(mid, parsed.in_reply_to, ticket.number)
                if quiet:
                    why += f"; automatic mail ({auto}): status kept"
                into["threading"] = why

            writer.before_insert(set_reason)
            if quiet:
                slot = writer.attach_quietly(MAIL, ticket, data, "automatic mail")
            else:
                slot = writer.customer_message(MAIL, ticket, data)
            if ticket.id is not None and ticket.number in known.numbers:
                seg.senders.setdefault(ticket.id, set()).update(
                    mail_threading.addresses_in([data.from_addr])
                )
            outcome = "threaded"
        else:
            queue, queue_reason = self._route(ctx, parsed, first)
            queue_id = ctx.queue_ids.get(queue.lower()) if queue else None
            if queue and queue_id is None:
                return False  # no such queue: the one-by-one path reports it
            meta["threading"] = decided
            meta["queue"] = queue_reason
            if queue_id is not None and queue_id in ctx.ack_queues and self.imported:
                meta["ack"] = IMPORTED_NO_ACK
            elif queue_id is not None and queue_id in ctx.ack_queues:
                ack = await self._plan_ack(session, ctx, known, item, parsed, auto, queue_id)
                meta["ack"] = ack[0]
            ticket, slot = writer.new_ticket(
                MAIL,
                subject=parsed.subject or "(no subject)",
                customer_email=parsed.from_addr,
                customer_name=parsed.from_name,
                queue_id=queue_id,
                language=parsed.language,
                priority=await writer.default_priority(),
                article=self._article_input(item, parsed, meta, subject=parsed.subject),
            )
            outcome = "created"
        if note_input is not None:
            writer.add_note(MAIL, ticket, note_input)
        if outcome == "created" and ack is not None and ack[2] is not None:
            self._queue_ack(ctx, seg, ticket, parsed, ack[1], ack[2], queue_id)
        if parsed.message_id:
            seg.by_mid.setdefault(parsed.message_id, ticket)
            seg.articles_by_mid.setdefault(parsed.message_id, []).append(
                _Pending(slot, parsed.content_hash, sender, parsed.subject, body)
            )
        else:
            seg.by_hash.setdefault(parsed.content_hash, slot)
        if key is not None:
            writer.mark_seen(key, slot)
            seg.seen[key] = slot
        seg.results.append(
            lambda: IngestResult(
                outcome,
                str(meta["threading"]),
                ticket_number=ticket.number,
                article_id=slot.id,
                source=src.label,
            )
        )
        return True

    def _queue_ack(
        self,
        ctx: _Context,
        seg: _Segment,
        ticket: TicketSlot,
        parsed: ParsedMail,
        recipient: str,
        template: CannedResponse,
        queue_id: int | None,
    ) -> None:
        """The acknowledgement's article and Outbox row, as `queue_acknowledgement` adds them
        (body and Message-ID filled in by `_render_acks`)."""
        now = self.service.clock()
        subject = ticket.subject
        data = ArticleInput(
            kind=ArticleKind.EMAIL_OUT,
            to_addrs=recipient,
            subject=subject if subject.lower().startswith("re:") else f"Re: {subject}",
            in_reply_to=parsed.message_id,
            references=f"<{parsed.message_id}>" if parsed.message_id else None,
            meta={"auto": "ack"},
            created_at=now,
        )
        outbox: dict[str, Any] = {
            "message_id": None,
            "rcpt_to": [recipient],
            "rcpt_to_key": recipient,
            "kind": "ack",
            "status": "queued",
            "next_attempt_at": now,
            "created_at": now,
        }
        seg.writer.outgoing(MAIL, ticket, data, outbox)
        if not seg.acks:
            seg.writer.prepare(functools.partial(self._render_acks, seg.writer.session, ctx, seg))
        queue_name = ctx.queue_names.get(queue_id, "Support") if queue_id else "Support"
        seg.acks.append(_AckJob(ticket, data, outbox, template, queue_name))

    async def _run_rules(self, results: Sequence[IngestResult]) -> None:
        """Routing and other rules run after the mail's transaction committed (never before)."""
        from store.rules import list_rules, run_rules

        todo = [
            ("created" if r.outcome == "created" else "customer_replied", r.ticket_number)
            for r in results
            if r.ticket_number is not None and r.outcome in ("created", "threaded")
        ]
        if not todo:
            return
        # run_rules does nothing for an event without enabled rules: ask once per batch,
        # not once per mail (a read transaction each).
        events = {rule.event for rule in await list_rules(self.service, include_disabled=False)}
        for event, number in todo:
            if event not in events:
                continue
            try:
                await run_rules(self.service, event, number, self.service.clock())
            except Exception:  # noqa: BLE001 - a broken rule never loses or blocks mail
                log.exception("event=rules-failed ticket=%s", number)

    async def lock(self, session: AsyncSession) -> None:
        """Serialise ingestion across processes (SQLite's BEGIN IMMEDIATE already does)."""
        if self.db.dialect == "postgresql":
            await session.execute(select(func.pg_advisory_xact_lock(*PG_INGEST_LOCK)))

    async def _context(self, session: AsyncSession) -> _Context:
        secret = await mail_threading.mail_secret(session)
        smtp = await session.get(Setting, "smtp")
        smtp_cfg: dict[str, Any] = (
            smtp.value if smtp is not None and isinstance(smtp.value, dict) else {}
        )
        tag_format = str(smtp_cfg.get("subject_tag") or mail_threading.DEFAULT_TAG_FORMAT)
        own = set(self.extra_own)
        from_address = str(smtp_cfg.get("from_address") or "")
        if "@" in from_address:
            own.add(from_address.lower())
        by_address: dict[str, str] = {}
        names: dict[int, str] = {}
        queue_ids: dict[str, int] = {}
        ack_queues: set[int] = set()
        ack_settings: dict[int, dict[str, Any]] = {}
        for q in (await session.execute(select(Queue).order_by(Queue.id))).scalars():
            names[q.id] = q.name
            queue_ids.setdefault(q.name.lower(), q.id)
            if (q.settings or {}).get("ack"):
                ack_queues.add(q.id)
                ack_settings[q.id] = dict(q.settings or {})
            for addr in q.addresses or []:
                a = addr.strip().lower()
                if a:
                    by_address.setdefault(a, q.name)
                    own.add(a)
        for username in (await session.execute(select(MailAccount.username))).scalars():
            if "@" in username:
                own.add(username.lower())
        domain = from_address.rpartition("@")[2] if "@" in from_address else "helpdesk.invalid"
        return _Context(
            secret, tag_format, by_address, names, own, domain, queue_ids, ack_queues, ack_settings
        )

    # ------------------------------------------------------------------ one mail
    async def ingest_one(
        self, session: AsyncSession, ctx: _Context, item: IncomingMail
    ) -> IngestResult:
        """Ingest one mail inside the caller's transaction (in a SAVEPOINT of its own)."""
        key = item.source.seen_key
        if key is not None:
            seen = await session.get(MailSeen, key)
            if seen is not None:
                return IngestResult(
                    "seen",
                    "this server message was ingested before",
                    article_id=seen.article_id,
                    quarantine_id=seen.quarantine_id,
                    source=item.source.label,
                )
        if item.parsed is None:
            return await self._quarantine(session, item, item.error or "unparseable")
        try:
            async with session.begin_nested():
                result = await self._ingest_parsed(session, ctx, item, item.parsed)
                if key is not None:
                    session.add(
                        MailSeen(
                            account_id=key[0],
                            folder=key[1],
                            uidvalidity=key[2],
                            uid=key[3],
                            article_id=result.article_id,
                        )
                    )
                    await session.flush()
                return result
        except Exception as exc:
            if _is_db_failure(exc):
                raise
            log.warning(
                "event=ingest-failed source=%r error=%s", item.source.label, type(exc).__name__
            )
            return await self._quarantine(
                session, item, f"ingest failed: {type(exc).__name__}: {exc}"
            )

    async def _quarantine(
        self, session: AsyncSession, item: IncomingMail, error: str
    ) -> IngestResult:
        src = item.source
        if src.seen_key is None:
            # A re-import of a mail already held is not held twice (IMAP has MailSeen for this).
            held = (
                await session.execute(
                    select(Quarantine.id)
                    .where(Quarantine.status == "held", Quarantine.raw == item.raw)
                    .limit(1)
                )
            ).scalar_one_or_none()
            if held is not None:
                return IngestResult(
                    "quarantined",
                    f"already in quarantine as entry {held}: {error}",
                    quarantine_id=held,
                    source=src.label,
                )
        q = Quarantine(
            account_id=src.account_id,
            folder=src.folder,
            uid=src.uid,
            source=src.label[:500],
            raw=item.raw,
            error=error[:4000],
            status="held",
            created_at=self.service.clock(),
        )
        session.add(q)
        await session.flush()
        key = src.seen_key
        if key is not None:
            session.add(
                MailSeen(
                    account_id=key[0],
                    folder=key[1],
                    uidvalidity=key[2],
                    uid=key[3],
                    quarantine_id=q.id,
                )
            )
            await session.flush()
        log.warning("event=quarantined id=%d source=%r error=%r", q.id, src.label, error[:200])
        return IngestResult("quarantined", error, quarantine_id=q.id, source=src.label)

    async def _duplicate_of(
        self, session: AsyncSession, parsed: ParsedMail
    ) -> tuple[Article | None, str]:
        """(the article this mail duplicates, why) or (None, a note on a Message-ID collision).

        The same Message-ID is a duplicate when it is one of our own outgoing mails, or when
        sender, subject and text agree (two deliveries differ only in trace headers). A reused
        Message-ID with different content (broken mailers do this) is NOT dropped: the mail is
        ingested and the collision noted.
        """
        if parsed.message_id:
            candidates = (
                (
                    await session.execute(
                        select(Article)
                        .where(Article.message_id == parsed.message_id)
                        .order_by(Article.id)
                        .limit(20)
                    )
                )
                .unique()
                .scalars()
                .all()
            )
            sender = _fmt_addr(parsed.from_name, parsed.from_addr)
            body = _body_of(parsed)[0]
            for art in candidates:
                if art.kind == ArticleKind.EMAIL_OUT.value:
                    return art, f"same Message-ID <{parsed.message_id}> as our own sent mail"
                if art.content_hash == parsed.content_hash:
                    return art, f"same Message-ID <{parsed.message_id}>, same bytes"
                if (
                    art.from_addr == sender
                    and art.subject == parsed.subject
                    and art.body_text.strip() == body.strip()
                ):
                    return art, f"same Message-ID <{parsed.message_id}>, same sender/subject/text"
            if candidates:
                ids = ", ".join(str(a.id) for a in candidates[:5])
                return None, (
                    f"Message-ID <{parsed.message_id}> is also on article(s) {ids} with different "
                    "content: kept as a separate mail"
                )
            return None, ""
        same = (
            (
                await session.execute(
                    select(Article)
                    .where(
                        Article.content_hash == parsed.content_hash,
                        Article.message_id.is_(None),
                    )
                    .order_by(Article.id)
                    .limit(1)
                )
            )
            .unique()
            .scalar_one_or_none()
        )
        if same is not None:
            return same, "no Message-ID; same content"
        return None, ""

    def _route(
        self, ctx: _Context, parsed: ParsedMail, first: dict[str, str] | None = None
    ) -> tuple[str | None, str]:
        candidates: list[tuple[str, str]] = [("To", a) for _, a in parsed.to]
        candidates += [("Cc", a) for _, a in parsed.cc]
        for h in ("Delivered-To", "X-Original-To", "Envelope-To"):
            v = first.get(h.lower()) if first is not None else _header(parsed, h)
            if v:
                candidates.append((h, v.strip().strip("<>")))
        for where, addr in candidates:
            name = ctx.queue_by_address.get(addr.strip().lower())
            if name:
                return name, f"queue {name}: {where} {addr.strip().lower()}"
        if self.default_queue:
            return self.default_queue, f"queue {self.default_queue}: the account's queue"
        return None, "no queue: no address matched and the source has none"

    def _article_input(
        self,
        item: IncomingMail,
        parsed: ParsedMail,
        meta: dict[str, Any],
        *,
        subject: str | None = None,
    ) -> ArticleInput:
        body, quoted = _body_of(parsed)
        return ArticleInput(
            created_at=self._mail_time(parsed),
            kind=ArticleKind.EMAIL_IN,
            body=body,
            from_addr=_fmt_addr(parsed.from_name, parsed.from_addr),
            to_addrs=", ".join(_fmt_addr(n, a) for n, a in parsed.to),
            cc_addrs=", ".join(_fmt_addr(n, a) for n, a in parsed.cc),
            subject=subject if subject is not None else parsed.subject,
            message_id=parsed.message_id,
            in_reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
            references=" ".join(f"<{r}>" for r in parsed.references) or None,
            content_hash=parsed.content_hash,
            quoted_text=quoted,
            body_html=parsed.html,
            language=parsed.language,
            raw=item.raw,
            attachments=[
                AttachmentInput(
                    filename=a.filename,
                    data=a.data,
                    mime_type=a.content_type,
                    inline=a.inline,
                    content_id=a.content_id,
                )
                for a in parsed.attachments
            ],
            meta=meta,
        )

    def _mail_time(self, parsed: ParsedMail) -> datetime | None:
        """The mail's own Date for an import (None: the time of ingest). A date in the future
        (a sender's wrong clock) or before 1990 is not believed."""
        date = parsed.date
        if not self.imported or date is None or date.year < 1990:
            return None
        return min(date.astimezone(UTC), self.service.clock())

    async def _ingest_parsed(
        self, session: AsyncSession, ctx: _Context, item: IncomingMail, parsed: ParsedMail
    ) -> IngestResult:
        src = item.source
        art, why = await self._duplicate_of(session, parsed)
        collision = why if art is None else ""
        if art is not None:
            art_meta = dict(art.meta or {})
            dups = list(art_meta.get("duplicates", []))
            if len(dups) < MAX_DUPLICATES_RECORDED:
                dups.append({"source": src.label, "why": why})
                art_meta["duplicates"] = dups
                art.meta = art_meta
            number = (
                await session.execute(select(Ticket.number).where(Ticket.id == art.ticket_id))
            ).scalar_one()
            return IngestResult(
                "duplicate",
                f"duplicate of article {art.id} on #{number} ({why})",
                ticket_number=int(number),
                article_id=art.id,
                source=src.label,
            )

        auto, quiet = auto_reason(parsed, ctx.own_addresses)
        meta: dict[str, Any] = {"source": src.label}
        if collision:
            meta["message_id_collision"] = collision
        if auto:
            meta["auto"] = True
            meta["reason"] = auto
        if parsed.warnings:
            meta["warnings"] = parsed.warnings[:20]
        left_out = list(parsed.truncated_parts)
        if item.omitted:
            left_out.insert(0, item.omitted)
        if left_out:
            meta["left_out"] = left_out[:50]

        # Bounces go to the ticket of the message that bounced, without reopening it.
        if parsed.is_bounce:
            target = await self._bounce_target(session, ctx, parsed)
            if target is not None:
                number, why = target
                meta["threading"] = why
                ticket, article = await self._attach_quietly(
                    session, number, self._article_input(item, parsed, meta), "bounce"
                )
                await self._left_out_note(session, ticket, parsed, left_out)
                return IngestResult(
                    "threaded",
                    why,
                    ticket_number=ticket.number,
                    article_id=article.id,
                    source=src.label,
                )

        decision = await mail_threading.decide(
            session,
            sender=parsed.from_addr,
            subject=parsed.subject,
            in_reply_to=parsed.in_reply_to,
            references=parsed.references,
            secret=ctx.secret,
            tag_format=ctx.tag_format,
        )
        reason = decision.reason
        if parsed.is_bounce:
            reason = "bounce whose original message is unknown; " + reason

        if decision.action == "reply" and decision.ticket_number is not None:
            if quiet:
                meta["threading"] = reason + f"; automatic mail ({auto}): status kept"
                ticket, article = await self._attach_quietly(
                    session,
                    decision.ticket_number,
                    self._article_input(item, parsed, meta),
                    "automatic mail",
                )
                await self._left_out_note(session, ticket, parsed, left_out)
                return IngestResult(
                    "threaded",
                    meta["threading"],
                    ticket_number=ticket.number,
                    article_id=article.id,
                    source=src.label,
                )
            rating = await csat.rating_reply(
                session,
                decision.ticket_number,
                parsed.in_reply_to,
                parsed.references,
                parsed.new_text or parsed.text,
            )
            if rating is not None:
                meta["threading"] = reason + f"; satisfaction rating {rating.score}: status kept"
                meta["csat"] = rating.score
                ticket, article = await self._attach_quietly(
                    session,
                    decision.ticket_number,
                    self._article_input(item, parsed, meta),
                    "satisfaction rating",
                )
                await csat.record_rating(session, ticket, rating, article)
                return IngestResult(
                    "threaded",
                    meta["threading"],
                    ticket_number=ticket.number,
                    article_id=article.id,
                    source=src.label,
                )
            meta["threading"] = reason
            data = self._article_input(item, parsed, meta)
            ticket, article, created_new = await self.service.add_customer_message(
                MAIL, decision.ticket_number, data, session=session
            )
            if created_new:
                why = f"{reason}; #{decision.ticket_number} is closed: follow-up #{ticket.number} opened"
                article.meta = {**article.meta, "threading": why}
                await self._left_out_note(session, ticket, parsed, left_out)
                await self._acknowledge(session, ctx, ticket, parsed, article, auto)
                return IngestResult(
                    "created",
                    why,
                    ticket_number=ticket.number,
                    article_id=article.id,
                    source=src.label,
                )
            if ticket.number != decision.ticket_number:
                why = f"{reason}; #{decision.ticket_number} was merged into #{ticket.number}"
                article.meta = {**article.meta, "threading": why}
                reason = why
            await self._left_out_note(session, ticket, parsed, left_out)
            return IngestResult(
                "threaded",
                reason,
                ticket_number=ticket.number,
                article_id=article.id,
                source=src.label,
            )

        queue, queue_reason = self._route(ctx, parsed)
        meta["threading"] = reason
        meta["queue"] = queue_reason
        subject = parsed.subject
        linked_from = None
        if decision.action == "linked" and decision.ticket_number is not None:
            linked_from = decision.ticket_number
            # The new ticket must not carry the other ticket's tag (replies would go there).
            subject = mail_threading.tag_pattern(ctx.tag_format).sub("", subject).strip()
        ticket = await self.service.create_ticket(
            MAIL,
            subject=subject or "(no subject)",
            customer_email=parsed.from_addr,
            customer_name=parsed.from_name,
            article=self._article_input(item, parsed, meta, subject=parsed.subject),
            queue=queue,
            language=parsed.language,
            linked_from=linked_from,
            session=session,
        )
        article = (
            (
                await session.execute(
                    select(Article)
                    .where(Article.ticket_id == ticket.id)
                    .order_by(Article.id)
                    .limit(1)
                )
            )
            .unique()
            .scalar_one()
        )
        await self._left_out_note(session, ticket, parsed, left_out)
        await self._acknowledge(session, ctx, ticket, parsed, article, auto)
        return IngestResult(
            "created", reason, ticket_number=ticket.number, article_id=article.id, source=src.label
        )

    async def _bounce_target(
        self, session: AsyncSession, ctx: _Context, parsed: ParsedMail
    ) -> tuple[int, str] | None:
        ids = [parsed.bounce_original_message_id] if parsed.bounce_original_message_id else []
        ids += [i for i in parsed.in_reply_to + list(reversed(parsed.references)) if i not in ids]
        found = await mail_threading.ticket_of_message_ids(session, ids)
        if found is not None:
            mid, ticket = found
            return (
                ticket.number,
                f"bounce of <{mid}>, a message of ticket #{ticket.number}; status kept",
            )
        for mid in ids:
            number = mail_threading.verify_message_id(mid, ctx.secret)
            if number is not None and await mail_threading.ticket_by_number(session, number):
                return (
                    number,
                    f"bounce of our message <{mid}> (HMAC verified) for #{number}; status kept",
                )
        return None

    async def _attach_quietly(
        self, session: AsyncSession, number: int, data: ArticleInput, why: str
    ) -> tuple[Ticket, Article]:
        """Add a mail to a ticket without changing its status (bounces, auto-replies)."""
        return await self.service.attach_mail(MAIL, number, data, why, session=session)

    async def _left_out_note(
        self, session: AsyncSession, ticket: Ticket, parsed: ParsedMail, left_out: list[str]
    ) -> None:
        note = _left_out_input(parsed, left_out)
        if note is not None:
            await self.service.append_article(session, ticket, MAIL, note)

    async def _acknowledge(
        self,
        session: AsyncSession,
        ctx: _Context,
        ticket: Ticket,
        parsed: ParsedMail,
        article: Article,
        auto: str | None,
    ) -> None:
        from mail_sync.autoreply import queue_acknowledgement

        queue = ticket.queue
        if queue is None or not (queue.settings or {}).get("ack"):
            return
        if self.imported:
            article.meta = {**(article.meta or {}), "ack": IMPORTED_NO_ACK}
            return
        outcome = await queue_acknowledgement(
            self.service,
            session,
            ticket,
            sender=parsed.from_addr,
            auto_submitted=parsed.auto_submitted or auto is not None,
            is_bulk_or_list=parsed.is_bulk_or_list,
            is_bounce=parsed.is_bounce,
            domain=ctx.domain,
            return_path=parsed.return_path,
        )
        article.meta = {**(article.meta or {}), "ack": outcome}


# ----------------------------------------------------------------------------- quarantine
_HDR_SUBJECT = re.compile(rb"^Subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_HDR_FROM = re.compile(
    rb"^From:.*?([^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+)", re.IGNORECASE | re.MULTILINE
)
_HDR_MSGID = re.compile(rb"^Message-ID:[ \t]*<?([^\s<>]{1,900})>?", re.IGNORECASE | re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID of a raw mail found without parsing it (for quarantined mail)."""
    m = _HDR_MSGID.search(split_header(raw))
    return m.group(1).decode("ascii", "replace") if m else None


def fallback_parsed(raw: bytes) -> ParsedMail:
    """A minimal ParsedMail for a mail the parser refuses: header fields by pattern, the raw
    text as the body. Used only when an admin releases a quarantined mail."""
    import hashlib

    head = split_header(raw)
    subj = _HDR_SUBJECT.search(head)
    sender = _HDR_FROM.search(head)
    text = _CONTROL.sub("", raw[: 1024 * 1024].decode("utf-8", "replace"))
    subject = (
        " ".join(_CONTROL.sub("", subj.group(1).decode("utf-8", "replace")).split())[:500]
        if subj
        else ""
    )
    return ParsedMail(
        message_id=header_message_id(raw),
        in_reply_to=[],
        references=[],
        subject=subject or "(released from quarantine)",
        from_addr=sender.group(1).decode("ascii", "replace").lower() if sender else "",
        from_name="",
        to=[],
        cc=[],
        reply_to=[],
        return_path=None,
        date=None,
        text=text,
        html=None,
        new_text=text,
        quoted_text="",
        attachments=[],
        language=None,
        auto_submitted=False,
        is_bulk_or_list=False,
        is_bounce=False,
        bounce_original_message_id=None,
        content_hash=hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest(),
        size=len(raw),
        warnings=["released from quarantine without parsing: the body is the raw message"],
        truncated_parts=[],
        headers=[],
    )


class QuarantineError(StoreError):
    """A quarantine entry cannot be retried or released."""


async def _held(session: AsyncSession, qid: int) -> Quarantine:
    q = await session.get(Quarantine, qid)
    if q is None:
        raise NotFoundError(f"no quarantine entry {qid} (see `helpdesk mail quarantine list`)")
    if q.status != "held":
        number = await session.scalar(select(Ticket.number).where(Ticket.id == q.ticket_id))
        raise QuarantineError(
            f"quarantine entry {qid} is already {q.status}"
            + (f" (ticket #{number})" if number is not None else "")
        )
    return q


async def resolve_quarantined(ingestor: Ingestor, qid: int, *, force: bool = False) -> IngestResult:
    """Retry a quarantined mail through the pipeline (`force`: release it even if the parser
    still refuses it, with the raw text as the body). On failure the entry stays held."""
    db = ingestor.db
    async with db.read() as session:
        q = await _held(session, qid)
        raw, label, account_id = q.raw, q.source, q.account_id
    account_queue: str | None = None
    if account_id is not None:
        async with db.read() as session:
            acct = await session.get(MailAccount, account_id)
            if acct is not None and acct.queue_id is not None:
                queue = await session.get(Queue, acct.queue_id)
                account_queue = queue.name if queue else None
    item = ingestor.prepare(raw, MailSource("quarantine", f"quarantine #{qid} ({label})"))
    if item.parsed is None:
        if not force:
            async with db.write() as session:
                q = await _held(session, qid)
                q.error = (item.error or "unparseable")[:4000]
            raise QuarantineError(
                f"quarantine entry {qid} still fails: {item.error}; "
                "`release` it to make a ticket from the raw text anyway"
            )
        item.parsed = fallback_parsed(raw)
        item.error = None
    default_queue = ingestor.default_queue
    ingestor.default_queue = default_queue or account_queue
    try:
        async with db.write() as session:
            await ingestor.lock(session)
            q = await _held(session, qid)
            ctx = await ingestor._context(session)
            failed: str | None = None
            try:
                async with session.begin_nested():
                    result = await ingestor._ingest_parsed(session, ctx, item, item.parsed)
            except Exception as exc:
                if _is_db_failure(exc):
                    raise
                q.error = f"ingest failed: {type(exc).__name__}: {exc}"[:4000]
                failed = q.error
            else:
                q.status = "released" if force else "retried"
                if result.ticket_number is not None:
                    q.ticket_id = (
                        await session.execute(
                            select(Ticket.id).where(Ticket.number == result.ticket_number)
                        )
                    ).scalar_one()
                for seen in (
                    await session.execute(select(MailSeen).where(MailSeen.quarantine_id == qid))
                ).scalars():
                    seen.article_id = result.article_id
                if result.article_id is not None:
                    art = await session.get(Article, result.article_id)
                    if art is not None and result.outcome != "duplicate":
                        art.meta = {
                            **(art.meta or {}),
                            "quarantine": f"{q.status} from quarantine #{qid}: {q.error[:300]}",
                        }
    finally:
        ingestor.default_queue = default_queue
    if failed is not None:
        raise QuarantineError(f"quarantine entry {qid} still fails: {failed}")
    return result


# ----------------------------------------------------------------------------- explain
async def explain(db: Any, what: str) -> dict[str, Any]:
    """Why mail went where it went: for a ticket number (`1234`, `#1234`) or a Message-ID."""
    key = what.strip()
    number = key.lstrip("#")
    async with db.read() as session:
        if number.isdigit():
            ticket = (
                (await session.execute(select(Ticket).where(Ticket.number == int(number))))
                .unique()
                .scalar_one_or_none()
            )
            if ticket is None:
                raise NotFoundError(f"no ticket #{number}")
            arts = (
                (
                    await session.execute(
                        select(Article)
                        .where(Article.ticket_id == ticket.id)
                        .order_by(Article.created_at, Article.id)
                    )
                )
                .unique()
                .scalars()
                .all()
            )
            mails = [await _explain_article(session, a) for a in arts if a.kind == "email_in"]
            quarantined = (
                (await session.execute(select(Quarantine).where(Quarantine.ticket_id == ticket.id)))
                .scalars()
                .all()
            )
            links = (
                await session.execute(
                    select(TicketLink.kind, Ticket.number)
                    .join(Ticket, Ticket.id == TicketLink.other_id)
                    .where(TicketLink.ticket_id == ticket.id)
                )
            ).all()
            return {
                "ticket": ticket.number,
                "subject": ticket.subject,
                "status": ticket.status,
                "links": [{"kind": k, "ticket": n} for k, n in links],
                "mails": mails,
                "quarantine": [_explain_quarantine(q) for q in quarantined],
            }
        mid = key.strip("<>")
        arts = (
            (
                await session.execute(
                    select(Article).where(Article.message_id == mid).order_by(Article.id)
                )
            )
            .unique()
            .scalars()
            .all()
        )
        found = [await _explain_article(session, a) for a in arts]
        quarantined = []
        for q in (
            await session.execute(select(Quarantine).order_by(Quarantine.id.desc()).limit(5000))
        ).scalars():
            if header_message_id(q.raw) == mid:
                quarantined.append(_explain_quarantine(q))
        if not found and not quarantined:
            raise NotFoundError(f"no mail with Message-ID <{mid}> was ingested or quarantined")
        return {"message_id": mid, "mails": found, "quarantine": quarantined}


async def _explain_article(session: AsyncSession, art: Article) -> dict[str, Any]:
    meta = art.meta or {}
    number = (
        await session.execute(select(Ticket.number).where(Ticket.id == art.ticket_id))
    ).scalar_one()
    seen = (
        await session.execute(
            select(MailSeen, MailAccount.name)
            .join(MailAccount, MailAccount.id == MailSeen.account_id)
            .where(MailSeen.article_id == art.id)
        )
    ).all()
    return {
        "article": art.id,
        "ticket": int(number),
        "kind": art.kind,
        "message_id": art.message_id,
        "from": art.from_addr,
        "subject": art.subject,
        "received": art.created_at.isoformat(timespec="seconds") if art.created_at else None,
        "source": meta.get("source"),
        "threading": meta.get("threading"),
        "queue": meta.get("queue"),
        "auto": meta.get("reason") if meta.get("auto") else None,
        "acknowledgement": meta.get("ack"),
        "left_out": meta.get("left_out", []),
        "quarantine": meta.get("quarantine"),
        "duplicates": meta.get("duplicates", []),
        "server_copies": [
            f"{name}/{s.folder} UID {s.uid} (UIDVALIDITY {s.uidvalidity})" for s, name in seen
        ],
    }


def _explain_quarantine(q: Quarantine) -> dict[str, Any]:
    return {
        "id": q.id,
        "status": q.status,
        "source": q.source,
        "error": q.error,
        "size": len(q.raw or b""),
        "since": q.created_at.isoformat(timespec="seconds") if q.created_at else None,
    }
