"""Canned-response rendering: fill `{{customer.first_name}}`-style variables, flag the rest."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from store.sanitize import clean_line

#: The variables a canned response may use, with what each one stands for.
VARIABLES: dict[str, str] = {
    "customer.first_name": "the customer's first name",
    "customer.name": "the customer's full name",
    "customer.email": "the customer's mail address",
    "ticket.number": "the ticket number",
    "ticket.subject": "the ticket subject",
    "agent.name": "your full name",
    "agent.first_name": "your first name",
    "organization.name": "the customer's organization",
}

#: How an unresolved variable is left in the text: visible, and never mistaken for a value.
MARK_OPEN = "⟦"
MARK_CLOSE = "⟧"

_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_MARK = re.compile(f"{re.escape(MARK_OPEN)}([^{re.escape(MARK_CLOSE)}]*){re.escape(MARK_CLOSE)}")
#: What a variable someone meant to be filled looks like (`{{customer.name}}`, `{{foo}}`).
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Rendered:
    """A rendered canned response.

    `unknown` lists variable names the renderer does not know; `empty` lists known
    variables that have no value for this ticket (a customer without a name...). Both
    are left marked as ⟦name⟧ in `text` and block sending until the agent edits them.
    """

    text: str
    unknown: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every variable was filled in."""
        return not self.unknown and not self.empty


def first_name(full_name: str | None) -> str:
    """The first name in a display name: 'Carol Smith' -> 'Carol', 'Smith, Carol' -> 'Carol'."""
    name = clean_line(full_name).strip().strip('"').strip()
    if not name or "@" in name:
        return ""
    if "," in name:
        after = name.split(",", 1)[1].strip()
        if after:
            name = after
    return name.split()[0] if name.split() else ""


def context_for(
    *,
    customer_name: str | None = None,
    customer_email: str | None = None,
    ticket_number: int | None = None,
    ticket_subject: str | None = None,
    agent_name: str | None = None,
    organization_name: str | None = None,
) -> dict[str, str]:
    """The variable values for one ticket and agent (empty strings for what is unknown)."""
    return {
        "customer.first_name": first_name(customer_name),
        "customer.name": clean_line(customer_name),
        "customer.email": clean_line(customer_email),
        "ticket.number": "" if ticket_number is None else str(ticket_number),
        "ticket.subject": clean_line(ticket_subject),
        "agent.name": clean_line(agent_name),
        "agent.first_name": first_name(agent_name),
        "organization.name": clean_line(organization_name),
    }


def context_from(ticket: Any, agent: Any) -> dict[str, str]:
    """`context_for` from a loaded `Ticket` (customer and organization joined) and an `Agent`."""
    customer = getattr(ticket, "customer", None)
    org = getattr(ticket, "organization", None) or getattr(customer, "organization", None)
    return context_for(
        customer_name=getattr(customer, "name", None),
        customer_email=getattr(customer, "email", None),
        ticket_number=getattr(ticket, "number", None),
        ticket_subject=getattr(ticket, "subject", None),
        agent_name=getattr(agent, "name", None),
        organization_name=getattr(org, "name", None),
    )


def _mark(name: str) -> str:
    return f"{MARK_OPEN}{name}{MARK_CLOSE}"


def render(body: str, context: Mapping[str, str]) -> Rendered:
    """Fill the known variables of `body` from `context`; mark unknown or empty ones.

    Variable names are matched case-insensitively and may have spaces inside the braces
    (`{{ Customer.First_Name }}`). A value is inserted as-is and never re-expanded.
    """
    unknown: list[str] = []
    empty: list[str] = []

    def replace(match: re.Match[str]) -> str:
        raw = match.group(1)
        name = raw.strip().lower()
        if name not in VARIABLES:
            label = clean_line(raw) or "?"
            if label not in unknown:
                unknown.append(label)
            return _mark(label)
        value = context.get(name, "")
        if not value:
            if name not in empty:
                empty.append(name)
            return _mark(name)
        return value

    return Rendered(_VARIABLE.sub(replace, body), unknown, empty)


def unresolved(text: str) -> list[str]:
    """Variables still unresolved in a body about to be sent: ⟦marks⟧ and raw {{braces}}.

    Sending is blocked while this is not empty, so a customer never receives
    `{{customer.first_name}}` or a ⟦mark⟧.
    """
    found: list[str] = []
    for match in _MARK.finditer(text):
        name = match.group(1) or "?"
        if name not in found:
            found.append(name)
    for match in _VARIABLE.finditer(text):
        name = match.group(1).strip()
        # Braces around anything else ({{ }} in a quoted log line...) are not a variable.
        if _IDENTIFIER.fullmatch(name) and name not in found:
            found.append(name)
    return found
