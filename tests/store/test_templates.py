"""Canned-response rendering: variables filled, unknown and empty ones flagged and marked."""

from __future__ import annotations

from types import SimpleNamespace

from store.templates import (
    MARK_CLOSE,
    MARK_OPEN,
    context_for,
    context_from,
    first_name,
    render,
    unresolved,
)

CTX = context_for(
    customer_name="Carol Smith",
    customer_email="carol@acme.com",
    ticket_number=1042,
    ticket_subject="Printer jam on floor 3",
    agent_name="Alice Agent",
    organization_name="ACME Corp",
)


def test_every_documented_variable_is_filled() -> None:
    body = (
        "Hi {{customer.first_name}} ({{customer.name}}, {{customer.email}}), "
        "ticket #{{ticket.number}} '{{ticket.subject}}' for {{organization.name}}. "
        "-- {{agent.first_name}} / {{agent.name}}"
    )
    out = render(body, CTX)
    assert out.ok
    assert out.text == (
        "Hi Carol (Carol Smith, carol@acme.com), ticket #1042 'Printer jam on floor 3' "
        "for ACME Corp. -- Alice / Alice Agent"
    )


def test_spaces_and_case_inside_braces_are_accepted() -> None:
    assert render("Hi {{ Customer.First_Name }}!", CTX).text == "Hi Carol!"


def test_unknown_variable_is_flagged_and_marked_not_sent_raw() -> None:
    out = render("Hi {{customer.nickname}}, see {{ticket.number}}", CTX)
    assert out.unknown == ["customer.nickname"]
    assert not out.ok
    assert "{{" not in out.text
    assert f"{MARK_OPEN}customer.nickname{MARK_CLOSE}" in out.text
    assert "1042" in out.text
    assert unresolved(out.text) == ["customer.nickname"]


def test_known_variable_without_a_value_is_flagged_as_empty() -> None:
    ctx = context_for(customer_email="x@y.example", ticket_number=7)
    out = render("Dear {{customer.first_name}} at {{organization.name}}", ctx)
    assert out.unknown == []
    assert out.empty == ["customer.first_name", "organization.name"]
    assert unresolved(out.text) == ["customer.first_name", "organization.name"]


def test_values_are_not_expanded_again() -> None:
    ctx = dict(CTX, **{"ticket.subject": "{{agent.name}} [bold]x[/bold]"})
    out = render("Re: {{ticket.subject}}", ctx)
    # Inserted verbatim: a subject cannot pull other variables in.
    assert out.text == "Re: {{agent.name}} [bold]x[/bold]"


def test_unresolved_finds_hand_typed_variables_but_not_other_braces() -> None:
    assert unresolved("Hello {{customer.first_name}}") == ["customer.first_name"]
    assert unresolved("log line: {{ 1 + 2 }} and {{}}") == []
    assert unresolved("all good") == []


def test_values_from_untrusted_names_are_cleaned() -> None:
    ctx = context_for(customer_name="Eve\x1b]52;c;ZXZpbA==\x07 Mallory\u202e")
    out = render("Hi {{customer.name}}", ctx)
    assert out.text == "Hi Eve Mallory"


def test_first_name_forms() -> None:
    assert first_name("Carol Smith") == "Carol"
    assert first_name("Smith, Carol") == "Carol"
    assert first_name('"Jānis Bērziņš"') == "Jānis"
    assert first_name("carol@acme.com") == ""
    assert first_name("") == ""
    assert first_name(None) == ""


def test_context_from_loaded_objects() -> None:
    org = SimpleNamespace(name="ACME Corp")
    customer = SimpleNamespace(name="Carol Smith", email="carol@acme.com", organization=org)
    ticket = SimpleNamespace(number=5, subject="VPN", customer=customer, organization=None)
    agent = SimpleNamespace(name="Alice Agent")
    ctx = context_from(ticket, agent)
    assert ctx["organization.name"] == "ACME Corp"
    assert ctx["customer.first_name"] == "Carol"
    assert ctx["ticket.number"] == "5"
    assert ctx["agent.first_name"] == "Alice"
