"""Our outgoing Message-IDs: they name the ticket and carry an HMAC so replies can be verified.

``t{number}.{nonce}{mac}@domain``: the mail sync threads a reply naming such an ID into ticket
`number` only when the HMAC (keyed by the per-store secret) verifies, so a guessed ID cannot
inject mail into someone else's ticket.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Setting

SECRET_KEY = "mail_secret"

_OUR_ID = re.compile(r"^t(\d{1,18})\.([0-9a-f]{8})([0-9a-f]{16})@", re.IGNORECASE)


def _mac(secret: bytes, number: int, nonce: str) -> str:
    return hmac.new(secret, f"{number}.{nonce}".encode(), hashlib.sha256).hexdigest()[:16]


def make_message_id(ticket_number: int, secret: bytes | str, domain: str) -> str:
    """An outgoing Message-ID (no angle brackets) that names the ticket and can be verified."""
    key = secret.encode() if isinstance(secret, str) else secret
    nonce = secrets.token_hex(4)
    return f"t{int(ticket_number)}.{nonce}{_mac(key, int(ticket_number), nonce)}@{domain}"


def verify_message_id(message_id: str, secret: bytes | str) -> int | None:
    """The ticket number in one of our Message-IDs if its HMAC verifies, else None."""
    key = secret.encode() if isinstance(secret, str) else secret
    m = _OUR_ID.match((message_id or "").strip().strip("<>"))
    if m is None:
        return None
    number, nonce, mac = int(m.group(1)), m.group(2).lower(), m.group(3).lower()
    if hmac.compare_digest(_mac(key, number, nonce), mac):
        return number
    return None


async def mail_secret(session: AsyncSession) -> bytes:
    """The per-store HMAC secret (Setting 'mail_secret'), created on first use."""
    row = await session.get(Setting, SECRET_KEY)
    if row is not None and isinstance(row.value, str) and row.value:
        return row.value.encode()
    value = secrets.token_hex(32)
    try:
        async with session.begin_nested():
            if row is None:
                session.add(Setting(key=SECRET_KEY, value=value))
            else:
                row.value = value
    except IntegrityError:
        # Another process created it first: use theirs.
        session.expire_all()
        row = await session.get(Setting, SECRET_KEY)
        if row is None or not isinstance(row.value, str):
            raise
        return row.value.encode()
    return value.encode()


def is_our_message_id(message_id: str) -> bool:
    """True when `message_id` has the shape of ours (the HMAC is not checked)."""
    return _OUR_ID.match((message_id or "").strip().strip("<>")) is not None


async def outgoing_message_id(session: AsyncSession, domain: str, ticket_number: int) -> str:
    """A fresh verifiable Message-ID for mail we send about `ticket_number`."""
    return make_message_id(ticket_number, await mail_secret(session), domain)
