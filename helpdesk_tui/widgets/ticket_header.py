"""The ticket header: number, subject, status, priority, people, tags, pointers and presence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from textual.content import Content
from textual.reactive import var
from textual.widgets import Static

from helpdesk_tui.text import relative_time
from store.models import Level, Priority
from store.sanitize import clean_line

PRIORITY_STYLES = {
    "urgent": "bold $error",
    "high": "bold $warning",
    "normal": "",
    "low": "dim",
}


def actor_name(actor: str | None) -> str:
    """`agent:alice` -> `alice` (how the store records who did something)."""
    if not actor:
        return ""
    return clean_line(actor.split(":", 1)[-1])


@dataclass(frozen=True)
class HeaderInfo:
    """What the header shows, read out of a `TicketDetail` (cleaned, comparable)."""

    number: int
    subject: str
    status: str
    status_label: str
    priority: str
    derived_priority: str
    override_by: str
    impact: str
    urgency: str
    queue: str
    assignee: str
    assignee_name: str
    customer_name: str
    customer_email: str
    organization: str
    tier: str
    tags: tuple[str, ...]
    postponed_until: datetime | None
    merged_into: int | None
    links: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_detail(
        cls, detail: Any, labels: dict[str, str], derived: Priority | None = None
    ) -> HeaderInfo:
        """Build from a `TicketDetail`; `labels` are the team's status labels."""
        t = detail.ticket
        customer = t.customer
        org = t.organization or (customer.organization if customer else None)
        return cls(
            number=t.number,
            subject=clean_line(t.subject),
            status=t.status,
            status_label=clean_line(labels.get(t.status, t.status)),
            priority=Priority(t.priority).label,
            derived_priority=derived.label if derived is not None else "",
            override_by=actor_name(t.priority_override_by),
            impact=Level(t.impact).label,
            urgency=Level(t.urgency).label,
            queue=clean_line(t.queue.name) if t.queue else "",
            assignee=clean_line(t.assignee.login) if t.assignee else "",
            assignee_name=clean_line(t.assignee.name) if t.assignee else "",
            customer_name=clean_line(customer.name) if customer else "",
            customer_email=clean_line(customer.email) if customer else "",
            organization=clean_line(org.name) if org else "",
            tier=clean_line(org.tier) if org and org.tier else "",
            tags=tuple(clean_line(tag.name) for tag in t.tags),
            postponed_until=t.postponed_until,
            merged_into=detail.merged_into_number,
            links=tuple((clean_line(kind), int(n)) for kind, n in detail.links),
        )


@dataclass(frozen=True)
class PresenceEntry:
    """Another agent on this ticket: who, and whether they are writing."""

    login: str
    name: str
    mode: str

    @property
    def sentence(self) -> str:
        who = clean_line(self.login)
        return f"{who} is writing a reply" if self.mode == "composing" else f"{who} is viewing"


def render_header(
    info: HeaderInfo, presence: tuple[PresenceEntry, ...], now: datetime | None
) -> Content:
    """The header lines as Content (no markup: every value is a plain span)."""
    parts: list[str | tuple[str, str]] = [
        (f"#{info.number} ", "bold $accent"),
        (info.subject or "(no subject)", "bold"),
        ("\n", ""),
        (f" {info.status_label} ", "bold reverse"),
        ("  priority ", "dim"),
        (info.priority, PRIORITY_STYLES.get(info.priority, "")),
    ]
    if info.override_by:
        parts.append((f" (set by {info.override_by}", "$warning"))
        if info.derived_priority and info.derived_priority != info.priority:
            parts.append((f"; matrix: {info.derived_priority}", "$warning"))
        parts.append((")", "$warning"))
    parts += [
        ("  assignee ", "dim"),
        (info.assignee or "unassigned", "bold" if info.assignee else "dim"),
        ("\n", ""),
        ("impact ", "dim"),
        (info.impact, ""),
        ("  urgency ", "dim"),
        (info.urgency, ""),
        ("  queue ", "dim"),
        (info.queue or "none", "" if info.queue else "dim"),
        ("  tags ", "dim"),
        (", ".join(info.tags) if info.tags else "none", "" if info.tags else "dim"),
        ("\n", ""),
    ]
    if info.customer_name:
        parts += [(info.customer_name, "bold"), (f" <{info.customer_email}>", "")]
    else:
        parts.append((info.customer_email or "(no customer)", "bold"))
    if info.organization:
        parts += [("  org ", "dim"), (info.organization, "")]
        if info.tier:
            parts.append((f" ({info.tier})", "bold $warning" if info.tier.lower() == "vip" else ""))
    notes: list[tuple[str, str]] = []
    if info.merged_into is not None:
        notes.append((f"Merged into #{info.merged_into}", "bold $warning"))
    if info.status == "postponed" and info.postponed_until is not None:
        when = info.postponed_until.astimezone().strftime("%Y-%m-%d %H:%M")
        ahead = relative_time(info.postponed_until, now) if now else ""
        notes.append((f"Postponed until {when}" + (f" ({ahead})" if ahead else ""), "$accent"))
    for kind, number in info.links:
        notes.append((f"{kind.replace('-', ' ')} #{number}", "dim"))
    if notes:
        parts.append(("\n", ""))
        for i, note in enumerate(notes):
            if i:
                parts.append(("  ·  ", "dim"))
            parts.append(note)
    if presence:
        parts += [("\n", ""), ("● ", "$warning")]
        parts.append(("; ".join(p.sentence for p in presence), "bold $warning"))
    return Content.assemble(*parts)


class TicketHeader(Static):
    """The top of the ticket screen; state is pushed in through its reactives."""

    DEFAULT_CSS = """
    TicketHeader {
        height: auto;
        padding: 0 1;
        background: $boost;
        border-bottom: solid $panel;
    }
    """

    info: var[HeaderInfo | None] = var(None)
    presence: var[tuple[PresenceEntry, ...]] = var(())
    now: var[datetime | None] = var(None)

    def watch_info(self) -> None:
        self._redraw()

    def watch_presence(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        if self.info is None:
            self.update(Content("Loading…"))
        else:
            self.update(render_header(self.info, self.presence, self.now))

    def on_mount(self) -> None:
        self._redraw()
