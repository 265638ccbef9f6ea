"""The row a ticket list shows, in a module of its own: `store.listing` builds it with
SQLAlchemy, the console's fast first page (`store.firstpage`) with the standard library
only, so this file imports nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class TicketRow:
    """What a ticket list shows, read in one SELECT (no ORM objects).

    `version` is the ticket's version when the row was read (for conflict detection): the
    fast first page reads it, the console fills it in for `store.listing` pages, and raises
    it when it changes the ticket itself.
    """

    id: int
    number: int
    subject: str
    status: str
    priority: int
    assignee_login: str | None
    assignee_name: str | None
    customer_name: str | None
    customer_email: str | None
    queue_name: str | None
    updated_at: datetime
    created_at: datetime
    next_due_at: datetime | None
    postponed_until: datetime | None
    last_customer_at: datetime | None
    tags: tuple[str, ...] = ()
    version: int | None = None
