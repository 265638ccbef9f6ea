"""Customer satisfaction: the survey mail sent when a ticket is solved, and the rating replies.

When a ticket is solved, the customer may get a mail asking them to rate it by replying with a
number 1-5 (and a comment). A reply to that survey is recorded as a rating on the ticket
instead of reopening it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Article, Ticket


@dataclass(frozen=True)
class Rating:
    """A customer's answer to a satisfaction survey."""

    score: int
    comment: str
    survey_message_id: str


async def rating_reply(
    session: AsyncSession,
    ticket_number: int,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    text: str,
) -> Rating | None:
    """The rating in a reply to ticket `ticket_number`'s survey, or None for any other mail."""
    return None


async def record_rating(
    session: AsyncSession, ticket: Ticket, rating: Rating, article: Article
) -> None:
    """Store `rating` on `ticket` (the reply itself is `article`, already attached)."""
    raise NotImplementedError
