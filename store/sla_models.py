"""SLA tables: business calendars, SLA policies and each ticket's SLA state.

Also `sla_condition`, the SQL for the query language's ``sla:`` key (kept here, next to
the columns it reads, so `store.query` can import it without an import cycle).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from store.models import Base, Ticket, utcnow

__all__ = [
    "CLOCKS",
    "SLA_VALUES",
    "Calendar",
    "SlaPolicy",
    "TicketSla",
    "sla_condition",
]

#: The three clocks, in the order they are shown.
CLOCKS: tuple[str, ...] = ("first_response", "next_response", "resolution")


class Calendar(Base):
    """Business hours: a time zone, working hours per weekday and holidays."""

    __tablename__ = "calendars"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: ``{"mon": [["09:00", "17:00"]], ...}``; a day left out is not worked.
    hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Public holidays from the `holidays` package (ISO country code, e.g. "LV").
    country: Mapped[str | None] = mapped_column(String(10))
    subdivision: Mapped[str | None] = mapped_column(String(20))
    #: Dates added by hand or imported from an iCalendar file (ISO strings).
    extra_holidays: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlaPolicy(Base):
    """A promise: for tickets matching `condition`, respond/resolve within targets.

    `targets` is ``{"urgent": {"first_response": 60, "next_response": 120,
    "resolution": 480}, "high": {...}, ...}`` in business minutes; a priority or a clock
    left out has no target. The policy with the lowest `position` that matches applies.
    """

    __tablename__ = "sla_policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    #: A query in the store's query language; empty matches every ticket.
    condition: Mapped[str] = mapped_column(Text, default="")
    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="RESTRICT"))
    targets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: On-hold (waiting on a third party) pauses the clocks only where this is set;
    #: pending always pauses, postponed never does.
    pause_on_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketSla(Base):
    """One ticket's SLA state, kept by `store.sla.recompute_ticket`.

    Due times are absolute (UTC); a paused clock keeps the due time it had when the pause
    began (its `next_due_at` contribution is dropped while paused) and moves it later by
    the paused business time when it resumes. `pauses` is the log the due times are
    computed from: ``[{"from": iso, "until": iso | null, "status": "pending"}, ...]``.
    """

    __tablename__ = "ticket_sla"
    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("sla_policies.id", ondelete="SET NULL"), index=True
    )
    first_response_due: Mapped[datetime | None] = mapped_column()
    next_response_due: Mapped[datetime | None] = mapped_column()
    resolution_due: Mapped[datetime | None] = mapped_column()
    #: Sticky: once a clock was seen past due (running or met late) it stays breached.
    first_response_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    next_response_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    resolution_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Any of the three (what ``sla:breached`` reads besides a running clock past due).
    breached: Mapped[bool] = mapped_column(Boolean, default=False)
    #: When the nearest running clock gets under 20% of its target left (None: none runs).
    warning_at: Mapped[datetime | None] = mapped_column()
    #: Since when the clocks are paused (None: running or stopped), and why.
    paused_since: Mapped[datetime | None] = mapped_column()
    paused_status: Mapped[str | None] = mapped_column(String(20))
    pauses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: How each due time was computed, for `helpdesk sla explain` and the ticket header.
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    computed_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_ticket_sla_warning_at", "warning_at"),
        Index("ix_ticket_sla_breached", "breached"),
        # Reports read policy and breach per ticket from this small index instead of the
        # wide rows (explanations are JSON) (migration 0005).
        Index("ix_ticket_sla_report", "ticket_id", "policy_id", "breached"),
    )


# --- the ``sla:`` query key ------------------------------------------------------------

SLA_VALUES: tuple[str, ...] = ("breached", "warning", "paused", "running", "none", "due<2h")
_DUE_RE = re.compile(r"^due(<=|>=|<|>)(\d+)(min|m|h|d|w)$")
_UNITS = {"min": 60, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def sla_condition(value: str, now: datetime) -> ColumnElement[bool]:
    """SQL over ``tickets`` for ``sla:VALUE`` at `now` (no joins: subqueries only).

    * ``breached``: a running clock is past due now, or a clock was breached before
      (met late, or seen past due).
    * ``warning``: the nearest running clock has under 20% of its target left, not yet
      past due.
    * ``due<2h`` (also ``<=``, ``>``, ``>=``; units min h d w): the nearest running
      clock's due time is within 2 hours of wall-clock time from now (overdue included).
    * ``paused``: clocks paused (pending, or on-hold where the policy says so).
    * ``running``: some clock is running; ``none``: no clock runs.

    Raises ValueError with a human message for an unknown value.
    """
    v = value.strip().lower()
    in_sla = Ticket.id.in_
    if v == "breached":
        return or_(
            and_(Ticket.next_due_at.is_not(None), Ticket.next_due_at <= now),
            in_sla(select(TicketSla.ticket_id).where(TicketSla.breached == true())),
        )
    if v == "warning":
        return and_(
            Ticket.next_due_at > now,
            in_sla(select(TicketSla.ticket_id).where(TicketSla.warning_at <= now)),
        )
    if v == "paused":
        return in_sla(select(TicketSla.ticket_id).where(TicketSla.paused_since.is_not(None)))
    if v == "running":
        return Ticket.next_due_at.is_not(None)
    if v == "none":
        return Ticket.next_due_at.is_(None)
    m = _DUE_RE.match(v.replace(" ", ""))
    if m:
        op, amount, unit = m.groups()
        limit = now + timedelta(seconds=int(amount) * _UNITS[unit])
        col = Ticket.next_due_at
        if op == "<":
            return col < limit
        if op == "<=":
            return col <= limit
        if op == ">":
            return col > limit
        return col >= limit
    raise ValueError(
        f"unknown 'sla:' value '{value}' (one of: breached, warning, paused, running, none, "
        "due<2h, due>30min, due<=1d)"
    )
