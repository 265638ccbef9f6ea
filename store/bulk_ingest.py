"""Many mails' worth of tickets, articles, audit and change-feed rows in a few bulk statements.

`MailBatchWriter` is the store side of bulk mail ingest (`Service.mail_batch`): the caller
records operations in order (open a ticket, a customer's message on a ticket, a quiet
attachment, a note), each applied at once to an in-memory view of the ticket, so a reply
that arrives in the same batch as its original still reopens, audits and bumps the version
exactly as `Service.create_ticket` / `add_customer_message` would one mail at a time. `write()`
then sends everything with one statement per table (executemany Core inserts, one counter
update for all new ticket numbers), inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from store import lifecycle, search_index
from store.engine import StoreError
from store.models import (
    Article,
    ArticleKind,
    Attachment,
    AuditEvent,
    Blob,
    Counter,
    Customer,
    CustomerEmail,
    Event,
    Level,
    MailSeen,
    Organization,
    Outbox,
    Status,
    Ticket,
    UTCDateTime,
)

if TYPE_CHECKING:
    from store.service import Actor, ArticleInput, Service

_T_Article = cast(Table, Article.__table__)
_T_Attachment = cast(Table, Attachment.__table__)
_T_AuditEvent = cast(Table, AuditEvent.__table__)
_T_Blob = cast(Table, Blob.__table__)
_T_Customer = cast(Table, Customer.__table__)
_T_CustomerEmail = cast(Table, CustomerEmail.__table__)
_T_Event = cast(Table, Event.__table__)
_T_MailSeen = cast(Table, MailSeen.__table__)
_T_Organization = cast(Table, Organization.__table__)
_T_Outbox = cast(Table, Outbox.__table__)
_T_Ticket = cast(Table, Ticket.__table__)

#: Rows per IN (...) list.
CHUNK = 500
#: Setting key that exists once any SLA policy was ever defined (see store/sla.py).
SLA_VERSION_KEY = "sla_version"


def _chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def in_values(dialect: str, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)`. On SQLite the values travel as ONE JSON parameter
    (`IN (SELECT value FROM json_each(?))`): building and expanding hundreds of bound
    literals per lookup cost more CPU than the lookup itself."""
    if dialect == "sqlite":
        return column.in_(
            select(literal_column("value")).select_from(func.json_each(json.dumps(list(values))))
        )
    return cast(ColumnElement[bool], column.in_(list(values)))


#: (SQL, row -> bound values) of a plain SQLite executemany, by (table, row keys).
#: (INSERT statement, its column names, the row -> bound values function)
#: PostgreSQL: inserts of at least this many rows go through COPY.
COPY_MIN_ROWS = 20
_InsertPlan = tuple[str, list[str], Callable[[dict[str, Any]], tuple[Any, ...]]]
_INSERT_PLANS: dict[tuple[str, str, tuple[str, ...]], _InsertPlan | None] = {}


def _memoised(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A datetime bind processor remembering its last results: most timestamps of a batch are
    the same `now` (formatting one costs microseconds; there are several per row)."""
    seen: dict[Any, Any] = {}

    def process(value: Any) -> Any:
        try:
            return seen[value]
        except KeyError:
            if len(seen) >= 1024:
                seen.clear()
            out = seen[value] = proc(value)
            return out

    return process


def _row_maker(
    makers: list[tuple[str | None, Any, Callable[[Any], Any] | None]],
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """One function building a row's bound values (a generator over the columns per row was
    a tenth of the bulk writer's CPU): `lambda row: (p0(row['a']), row['b'], c2, ...)`."""
    env: dict[str, Any] = {}
    parts: list[str] = []
    for i, (key, const, proc) in enumerate(makers):
        if key is None:
            env[f"c{i}"] = const
            parts.append(f"c{i}")
        elif proc is None:
            parts.append(f"row[{key!r}]")
        else:
            env[f"p{i}"] = proc
            parts.append(f"p{i}(row[{key!r}])")
    source = f"lambda row: ({', '.join(parts)},)"
    return cast(Callable[[dict[str, Any]], tuple[Any, ...]], eval(source, env))  # noqa: S307


def _insert_plan(dialect: Dialect, table: Table, keys: tuple[str, ...]) -> _InsertPlan | None:
    """How to insert rows with `keys` into `table` with the driver's executemany: the same
    SQL and bound values SQLAlchemy's `insert(table)` would send (each column's own bind
    processor, scalar column defaults for the columns not given), without its per-row
    parameter processing. None when a missing column has a computed default (use SQLAlchemy)."""
    cache_key = (dialect.name, table.name, keys)
    if cache_key in _INSERT_PLANS:
        return _INSERT_PLANS[cache_key]
    plan: _InsertPlan | None
    cols: list[str] = []
    makers: list[tuple[str | None, Any, Callable[[Any], Any] | None]] = []
    ok = True
    for col in table.columns:
        proc: Callable[[Any], Any] | None = col.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None and isinstance(col.type, UTCDateTime):
            proc = _memoised(proc)
        if col.key in keys:
            cols.append(col.name)
            makers.append((col.key, None, proc))
        elif col.default is not None:
            if not col.default.is_scalar:
                ok = False
                break
            value = col.default.arg  # type: ignore[attr-defined]
            cols.append(col.name)
            makers.append((None, proc(value) if proc else value, None))
    if ok and set(keys) <= {c.key for c in table.columns}:
        quote = dialect.identifier_preparer.quote
        sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)})"
        )
        plan = (sql, cols, _row_maker(makers))
    else:
        plan = None
    _INSERT_PLANS[cache_key] = plan
    return plan


@dataclass(eq=False)
class TicketSlot:
    """A ticket the batch writes to: an existing one (locked) or one the batch creates."""

    id: int | None
    number: int | None
    status: str
    version: int
    customer_id: int | None
    organization_id: int | None
    language: str | None
    last_customer_at: datetime | None
    solved_at: datetime | None
    postponed_until: datetime | None
    updated_at: datetime | None
    merged_into_id: int | None = None
    new: bool = False
    changed: bool = False
    needs_sla: bool = False
    subject: str = ""
    queue_id: int | None = None
    customer_email: str = ""
    customer_name: str = ""
    #: The customer's name as stored (after `write()` found or created the customer).
    stored_customer_name: str = ""
    created_at: datetime | None = None
    priority: int = 1


@dataclass(eq=False)
class ArticleSlot:
    """An article the batch inserts; `id` is set by `write()`."""

    ticket: TicketSlot
    data: ArticleInput
    actor: Actor
    id: int | None = None
    #: Outgoing mail only: "queued" for the outbox.
    delivery_status: str | None = None


@dataclass
class _Audit:
    ticket: TicketSlot
    actor: str
    action: str
    field: str | None
    old: str | None
    new: Callable[[], str | None]
    at: datetime


@dataclass
class _Seen:
    key: tuple[int, str, int, int]
    article: ArticleSlot | None


@dataclass
class MailBatchWriter:
    """Collects a batch's ticket changes in order, then writes them in bulk (see module doc)."""

    service: Service
    session: AsyncSession
    tickets: list[TicketSlot] = field(default_factory=list)
    articles: list[ArticleSlot] = field(default_factory=list)
    audits: list[_Audit] = field(default_factory=list)
    events: list[tuple[TicketSlot, str, str, datetime]] = field(default_factory=list)
    seen: list[_Seen] = field(default_factory=list)
    _before_insert: list[Callable[[], None]] = field(default_factory=list)
    _prepare: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    outbox: list[tuple[ArticleSlot, dict[str, Any]]] = field(default_factory=list)
    _priority: int | None = None
    _started: datetime | None = None

    @property
    def dialect(self) -> str:
        return self.service.db.dialect

    def _now(self) -> datetime:
        """The batch's time: one clock reading for every row it writes (one transaction)."""
        if self._started is None:
            self._started = self.service.clock()
        return self._started

    def __len__(self) -> int:
        return len(self.articles) + len(self.seen)

    async def _insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """`session.execute(insert(table), rows)`; on SQLite as one plain aiosqlite
        executemany (see `_insert_plan`): same rows, a fraction of the CPU."""
        if not rows:
            return
        if self.dialect == "postgresql" and len(rows) >= COPY_MIN_ROWS:
            conn = await self.session.connection()
            plan = _insert_plan(conn.dialect, table, tuple(rows[0]))
            raw = (await conn.get_raw_connection()).driver_connection
            if plan is not None and raw is not None:
                _, cols, make = plan
                # COPY: one message stream instead of a Bind/Execute per row, and no per-row
                # statement overhead in the server. Same connection, same transaction. An
                # error here is asyncpg's own: the caller's fallback writes the mails one by
                # one through SQLAlchemy, which raises a database failure as its own.
                await raw.copy_records_to_table(
                    table.name, records=list(map(make, rows)), columns=cols
                )
                return
        if self.dialect == "sqlite":
            conn = await self.session.connection()
            plan = _insert_plan(conn.dialect, table, tuple(rows[0]))
            if plan is not None:
                sql, _, make = plan
                # Straight to aiosqlite: one hop to SQLite's thread, where SQLAlchemy's
                # adapter takes four (cursor, execute, close...) each costing the event loop
                # a wake-up. Same connection, same transaction.
                raw = (await conn.get_raw_connection()).driver_connection
                if raw is not None:
                    params = list(map(make, rows))
                    try:
                        await raw.executemany(sql, params)
                    except sqlite3.Error as exc:  # as SQLAlchemy would raise it
                        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
                    return
                await conn.exec_driver_sql(sql, list(map(make, rows)))
                return
        await self.session.execute(insert(table), rows)

    async def _reserve_ids(self, table: Table, n: int) -> list[int]:
        """`n` primary keys for `table`, so rows go in with one plain executemany (SQLite runs
        INSERT ... RETURNING one row at a time). SQLite: above the current maximum (the
        write transaction holds the database lock). PostgreSQL: from the table's sequence."""
        if n <= 0:
            return []
        if self.dialect == "postgresql":
            rows = await self.session.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"
                ),
                {"t": table.name, "n": n},
            )
            return sorted(int(v) for v in rows.scalars())
        top = (await self.session.execute(select(func.max(table.c.id)))).scalar_one_or_none()
        first = int(top or 0) + 1
        return list(range(first, first + n))

    # ----------------------------------------------------------------- reads
    async def load_tickets(self, ids: Iterable[int]) -> dict[int, TicketSlot]:
        """Existing tickets by id, locked for update on PostgreSQL (as the service locks them)."""
        out: dict[int, TicketSlot] = {}
        t = _T_Ticket.c
        wanted = sorted(set(ids))
        for chunk in _chunks(wanted):
            stmt = select(
                t.id,
                t.number,
                t.status,
                t.version,
                t.customer_id,
                t.organization_id,
                t.language,
                t.last_customer_at,
                t.solved_at,
                t.postponed_until,
                t.updated_at,
                t.merged_into_id,
                t.queue_id,
            ).where(in_values(self.dialect, t.id, chunk))
            if self.dialect == "postgresql":
                stmt = stmt.with_for_update()
            for row in (await self.session.execute(stmt)).all():
                out[row.id] = TicketSlot(
                    id=row.id,
                    number=int(row.number),
                    status=row.status,
                    version=row.version,
                    customer_id=row.customer_id,
                    organization_id=row.organization_id,
                    language=row.language,
                    last_customer_at=row.last_customer_at,
                    solved_at=row.solved_at,
                    postponed_until=row.postponed_until,
                    updated_at=row.updated_at,
                    merged_into_id=row.merged_into_id,
                    queue_id=row.queue_id,
                )
        return out

    async def default_priority(self) -> int:
        """The priority of a new ticket with medium impact and urgency (the team's matrix)."""
        if self._priority is None:
            matrix = await self.service.priority_matrix_in(self.session)
            self._priority = int(lifecycle.derive_priority(Level.MEDIUM, Level.MEDIUM, matrix))
        return self._priority

    # ----------------------------------------------------------------- operations
    def _audit(
        self,
        ticket: TicketSlot,
        actor: Actor,
        action: str,
        fld: str | None,
        old: str | None,
        new: Callable[[], str | None],
    ) -> None:
        self.audits.append(_Audit(ticket, str(actor), action, fld, old, new, self._now()))

    def _event(self, ticket: TicketSlot, kind: str, actor: Actor) -> None:
        self.events.append((ticket, kind, str(actor), self._now()))

    def _touch(self, ticket: TicketSlot) -> None:
        ticket.updated_at = self._now()
        ticket.version += 1
        ticket.changed = True

    def _article(self, ticket: TicketSlot, actor: Actor, data: ArticleInput) -> ArticleSlot:
        slot = ArticleSlot(ticket, data, actor)
        self.articles.append(slot)
        return slot

    def new_ticket(
        self,
        actor: Actor,
        *,
        subject: str,
        customer_email: str,
        customer_name: str,
        queue_id: int | None,
        language: str | None,
        priority: int,
        article: ArticleInput,
    ) -> tuple[TicketSlot, ArticleSlot]:
        """`Service.create_ticket` for a mail: ticket, first article, audit, event, SLA."""
        now = article.created_at or self._now()
        ticket = TicketSlot(
            id=None,
            number=None,
            status=Status.NEW.value,
            version=1,
            customer_id=None,
            organization_id=None,
            language=language or article.language,
            last_customer_at=now if article.kind is ArticleKind.EMAIL_IN else None,
            solved_at=None,
            postponed_until=None,
            updated_at=now,
            new=True,
            needs_sla=True,
            subject=subject.strip() or "(no subject)",
            queue_id=queue_id,
            customer_email=customer_email,
            customer_name=customer_name,
            created_at=now,
            priority=priority,
        )
        self.tickets.append(ticket)
        slot = self._article(ticket, actor, article)
        self._audit(ticket, actor, "created", None, None, lambda: f"#{ticket.number}")
        self._event(ticket, "created", actor)
        return ticket, slot

    def customer_message(
        self, actor: Actor, ticket: TicketSlot, article: ArticleInput
    ) -> ArticleSlot:
        """`Service.add_customer_message` on an open (not closed, not merged) ticket."""
        if ticket.status in (Status.CLOSED.value, Status.MERGED.value):
            raise StoreError(f"#{ticket.number} is {ticket.status}: not a bulk customer message")
        now = article.created_at or self._now()
        slot = self._article(ticket, actor, article)
        status = Status(ticket.status)
        if status in lifecycle.REOPENED_BY_CUSTOMER and status is not Status.OPEN:
            old = ticket.status
            self._audit(ticket, actor, "status", "status", old, lambda: Status.OPEN.value)
            ticket.status = Status.OPEN.value
            ticket.solved_at = None
            ticket.postponed_until = None
            if status is Status.POSTPONED:
                self._audit(
                    ticket, actor, "woken", "status", "postponed", lambda: "customer replied"
                )
        ticket.last_customer_at = now
        if article.language:
            ticket.language = article.language
        self._audit(ticket, actor, "customer-replied", None, None, lambda: f"article {slot.id}")
        before = ticket.updated_at
        self._touch(ticket)
        if article.created_at is not None and before is not None:
            ticket.updated_at = max(before, article.created_at)  # an imported reply: its date
        ticket.needs_sla = True
        self._event(ticket, "article", actor)
        return slot

    def attach_quietly(
        self, actor: Actor, ticket: TicketSlot, article: ArticleInput, why: str
    ) -> ArticleSlot:
        """A mail on a ticket without a status change (auto-replies, bounces, ratings)."""
        slot = self._article(ticket, actor, article)
        self._audit(
            ticket, actor, "mail-attached", None, None, lambda: f"article {slot.id} ({why})"
        )
        self._touch(ticket)
        self._event(ticket, "article", actor)
        return slot

    def add_note(self, actor: Actor, ticket: TicketSlot, article: ArticleInput) -> ArticleSlot:
        """An article with no audit line or event of its own (e.g. what a mail left out)."""
        return self._article(ticket, actor, article)

    def mark_seen(self, key: tuple[int, str, int, int], article: ArticleSlot | None) -> None:
        """Record which server message became which article (MailSeen), written with the rest."""
        self.seen.append(_Seen(key, article))

    def outgoing(
        self, actor: Actor, ticket: TicketSlot, article: ArticleInput, outbox: dict[str, Any]
    ) -> ArticleSlot:
        """An outgoing mail queued for sending (an acknowledgement): the article (delivery
        status "queued", no audit line or event, as `queue_acknowledgement` adds it) and its
        Outbox row (`outbox`: the row's columns but the article and ticket ids)."""
        slot = self._article(ticket, actor, article)
        slot.delivery_status = "queued"
        self.outbox.append((slot, outbox))
        return slot

    def prepare(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Await `fn` once ticket numbers and customers are known, before articles go in."""
        self._prepare.append(fn)

    def before_insert(self, fn: Callable[[], None]) -> None:
        """Call `fn` once ticket numbers are known, before the articles are inserted."""
        self._before_insert.append(fn)

    # ----------------------------------------------------------------- write
    async def write(self) -> None:
        """Write everything recorded so far (in the caller's transaction) and fill in ids."""
        session = self.session
        new = [t for t in self.tickets if t.new]
        if new:
            await self._customers(new)
            await self._numbers(new)
        for fn in self._before_insert:
            fn()
        for afn in self._prepare:
            await afn()
        if new:
            await self._insert_tickets(new)
        await self._insert_articles()
        if self.outbox:
            await self._insert(
                _T_Outbox,
                [{**row, "article_id": a.id, "ticket_id": a.ticket.id} for a, row in self.outbox],
            )
        await self._update_tickets()
        if self.audits:
            await self._insert(
                _T_AuditEvent,
                [
                    {
                        "ticket_id": a.ticket.id,
                        "actor": a.actor,
                        "action": a.action,
                        "field": a.field,
                        "old_value": a.old,
                        "new_value": a.new(),
                        "created_at": a.at,
                    }
                    for a in self.audits
                ],
            )
        if self.events:
            rows = [
                {"ticket_id": t.id, "kind": kind, "actor": actor, "created_at": at}
                for t, kind, actor, at in self.events
            ]
            ids = await self._reserve_ids(_T_Event, len(rows))
            for row, eid in zip(rows, ids, strict=True):
                row["id"] = eid
            await self._insert(_T_Event, rows)
            # Listeners only wake up on a notification; one per batch is enough.
            await self.service.notify_event(session, ids[-1])
        if self.seen:
            await self._insert(
                _T_MailSeen,
                [
                    {
                        "account_id": s.key[0],
                        "folder": s.key[1],
                        "uidvalidity": s.key[2],
                        "uid": s.key[3],
                        "article_id": s.article.id if s.article is not None else None,
                        "quarantine_id": None,
                    }
                    for s in self.seen
                ],
            )
        await self._sla()

    async def _customers(self, new: list[TicketSlot]) -> None:
        """`Service.customer_for` for every new ticket: found by any address, else created."""
        session = self.session
        c, ce = _T_Customer.c, _T_CustomerEmail.c
        # In the order the tickets were opened: new customers get their ids in that order, as
        # one-by-one ingestion would give them.
        emails = list(
            dict.fromkeys((t.customer_email.strip().lower() or "unknown@invalid") for t in new)
        )
        found: dict[str, tuple[int, int | None, str]] = {}
        params: list[dict[str, Any]] = []
        for chunk in _chunks(emails):
            for row in (
                await session.execute(
                    select(c.id, c.email, c.organization_id, c.name).where(
                        in_values(self.dialect, c.email, chunk)
                    )
                )
            ).all():
                found[row.email] = (row.id, row.organization_id, row.name or "")
        rest = [e for e in emails if e not in found]
        for chunk in _chunks(rest):
            for row in (
                await session.execute(
                    select(ce.email, c.id, c.organization_id, c.name)
                    .join(_T_Customer, c.id == ce.customer_id)
                    .where(in_values(self.dialect, ce.email, chunk))
                )
            ).all():
                found[row.email] = (row.id, row.organization_id, row.name or "")
        missing = [e for e in emails if e not in found]
        if missing:
            orgs = (
                await session.execute(
                    select(_T_Organization.c.id, _T_Organization.c.domains).order_by(
                        _T_Organization.c.id
                    )
                )
            ).all()
            names: dict[str, str] = {}
            for t in new:
                e = t.customer_email.strip().lower() or "unknown@invalid"
                names.setdefault(e, t.customer_name)
            for e in missing:
                domain = e.rpartition("@")[2]
                org_id = None
                if domain:
                    for oid, domains in orgs:
                        if domain in [d.lower() for d in domains or []]:
                            org_id = oid
                            break
                params.append(
                    {
                        "email": e,
                        "name": names.get(e, ""),
                        "organization_id": org_id,
                        "created_at": self._now(),
                    }
                )
            ids = await self._reserve_ids(_T_Customer, len(params))
            for p, cid in zip(params, ids, strict=True):
                p["id"] = cid
            await self._insert(_T_Customer, params)
            for e, p, cid in zip(missing, params, ids, strict=True):
                found[e] = (int(cid), p["organization_id"], str(p["name"]))
        renamed: dict[int, str] = {}
        for t in new:
            e = t.customer_email.strip().lower() or "unknown@invalid"
            cid, org_id, name = found[e]
            if t.customer_name and not name and cid not in renamed:
                renamed[cid] = t.customer_name
                found[e] = (cid, org_id, t.customer_name)
            t.customer_id, t.organization_id = cid, org_id
            t.stored_customer_name = found[e][2]
        if renamed:
            await session.execute(
                update(_T_Customer)
                .where(c.id == bindparam("b_id"))
                .values(name=bindparam("b_name")),
                [{"b_id": k, "b_name": v} for k, v in renamed.items()],
            )

    async def _numbers(self, new: list[TicketSlot]) -> None:
        """All new tickets' numbers from one counter update, in the order they were opened."""
        value = (
            await self.session.execute(
                update(Counter)
                .where(Counter.name == "ticket")
                .values(value=Counter.value + len(new))
                .returning(Counter.value)
            )
        ).scalar_one_or_none()
        if value is None:
            raise StoreError("the store has no ticket counter; run `helpdesk db upgrade`")
        first = int(value) - len(new) + 1
        for i, t in enumerate(new):
            t.number = first + i

    async def _insert_tickets(self, new: list[TicketSlot]) -> None:
        rows = [
            {
                "number": t.number,
                "subject": t.subject,
                "status": t.status,
                "priority": t.priority,
                "impact": int(Level.MEDIUM),
                "urgency": int(Level.MEDIUM),
                "priority_override_by": None,
                "type": None,
                "queue_id": t.queue_id,
                "assignee_id": None,
                "customer_id": t.customer_id,
                "organization_id": t.organization_id,
                "language": t.language,
                "channel": "email",
                "created_at": t.created_at,
                "updated_at": t.updated_at,
                "last_customer_at": t.last_customer_at,
                "solved_at": t.solved_at,
                "postponed_until": t.postponed_until,
                "linked_from_id": None,
                "version": t.version,
            }
            for t in new
        ]
        ids = await self._reserve_ids(_T_Ticket, len(rows))
        for t, row, tid in zip(new, rows, ids, strict=True):
            row["id"] = t.id = tid
            t.changed = False
        await self._insert(_T_Ticket, rows)

    async def _insert_articles(self) -> None:
        if not self.articles:
            return
        session = self.session
        blobs: dict[str, bytes] = {}
        raw_sha: list[str | None] = []
        for a in self.articles:
            if a.data.raw is not None:
                digest = hashlib.sha256(a.data.raw).hexdigest()
                blobs.setdefault(digest, a.data.raw)
                raw_sha.append(digest)
            else:
                raw_sha.append(None)
        att_sha: list[list[str]] = []
        for a in self.articles:
            shas = []
            for att in a.data.attachments:
                digest = hashlib.sha256(att.data).hexdigest()
                blobs.setdefault(digest, att.data)
                shas.append(digest)
            att_sha.append(shas)
        if blobs:
            bc = _T_Blob.c
            have: set[str] = set()
            for chunk in _chunks(sorted(blobs)):
                have.update(
                    (
                        await session.execute(
                            select(bc.sha256).where(in_values(self.dialect, bc.sha256, chunk))
                        )
                    ).scalars()
                )
            fresh = [
                {"sha256": k, "size": len(v), "data": v} for k, v in blobs.items() if k not in have
            ]
            if fresh:
                await self._insert(_T_Blob, fresh)
        rows = []
        for a, sha in zip(self.articles, raw_sha, strict=True):
            d = a.data
            assert a.ticket.id is not None
            rows.append(
                {
                    "ticket_id": a.ticket.id,
                    "kind": d.kind.value,
                    "author_agent_id": a.actor.agent_id,
                    "author_customer_id": a.ticket.customer_id
                    if d.kind is ArticleKind.EMAIL_IN
                    else None,
                    "from_addr": d.from_addr,
                    "to_addrs": d.to_addrs,
                    "cc_addrs": d.cc_addrs,
                    "subject": d.subject,
                    "message_id": d.message_id,
                    "in_reply_to": d.in_reply_to,
                    "references": d.references,
                    "content_hash": d.content_hash,
                    "body_text": d.body,
                    "quoted_text": d.quoted_text,
                    "body_html": d.body_html,
                    "language": d.language,
                    "delivery_status": a.delivery_status,
                    "delivery_error": None,
                    "raw_blob": sha,
                    "meta": d.meta,
                    "created_at": d.created_at or self._now(),
                }
            )
        ids = await self._reserve_ids(_T_Article, len(rows))
        for a, row, aid in zip(self.articles, rows, ids, strict=True):
            row["id"] = a.id = aid
        await self._insert(_T_Article, rows)
        atts = [
            {
                "article_id": a.id,
                "filename": att.filename,
                "mime_type": att.mime_type,
                "size": len(att.data),
                "sha256": sha,
                "inline": att.inline,
                "content_id": att.content_id,
            }
            for a, shas in zip(self.articles, att_sha, strict=True)
            for att, sha in zip(a.data.attachments, shas, strict=True)
        ]
        if atts:
            await self._insert(_T_Attachment, atts)
        # One rebuild of every touched ticket's search document (new ones included).
        await search_index.reindex_tickets(
            session, self.dialect, [t.id for t in self._unique_tickets() if t.id is not None]
        )

    async def _update_tickets(self) -> None:
        changed = [t for t in self._unique_tickets() if not t.new and t.changed]
        if not changed:
            return
        tc = _T_Ticket.c
        await self.session.execute(
            update(_T_Ticket)
            .where(tc.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                version=bindparam("b_version"),
                updated_at=bindparam("b_updated_at", type_=tc.updated_at.type),
                last_customer_at=bindparam("b_last_customer_at", type_=tc.last_customer_at.type),
                solved_at=bindparam("b_solved_at", type_=tc.solved_at.type),
                postponed_until=bindparam("b_postponed_until", type_=tc.postponed_until.type),
                language=bindparam("b_language"),
            ),
            [
                {
                    "b_id": t.id,
                    "b_status": t.status,
                    "b_version": t.version,
                    "b_updated_at": t.updated_at,
                    "b_last_customer_at": t.last_customer_at,
                    "b_solved_at": t.solved_at,
                    "b_postponed_until": t.postponed_until,
                    "b_language": t.language,
                }
                for t in changed
            ],
        )
        for t in changed:
            t.changed = False

    def _unique_tickets(self) -> list[TicketSlot]:
        seen: set[int] = set()
        out: list[TicketSlot] = []
        for a in self.articles:
            if id(a.ticket) not in seen:
                seen.add(id(a.ticket))
                out.append(a.ticket)
        return out

    async def _sla(self) -> None:
        """SLA clocks as the service keeps them: nothing to do until a policy was ever made."""
        ids = [t.id for t in self._unique_tickets() if t.needs_sla and t.id is not None]
        if not ids:
            return
        from store import sla
        from store.models import Setting

        if await self.session.get(Setting, SLA_VERSION_KEY) is None:
            return
        for chunk in _chunks(ids):
            tickets = (
                (
                    await self.session.execute(
                        select(Ticket)
                        .where(Ticket.id.in_(list(chunk)))
                        .execution_options(populate_existing=True)
                    )
                )
                .unique()
                .scalars()
                .all()
            )
            for t in tickets:
                await sla.recompute_ticket(self.session, t, self._now())
        await self.session.flush()
