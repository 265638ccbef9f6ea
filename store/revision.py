"""The schema revision this version of helpdesk needs, found without SQLAlchemy or Alembic.

`store.migrate.HEAD_REVISION` is the constant the CLI checks (a test keeps it equal to
Alembic's head). The console's fast start (`store.firstpage`) must not import SQLAlchemy, so
it reads the same answer from the migration scripts themselves: each declares `revision` and
`down_revision` at module level, and the head is the one revision nothing revises.
`tests/store/test_firstpage.py` checks that this equals `store.migrate.HEAD_REVISION`.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

VERSIONS_DIR = Path(__file__).parent / "migrations" / "versions"
_ASSIGN = re.compile(
    r"^(down_revision|revision)\s*(?::[^=]+)?=\s*(?:['\"]([^'\"]+)['\"]|None)", re.MULTILINE
)


@cache
def head_revision() -> str | None:
    """The newest migration shipped (None if the scripts do not show exactly one head)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in VERSIONS_DIR.glob("*.py"):
        found = {name: value for name, value in _ASSIGN.findall(script.read_text("utf-8"))}
        if found.get("revision"):
            revisions.add(found["revision"])
        if found.get("down_revision"):
            revised.add(found["down_revision"])
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None
