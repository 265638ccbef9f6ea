"""Covering indexes with epoch times for the reports (SQLite)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 18:00:00

A year's report on 1,000,000 tickets reads every ticket created or solved in the period.
On SQLite these two indexes hold everything those reads need, grouped by (queue, agent),
including the times as whole milliseconds since 1970: SQLite reads an indexed expression
from the index instead of computing it again when a query spells the identical expression
(store/reports.py's ``_units_sql``), so no date text is parsed, and ``GROUP BY queue_id,
assignee_id`` walks the index in order (skip-scan over the few queue/agent pairs) instead
of sorting. The plain columns are in them too: SQLite 3.40 counts an index as covering
only if it holds every column the query names, also inside the expressions.

* ``ix_tickets_report_created``: tickets created in a period (counts, hours, first
  response times, active at the end).
* ``ix_tickets_report_solved``: tickets solved in a period (resolution times and the
  first-contact check), partial: solved tickets only.

PostgreSQL parses nothing (timestamps are numbers there) and gets no index here. About
11 s for 1,000,000 tickets (both indexes, then ANALYZE of the two; 10.7 s measured on the
benchmark store with other jobs running).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of store/reports.py's expression (a migration must not change later);
# tests/store/test_reports.py checks that the reports' reads are served by these indexes.
_MS = "CAST(round((julianday({}) - 2440587.5) * 86400000.0) AS INTEGER)"
_CREATED = (
    "queue_id, assignee_id, created_at, status, solved_at, closed_at, updated_at, "
    f"first_response_at, {_MS.format('created_at')}, {_MS.format('first_response_at')}"
)
_SOLVED = (
    "queue_id, assignee_id, solved_at, status, created_at, first_response_at, "
    f"{_MS.format('solved_at')}, {_MS.format('created_at')}"
)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if not _sqlite():
        return
    op.execute(f"CREATE INDEX ix_tickets_report_created ON tickets ({_CREATED})")
    op.execute(
        f"CREATE INDEX ix_tickets_report_solved ON tickets ({_SOLVED}) WHERE solved_at IS NOT NULL"
    )
    # Statistics let the planner skip-scan them for short periods and one agent.
    op.execute("ANALYZE ix_tickets_report_created")
    op.execute("ANALYZE ix_tickets_report_solved")


def downgrade() -> None:
    if not _sqlite():
        return
    op.execute("DROP INDEX ix_tickets_report_solved")
    op.execute("DROP INDEX ix_tickets_report_created")
