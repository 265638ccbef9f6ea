"""Which ticket an incoming mail belongs to: references, then a verified subject tag, then new.

Order (never by subject similarity):

1. In-Reply-To / References naming a Message-ID we stored (received or sent), or one of our
   own outgoing Message-IDs whose HMAC verifies (``t{number}.{nonce}{mac}@domain``).
2. Our ticket tag in the subject (``[#1234]`` by default, format configurable), only if the
   sender is a participant of that ticket: its customer (any of their addresses), its
   organization's domains, or someone who already wrote on or was written to on it.
   A tag from anyone else opens a new ticket linked to the tagged one, so a guessed tag
   cannot inject mail into someone else's ticket.
3. A new ticket.

Every decision carries a human-readable reason, stored on the article for `mail explain`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Article, ArticleKind, Customer, CustomerEmail, Ticket
from store.msgid import (  # noqa: F401  (re-exported for mail_sync users)
    SECRET_KEY,
    is_our_message_id,
    mail_secret,
    make_message_id,
    verify_message_id,
)

DEFAULT_TAG_FORMAT = "[#{number}]"
#: How many References are looked at (newest first): a hostile header may list thousands.
MAX_REFERENCES = 50

#: Reply/forward prefixes (Re:, AW:, VS:, SV:, Отв:, Fwd:, ...). The tag is found anywhere in
#: the subject, so these never hide it; they are stripped only to tidy a new ticket's subject.
REPLY_PREFIX = re.compile(
    r"^(?:\s*(?:re|aw|sv|vs|fw|fwd|wg|tr|rv|antw|odp|atb|pārs|отв|ответ|пересл|رد)"
    r"(?:\[\d+\])?\s*[:：]\s*)+",
    re.IGNORECASE,
)


def strip_reply_prefixes(subject: str) -> str:
    """`Re: AW: Отв: Fwd: x` -> `x`."""
    return REPLY_PREFIX.sub("", subject or "").strip()


# ------------------------------------------------------------------------- subject tags
@lru_cache(maxsize=16)
def tag_pattern(tag_format: str = DEFAULT_TAG_FORMAT) -> re.Pattern[str]:
    """A regex finding the ticket tag of `tag_format` (which contains `{number}`)."""
    if "{number}" not in tag_format:
        tag_format = DEFAULT_TAG_FORMAT
    before, _, after = tag_format.partition("{number}")
    return re.compile(re.escape(before) + r"\s*(\d{1,18})\s*" + re.escape(after), re.IGNORECASE)


def find_tag(subject: str, tag_format: str = DEFAULT_TAG_FORMAT) -> int | None:
    """The ticket number tagged in a subject (the last tag wins: forwarded chains add theirs
    in front), or None."""
    matches = tag_pattern(tag_format).findall(subject or "")
    return int(matches[-1]) if matches else None


# ------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class ThreadDecision:
    """Where a mail goes: `reply` to `ticket_number`, `linked` new ticket, or `new`."""

    action: str
    ticket_number: int | None
    reason: str
    matched_message_id: str | None = None


def candidate_ids(in_reply_to: Sequence[str], references: Sequence[str]) -> list[str]:
    """In-Reply-To first, then References newest first; de-duplicated, capped."""
    seen: set[str] = set()
    out: list[str] = []
    for mid in [*in_reply_to, *reversed(references)]:
        m = (mid or "").strip().strip("<>")
        if m and m not in seen:
            seen.add(m)
            out.append(m)
        if len(out) >= MAX_REFERENCES:
            break
    return out


def reply_reason(mid: str, in_reply_to: Sequence[str], number: int) -> str:
    """Why a mail threads into ticket `number`: it references `mid`, a message stored there."""
    header = "In-Reply-To" if mid in {i.strip("<>") for i in in_reply_to} else "References"
    return f"{header} <{mid}> is a stored message of ticket #{number}"


def unknown_references_note(ids: Sequence[str], secret: bytes) -> str | None:
    """The note for a mail none of whose references (`ids`) is a stored message; None when one
    is an HMAC-verified Message-ID of ours (then `decide` must look up its ticket)."""
    unverified: list[str] = []
    for mid in ids:
        if verify_message_id(mid, secret) is not None:
            return None
        if is_our_message_id(mid):
            unverified.append(mid)
    if unverified:
        return f"; ignored unverified ticket Message-ID <{unverified[0]}>"
    if ids:
        return f"; none of {len(ids)} referenced Message-IDs is known"
    return ""


def new_ticket_reason(note: str) -> str:
    """Why a mail opens a new ticket (no reference known, no subject tag)."""
    return f"no known reference and no subject tag: new ticket{note}"


async def ticket_of_message_ids(
    session: AsyncSession, ids: Sequence[str]
) -> tuple[str, Ticket] | None:
    """The first id (in the given order) that a stored article carries, with its ticket."""
    if not ids:
        return None
    rows = (
        await session.execute(
            select(Article.message_id, Article.ticket_id)
            .where(Article.message_id.in_(list(ids)))
            .order_by(Article.id)
        )
    ).all()
    by_id: dict[str, int] = {}
    for mid, tid in rows:
        if mid:
            by_id.setdefault(mid, tid)
    for mid in ids:
        if mid in by_id:
            ticket = await session.get(Ticket, by_id[mid])
            if ticket is not None:
                return mid, ticket
    return None


async def ticket_by_number(session: AsyncSession, number: int) -> Ticket | None:
    return (
        (await session.execute(select(Ticket).where(Ticket.number == number)))
        .unique()
        .scalar_one_or_none()
    )


def _addresses(values: Iterable[str]) -> set[str]:
    return {a.strip().lower() for _, a in getaddresses([v for v in values if v]) if "@" in a}


def addresses_in(values: Iterable[str]) -> set[str]:
    """The mail addresses in address header values (lower case), as `participants` reads them."""
    return _addresses(values)


async def participants(session: AsyncSession, ticket: Ticket) -> tuple[set[str], set[str]]:
    """(addresses, domains) of the people on a ticket."""
    addrs: set[str] = set()
    domains: set[str] = set()
    if ticket.customer_id is not None:
        customer = await session.get(Customer, ticket.customer_id)
        if customer is not None:
            addrs.add(customer.email.lower())
            for alt in (
                await session.execute(
                    select(CustomerEmail.email).where(CustomerEmail.customer_id == customer.id)
                )
            ).scalars():
                addrs.add(alt.lower())
    if ticket.organization is not None:
        domains.update(d.lower().lstrip("@") for d in ticket.organization.domains or [])
    rows = (
        await session.execute(
            select(Article.kind, Article.from_addr, Article.to_addrs, Article.cc_addrs).where(
                Article.ticket_id == ticket.id,
                Article.kind.in_([ArticleKind.EMAIL_IN.value, ArticleKind.EMAIL_OUT.value]),
            )
        )
    ).all()
    for kind, from_addr, to_addrs, cc_addrs in rows:
        if kind == ArticleKind.EMAIL_IN.value:
            addrs |= _addresses([from_addr])
        else:
            addrs |= _addresses([to_addrs, cc_addrs])
    return addrs, domains


async def decide(
    session: AsyncSession,
    *,
    sender: str,
    subject: str,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    secret: bytes,
    tag_format: str = DEFAULT_TAG_FORMAT,
) -> ThreadDecision:
    """Decide where a mail goes; see the module docstring for the order."""
    ids = candidate_ids(in_reply_to, references)
    found = await ticket_of_message_ids(session, ids)
    if found is not None:
        mid, ticket = found
        return ThreadDecision(
            "reply", ticket.number, reply_reason(mid, in_reply_to, ticket.number), mid
        )
    unverified: list[str] = []
    for mid in ids:
        number = verify_message_id(mid, secret)
        if number is not None:
            if await ticket_by_number(session, number) is not None:
                return ThreadDecision(
                    "reply",
                    number,
                    f"<{mid}> is one of our Message-IDs (HMAC verified) for ticket #{number}",
                    mid,
                )
        elif is_our_message_id(mid):
            unverified.append(mid)
    note = ""
    if unverified:
        note = f"; ignored unverified ticket Message-ID <{unverified[0]}>"
    elif ids:
        note = f"; none of {len(ids)} referenced Message-IDs is known"

    number = find_tag(subject, tag_format)
    if number is not None:
        tag = tag_format.replace("{number}", str(number))
        tagged = await ticket_by_number(session, number)
        if tagged is None:
            return ThreadDecision(
                "new", None, f"subject tag {tag} names no ticket: new ticket{note}"
            )
        who = (sender or "").strip().lower()
        addrs, domains = await participants(session, tagged)
        domain = who.rpartition("@")[2]
        if who and who in addrs:
            return ThreadDecision(
                "reply",
                number,
                f"subject tag {tag}; sender {who} is a participant of #{number}{note}",
            )
        if who and domain and domain in domains:
            return ThreadDecision(
                "reply",
                number,
                f"subject tag {tag}; sender domain {domain} belongs to the organization of "
                f"#{number}{note}",
            )
        return ThreadDecision(
            "linked",
            number,
            f"subject tag {tag} but sender {who or '(none)'} is not a participant of "
            f"#{number}: new ticket linked to it{note}",
        )
    return ThreadDecision("new", None, new_ticket_reason(note))
