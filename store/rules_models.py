"""Rule tables: triggers (condition -> actions) and the record of which rule fired where.

Assignment strategy is not a table: it lives in ``Queue.settings`` as
``{"assign": "manual"|"round_robin"|"least_loaded", "require_presence": bool,
"rr_cursor": agent_id, "lead": login}`` (see `store.rules`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from store.models import Base, utcnow

__all__ = ["RULE_EVENTS", "Rule", "RuleRun"]

#: When a rule is evaluated.
RULE_EVENTS: tuple[str, ...] = ("created", "customer_replied", "updated", "time")


class Rule(Base):
    """A trigger: on `event`, for tickets matching `condition` (a query), run `actions`.

    `actions` is a list of ``{"type": "set_queue", "value": "Baltics"}``-style objects;
    enabled rules of one event run in `position` order (then id).
    """

    __tablename__ = "rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    event: Mapped[str] = mapped_column(String(20))
    #: A query in the store's query language; empty matches every ticket.
    condition: Mapped[str] = mapped_column(Text, default="")
    actions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    position: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_rules_event_position", "event", "position", "id"),)


class RuleRun(Base):
    """One firing of a rule on a ticket, unique per (rule, ticket, fingerprint).

    The fingerprint names the event instance (``created``, ``updated:e123`` for the feed
    event that triggered the chain, ``time`` for a time rule while its condition holds),
    so a rule never fires twice for the same ticket and event instance.
    """

    __tablename__ = "rule_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(100))
    fired_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint(
            "rule_id", "ticket_id", "fingerprint", name="uq_rule_runs_rule_ticket_fingerprint"
        ),
    )
