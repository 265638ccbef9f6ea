"""Automatic acknowledgements for new tickets (RFC 3834): never to robots, lists or ourselves; rate-limited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mail_sync.outbox import SETTING_KEY, is_safe_address, return_path_of
from store.models import (
    Article,
    Blob,
    CannedResponse,
    MailAccount,
    Outbox,
    Queue,
    Setting,
    Ticket,
)
from store.service import Service

DEFAULT_LIMIT_PER_HOUR = 3


async def own_addresses(session: AsyncSession) -> set[str]:
    """Every address our queues receive on (never acknowledge these)."""
    addrs: set[str] = set()
    for q in (await session.execute(select(Queue))).scalars():
        addrs.update(a.lower() for a in q.addresses)
    smtp = await session.get(Setting, SETTING_KEY)
    if smtp is not None and isinstance(smtp.value, dict) and smtp.value.get("from_address"):
        addrs.add(str(smtp.value["from_address"]).lower())
    for username in (await session.execute(select(MailAccount.username))).scalars():
        if "@" in username:
            addrs.add(username.lower())
    return addrs


def suppression_reason(
    *, sender: str, auto_submitted: bool, is_bulk_or_list: bool, is_bounce: bool, ours: set[str]
) -> str | None:
    """Why no automatic reply may go to this sender, or None if one may."""
    s = (sender or "").strip().lower()
    if not s or s == "<>":
        return "no return address"
    if auto_submitted:
        return "sender mail is automatic (Auto-Submitted / auto-reply headers)"
    if is_bulk_or_list:
        return "sender mail is bulk or from a mailing list"
    if is_bounce:
        return "sender mail is a delivery report"
    local = s.partition("@")[0]
    if local in {
        "mailer-daemon",
        "postmaster",
        "noreply",
        "no-reply",
        "donotreply",
        "do-not-reply",
    }:
        return f"sender {s} does not take replies"
    if s in ours:
        return "sender is one of our own addresses"
    return None


async def queue_acknowledgement(
    service: Service,
    session: AsyncSession,
    ticket: Ticket,
    *,
    sender: str,
    auto_submitted: bool = False,
    is_bulk_or_list: bool = False,
    is_bounce: bool = False,
    domain: str = "helpdesk.invalid",
    return_path: str | None = None,
) -> str:
    """Queue the queue's acknowledgement for a new ticket if allowed; returns what happened.

    RFC 3834: the acknowledgement goes to the Return-Path of the customer's mail (given, or
    read from the stored raw mail), else to the From address; never to `<>`.
    """
    queue = ticket.queue
    settings: dict[str, Any] = dict(queue.settings or {}) if queue else {}
    template_name = settings.get("ack")
    if not template_name:
        return "no acknowledgement configured for this queue"
    first = (
        (
            await session.execute(
                select(Article).where(Article.ticket_id == ticket.id).order_by(Article.id).limit(1)
            )
        )
        .unique()
        .scalar_one_or_none()
    )
    if return_path is None and first is not None and first.raw_blob:
        blob = await session.get(Blob, first.raw_blob)
        return_path = return_path_of(blob.data if blob is not None else None)
    if return_path is not None and not return_path.strip("<> "):
        return "acknowledgement suppressed: the mail's Return-Path is <> (automatic mail)"
    recipient = (return_path or sender or "").strip().strip("<>").lower()
    ours = await own_addresses(session)
    for address in dict.fromkeys([sender, recipient]):
        reason = suppression_reason(
            sender=address,
            auto_submitted=auto_submitted,
            is_bulk_or_list=is_bulk_or_list,
            is_bounce=is_bounce,
            ours=ours,
        )
        if reason:
            return f"acknowledgement suppressed: {reason}"
    if not is_safe_address(recipient):
        return f"acknowledgement suppressed: unusable return address {recipient!r}"
    limit = int(settings.get("ack_limit_per_hour", DEFAULT_LIMIT_PER_HOUR))
    since = service.clock() - timedelta(hours=1)
    sent = (
        await session.execute(
            select(func.count())
            .select_from(Outbox)
            .where(
                Outbox.kind == "ack",
                Outbox.created_at >= since,
                Outbox.rcpt_to_key == recipient,
            )
        )
    ).scalar_one()
    if sent >= limit:
        return (
            f"acknowledgement suppressed: {sent} already sent to {recipient} in the last hour "
            f"(limit {limit})"
        )
    canned = (
        await session.execute(
            select(CannedResponse).where(
                CannedResponse.name == template_name, CannedResponse.owner_id.is_(None)
            )
        )
    ).scalar_one_or_none()
    if canned is None:
        return f"acknowledgement template {template_name!r} not found"
    from types import SimpleNamespace

    from store.templates import context_from, render

    team = SimpleNamespace(name=queue.name if queue else "Support")
    rendered = render(canned.body, context_from(ticket, team))
    if rendered.unknown:
        return f"acknowledgement not sent: template has unknown variables {', '.join(rendered.unknown)}"
    await service.queue_automatic_mail(
        session,
        ticket,
        outbox_kind="ack",
        to=recipient,
        subject=ticket.subject
        if ticket.subject.lower().startswith("re:")
        else f"Re: {ticket.subject}",
        body=rendered.text,
        meta={"auto": "ack"},
        domain=domain,
        now=service.clock(),
        references=[first.message_id] if first and first.message_id else [],
    )
    return "acknowledgement queued"
