"""The customer panel: contact details, organization, and the customer's other tickets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.reactive import var
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from helpdesk_tui.text import relative_time
from store.sanitize import clean_line, clean_text


@dataclass(frozen=True)
class CustomerInfo:
    """The customer and organization as the panel shows them (cleaned)."""

    id: int
    name: str
    email: str
    other_emails: tuple[str, ...]
    phone: str
    language: str
    timezone: str
    notes: str
    organization: str
    tier: str
    domains: tuple[str, ...]
    org_notes: str

    @classmethod
    def from_customer(cls, customer: Any) -> CustomerInfo:
        """From a loaded `Customer` (organization and emails loaded)."""
        org = customer.organization
        return cls(
            id=customer.id,
            name=clean_line(customer.name),
            email=clean_line(customer.email),
            other_emails=tuple(
                clean_line(e.email) for e in customer.emails if e.email != customer.email
            ),
            phone=clean_line(customer.phone),
            language=clean_line(customer.language),
            timezone=clean_line(customer.timezone),
            notes=clean_text(customer.notes or "").strip(),
            organization=clean_line(org.name) if org else "",
            tier=clean_line(org.tier) if org and org.tier else "",
            domains=tuple(clean_line(d) for d in org.domains) if org else (),
            org_notes=clean_text(org.notes or "").strip() if org else "",
        )


@dataclass(frozen=True)
class OtherTicket:
    """One of the customer's tickets."""

    number: int
    subject: str
    status_label: str
    updated_at: datetime | None
    current: bool = False


def render_customer(info: CustomerInfo) -> Content:
    """Contact details and organization as plain spans."""
    parts: list[str | tuple[str, str]] = [
        (info.name or "(no name)", "bold"),
        ("\n", ""),
        (info.email, ""),
    ]
    for email in info.other_emails:
        parts += [("\n", ""), (email, "dim")]
    for label, value in (
        ("phone", info.phone),
        ("language", info.language),
        ("timezone", info.timezone),
    ):
        if value:
            parts += [("\n", ""), (f"{label} ", "dim"), (value, "")]
    if info.notes:
        parts += [("\n", ""), (info.notes, "italic")]
    parts += [("\n\n", ""), ("Organization", "bold underline"), ("\n", "")]
    if info.organization:
        parts.append((info.organization, "bold"))
        if info.tier:
            parts.append((f" ({info.tier})", "bold $warning" if info.tier.lower() == "vip" else ""))
        if info.domains:
            parts += [("\n", ""), ("domains ", "dim"), (", ".join(info.domains), "")]
        if info.org_notes:
            parts += [("\n", ""), (info.org_notes, "italic")]
    else:
        parts.append(("none", "dim"))
    return Content.assemble(*parts)


class CustomerTickets(OptionList):
    """The customer's tickets; Enter opens one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "j",
            "cursor_down",
            "Down",
            show=False,
            id="customer.down",
            tooltip="Next ticket of this customer",
        ),
        Binding(
            "k",
            "cursor_up",
            "Up",
            show=False,
            id="customer.up",
            tooltip="Previous ticket of this customer",
        ),
    ]


class CustomerPanel(Vertical):
    """Side panel toggled with `c`; posts `OpenTicket` when a ticket is chosen."""

    DEFAULT_CSS = """
    CustomerPanel {
        width: 38;
        height: 1fr;
        border-left: vkey $panel;
        padding: 0 1;
        background: $surface;
    }
    CustomerPanel #customer-details {
        height: auto;
        max-height: 50%;
        overflow-y: auto;
    }
    CustomerPanel #customer-tickets-title {
        margin-top: 1;
        text-style: bold underline;
    }
    CustomerPanel CustomerTickets {
        height: 1fr;
        border: none;
        padding: 0;
        background: $surface;
    }
    CustomerPanel CustomerTickets:focus {
        border: none;
        background-tint: $foreground 0%;
    }
    """

    class OpenTicket(Message):
        """The agent chose one of the customer's tickets."""

        def __init__(self, number: int) -> None:
            super().__init__()
            self.number = number

    customer: var[CustomerInfo | None] = var(None)
    tickets: var[tuple[OtherTicket, ...]] = var(())
    now: var[datetime | None] = var(None)

    def compose(self) -> ComposeResult:
        yield Static(Content("No customer."), id="customer-details")
        yield Static(Content("Tickets of this customer"), id="customer-tickets-title")
        yield CustomerTickets(id="customer-tickets")

    def watch_customer(self, info: CustomerInfo | None) -> None:
        if not self.is_mounted:
            return
        details = self.query_one("#customer-details", Static)
        details.update(render_customer(info) if info else Content("No customer."))

    def watch_tickets(self, tickets: tuple[OtherTicket, ...]) -> None:
        if not self.is_mounted:
            return
        options = self.query_one(CustomerTickets)
        highlighted = options.highlighted
        options.clear_options()
        options.add_options([self._option(t) for t in tickets])
        if tickets:
            options.highlighted = min(highlighted or 0, len(tickets) - 1)

    def on_mount(self) -> None:
        self.watch_customer(self.customer)
        self.watch_tickets(self.tickets)

    def _option(self, t: OtherTicket) -> Option:
        age = relative_time(t.updated_at, self.now) if self.now else ""
        content = Content.assemble(
            (f"#{t.number}", "bold $accent" if not t.current else "bold reverse"),
            " ",
            (t.status_label, "dim"),
            (f" {age}" if age else "", "dim"),
            "\n",
            (t.subject or "(no subject)", ""),
        )
        return Option(content, id=str(t.number))

    @on(OptionList.OptionSelected, "#customer-tickets")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.OpenTicket(int(event.option.id)))
