"""Expression indexes serving the "what to do next" queue order

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The expressions must match store/listing.py's ORDER BY for `next` exactly.
_SQLITE_FAR = "'9999-12-31 23:59:59.999999'"
_PG_FAR = "'infinity'::timestamptz"


def upgrade() -> None:
    far = _SQLITE_FAR if op.get_bind().dialect.name == "sqlite" else _PG_FAR
    keys = f"(-priority), coalesce(next_due_at, {far}), coalesce(last_customer_at, {far}), id"
    op.execute(f"CREATE INDEX ix_tickets_next_order ON tickets (status, {keys})")
    op.execute(f"CREATE INDEX ix_tickets_next_order_all ON tickets ({keys})")


def downgrade() -> None:
    op.execute("DROP INDEX ix_tickets_next_order_all")
    op.execute("DROP INDEX ix_tickets_next_order")
