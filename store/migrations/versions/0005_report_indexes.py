"""Indexes for reports and the SLA engine (issue 6's benchmark)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 14:30:00

* ``ix_tickets_solved``: tickets solved in a period.
* ``ix_articles_ticket_kind_created``: a ticket's mails of one kind by time, from the
  index alone (first-contact resolution; the latest agent reply for the SLA clocks).
* ``ix_audit_events_csat``: a partial index of the CSAT ratings by time.
* ``ix_ticket_sla_report``: policy and breach per ticket without reading the wide rows.
* ``ix_audit_events_reopens``: a partial index holding only the reopens (status from
  solved/closed back to an active one); store/models.py's ``REOPEN_WHERE`` is the same text.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose (a migration must not change when the models do).
_REOPEN_WHERE = (
    "action = 'status' AND old_value IN ('closed', 'solved') "
    "AND new_value IN ('answered', 'new', 'on-hold', 'open', 'pending', 'postponed')"
)


def upgrade() -> None:
    op.create_index("ix_tickets_solved", "tickets", ["solved_at"])
    op.create_index("ix_ticket_sla_report", "ticket_sla", ["ticket_id", "policy_id", "breached"])
    op.create_index(
        "ix_articles_ticket_kind_created", "articles", ["ticket_id", "kind", "created_at"]
    )
    op.create_index(
        "ix_audit_events_csat",
        "audit_events",
        ["created_at"],
        sqlite_where=sa.text("action = 'csat'"),
        postgresql_where=sa.text("action = 'csat'"),
    )
    op.create_index(
        "ix_audit_events_reopens",
        "audit_events",
        ["created_at", "ticket_id"],
        sqlite_where=sa.text(_REOPEN_WHERE),
        postgresql_where=sa.text(_REOPEN_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_reopens", table_name="audit_events")
    op.drop_index("ix_audit_events_csat", table_name="audit_events")
    op.drop_index("ix_articles_ticket_kind_created", table_name="articles")
    op.drop_index("ix_ticket_sla_report", table_name="ticket_sla")
    op.drop_index("ix_tickets_solved", table_name="tickets")
