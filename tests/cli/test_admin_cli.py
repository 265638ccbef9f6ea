"""Admin commands as a user drives them: calendars, SLA policies, rules, reports, agent and
queue settings (SQLite).

Fixtures (tests/cli/conftest.py): `cli` runs the typer app in-process, `hd` runs the real
command in a subprocess, `store` is an initialised store with agent `anna` and queues
Support/Billing (exported as HELPDESK_DB / HELPDESK_AGENT), `new_ticket` and `show` are
shortcuts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import holidays

from store.models import ArticleKind, Status
from store.service import Actor, ArticleInput, Service
from tests.cli.conftest import with_service

Cli = Callable[..., Any]


def _mail_ticket(url: str, when: datetime, sender: str, queue: str = "Support") -> int:
    """A ticket opened by a customer's mail at `when`; returns its number."""

    async def body(service: Service) -> int:
        t = await service.create_ticket(
            Actor("mail", "sync"),
            subject="Printer jam",
            customer_email=sender,
            article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="It is broken.", from_addr=sender),
            queue=queue,
        )
        return int(t.number)

    number: int = with_service(url, body, when)
    return number


def _solve(url: str, number: int, when: datetime) -> None:
    async def body(service: Service) -> None:
        anna = await service.agent("anna")
        await service.update_ticket(Actor("agent", "anna", anna.id), number, status=Status.SOLVED)

    with_service(url, body, when)


# --------------------------------------------------------------------------- calendars
def test_calendar_add_list_show_and_hand_added_holidays(store: Any, cli: Cli) -> None:
    cli(
        "calendar",
        "add",
        "office",
        "--timezone",
        "Europe/Riga",
        "--hours",
        "mon-fri 09:00-17:00",
        "--country",
        "LV",
    ).ok()
    listed = cli("calendar", "list").ok().out_text
    assert "office" in listed and "Europe/Riga" in listed and "holidays LV" in listed

    # the documented form (docs/sla.md): NAME then dates, any order
    res = cli("calendar", "holiday", "office", "2026-12-31", "2026-12-30").ok()
    assert "2 holiday(s) added to office" in res.out_text

    shown = cli("calendar", "show", "office", "--json").ok().json()
    assert shown["timezone"] == "Europe/Riga"
    assert shown["hours"] == "mon-fri 09:00-17:00"
    assert (shown["country"], shown["subdivision"]) == ("LV", None)
    assert shown["added_holidays"] == ["2026-12-30", "2026-12-31"], "sorted, ISO"
    # public holidays of this year and the next, with names, as the holidays package has them
    year = datetime.now(UTC).year
    expected = {
        d.isoformat(): name
        for y in (year, year + 1)
        for d, name in holidays.country_holidays("LV", years=y).items()
    }
    got = {h["date"]: h["name"] for h in shown["public_holidays"]}
    assert got == expected
    assert f"{year}-01-01" in got and f"{year + 1}-01-01" in got, "New Year's Day both years"
    assert [h["date"] for h in shown["public_holidays"]] == sorted(got)

    text = cli("calendar", "show", "office").ok().out
    assert "Europe/Riga" in text and "mon-fri 09:00-17:00" in text
    assert "2026-12-30, 2026-12-31" in text
    assert f"{year + 1}-01-01  {expected[f'{year + 1}-01-01']}" in text

    # --remove takes a hand-added date out again, and says which ones were not there
    res = cli("calendar", "holiday", "office", "2026-12-30", "2027-03-03", "--remove").ok()
    assert "1 date(s) removed from office: 2026-12-30" in res.out_text
    assert "2027-03-03" in res.out_text.split("removed")[1], "the date that was never added"
    assert cli("calendar", "show", "office", "--json").ok().json()["added_holidays"] == [
        "2026-12-31"
    ]
    assert "1 added holiday(s)" in cli("calendar", "list").ok().out_text

    res = cli("calendar", "show", "nowhere").failed(3)
    assert "nowhere" in res.err_text
    res = cli("calendar", "holiday", "office", "31.12.2026", "--remove").failed(5)
    assert "YYYY-MM-DD" in res.err_text


ICS = """\
BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//EN
BEGIN:VEVENT
UID:1@test
SUMMARY:Company day
DTSTART;VALUE=DATE:20260612
END:VEVENT
BEGIN:VEVENT
UID:2@test
SUMMARY:Team standup
DTSTART:20260615T090000Z
DTEND:20260615T091500Z
END:VEVENT
BEGIN:VEVENT
UID:3@test
SUMMARY:Summer shutdown
DTSTART;VALUE=DATE:20260810
DTEND;VALUE=DATE:20260813
END:VEVENT
END:VCALENDAR
"""


def test_calendar_import_ics_prints_a_summary_not_an_object(
    store: Any, hd: Cli, cli: Cli, tmp_path: Path
) -> None:
    cli("calendar", "add", "office").ok()
    ics = tmp_path / "company.ics"
    ics.write_text(ICS.replace("\n", "\r\n"))

    res = hd("calendar", "import-ics", "office", str(ics)).ok()
    lines = [line.strip() for line in res.out.splitlines() if line.strip()]
    assert "IcsResult" not in res.out and "datetime.date" not in res.out
    assert "4 date(s) from 3 event(s) read" in res.out_text
    # the multi-day event: DTEND is exclusive, so Aug 10, 11, 12
    assert "Dates: 2026-06-12, 2026-08-10, 2026-08-11, 2026-08-12" in lines
    assert "Skipped: Team standup: not an all-day event" in lines
    assert sum(line.startswith("Skipped:") for line in lines) == 1

    added = cli("calendar", "show", "office", "--json").ok().json()["added_holidays"]
    assert added == ["2026-06-12", "2026-08-10", "2026-08-11", "2026-08-12"]

    res = hd("calendar", "import-ics", "office", str(tmp_path / "missing.ics")).failed(5)
    assert "missing.ics" in res.err_text


# --------------------------------------------------------------------------- SLA
def test_sla_add_list_show_explain_remove(store: Any, cli: Cli) -> None:
    cli("calendar", "add", "work", "--timezone", "UTC", "--hours", "mon-fri 09:00-17:00").ok()
    res = cli(
        "sla", "add", "std", "--calendar", "work", "--first-response", "4h", "--resolution", "16h"
    ).ok()
    assert "Policy std added" in res.out_text

    listed = cli("sla", "list").ok().out_text
    assert "std" in listed and "work" in listed and "(all)" in listed
    shown = cli("sla", "show", "std").ok().out
    assert "calendar work: mon-fri 09:00-17:00, UTC" in shown
    assert "normal: first response 4h, resolution 16h" in shown

    # Friday 2026-11-20 15:00 UTC; 2 business hours left that day.
    # first response 4h: Fri 15-17 (2h) + Mon 09-11 (2h)         -> Mon 2026-11-23 11:00
    # resolution 16h:    Fri 2h + Mon 09-17 (8h) + Tue 09-15 (6h) -> Tue 2026-11-24 15:00
    friday = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    assert friday.weekday() == 4
    number = _mail_ticket(store.url, friday, "carol@example.org")

    out = cli("sla", "explain", str(number)).ok().out_text
    assert "Policy 'std' applies" in out
    assert "first response: target 4h of business time from Fri 2026-11-20 15:00 UTC" in out
    assert "due Mon 2026-11-23 11:00 UTC" in out
    assert "resolution: target 16h of business time from Fri 2026-11-20 15:00 UTC" in out
    assert "due Tue 2026-11-24 15:00 UTC" in out

    res = cli("calendar", "remove", "work").failed(5)
    assert "used by policy std" in res.err_text

    cli("sla", "remove", "std").ok()
    assert "std" not in cli("sla", "list").ok().out_text
    assert "no SLA policies exist" in cli("sla", "explain", str(number)).ok().out_text
    assert "no SLA policy" in cli("sla", "show", "std").failed(3).err_text  # not found
    cli("calendar", "remove", "work").ok()
    assert "work" not in cli("calendar", "list").ok().out_text


# --------------------------------------------------------------------------- rules
def test_rule_routes_by_sender_domain_until_disabled(
    store: Any, cli: Cli, show: Callable[[int], dict[str, Any]]
) -> None:
    cli(
        "rule",
        "add",
        "acme-to-billing",
        "--on",
        "created",
        "--if",
        "from:@acme.com",
        "--then",
        "queue=Billing",
    ).ok()
    listed = cli("rule", "list").ok().out_text
    assert "acme-to-billing" in listed and "from:@acme.com" in listed and "Billing" in listed

    def create(sender: str) -> int:
        res = cli(
            "ticket",
            "create",
            "--subject",
            "Invoice",
            "--from",
            sender,
            "--body",
            "Hi",
            "--queue",
            "Support",
            "--json",
        ).ok()
        return int(res.json()["number"])

    acme = create("bob@acme.com")
    other = create("carol@other.org")
    assert show(acme)["queue"] == "Billing", "the rule routes acme.com mail to Billing"
    assert show(other)["queue"] == "Support", "other senders stay where they were put"

    tested = cli("rule", "test", "from:@acme.com").ok().out_text
    assert f"#{acme}: acme-to-billing (created)" in tested
    assert f"#{other}" not in tested
    assert "no rule fires" in cli("rule", "test", f"#{other}").ok().out_text

    cli("rule", "disable", "acme-to-billing").ok()
    row = next(
        line for line in cli("rule", "list").ok().out.splitlines() if "acme-to-billing" in line
    )
    assert " no " in row
    later = create("dave@acme.com")
    assert show(later)["queue"] == "Support", "a disabled rule does not fire"
    assert "no rule 'nope'" in cli("rule", "disable", "nope").failed(3).err_text


# --------------------------------------------------------------------------- reports
def test_report_json_and_csv_figures_on_a_tiny_store(store: Any, cli: Cli) -> None:
    base = (datetime.now(UTC) - timedelta(days=3)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    a = _mail_ticket(store.url, base, "bob@acme.com")
    b = _mail_ticket(store.url, base + timedelta(minutes=5), "carol@other.org")
    _mail_ticket(store.url, base + timedelta(minutes=10), "dave@acme.com", queue="Billing")
    _solve(store.url, a, base + timedelta(hours=2))  # resolved in 2 h
    _solve(store.url, b, base + timedelta(minutes=5, hours=4))  # resolved in 4 h

    rep = cli("report", "--json").ok().json()
    summary = rep["summary"]
    assert (summary["created"], summary["solved"], summary["backlog"]) == (3, 2, 1)
    assert summary["resolution_hours"]["count"] == 2
    assert summary["resolution_hours"]["median"] == 3.0  # (2 + 4) / 2
    assert summary["resolution_hours"]["mean"] == 3.0
    by_queue = {q["key"]: q for q in rep["by_queue"]}
    assert (by_queue["Support"]["created"], by_queue["Support"]["solved"]) == (2, 2)
    assert (by_queue["Billing"]["created"], by_queue["Billing"]["solved"]) == (1, 0)

    only = cli("report", "--json", "--queue", "Billing").ok().json()["summary"]
    assert (only["created"], only["solved"]) == (1, 0)

    rows = list(csv.reader(io.StringIO(cli("report", "--csv").ok().out)))
    assert rows[0] == ["section", "key", "metric", "value"]
    cells = {(r[0], r[1], r[2]): r[3] for r in rows[1:]}
    assert cells[("summary", "all", "created")] == "3"
    assert cells[("summary", "all", "solved")] == "2"
    assert float(cells[("summary", "all", "resolution_hours.median")]) == 3.0
    assert cells[("created_per_day", base.date().isoformat(), "count")] == "3"


# --------------------------------------------------------------------------- agents
def test_agent_update_changes_only_the_given_fields(store: Any, cli: Cli, hd: Cli) -> None:
    cli("agent", "add", "bo", "--name", "Bo", "--language", "en", "--skill", "printers").ok()
    res = hd("agent", "add", "bo", "--language", "lv").failed(5)
    assert "already exists" in res.err_text

    def bo() -> dict[str, Any]:
        agents = {a["login"]: a for a in cli("agent", "list", "--json").ok().json()}
        return agents["bo"]

    assert bo()["skills"] == ["printers"], "agent add --skill"

    res = hd(
        "agent",
        "update",
        "bo",
        "--language",
        "lv",
        "--language",
        "en",
        "--skill",
        "billing",
        "--skill",
        "printers",
        "--queue",
        "Billing",
    ).ok()
    assert "languages lv, en" in res.out_text and "skills billing, printers" in res.out_text
    a = bo()
    assert a["languages"] == ["lv", "en"]
    assert a["skills"] == ["billing", "printers"]
    assert a["queues"] == ["Billing"]
    assert (a["name"], a["role"], a["email"]) == ("Bo", "agent", None), "untouched fields"

    cli("agent", "update", "bo", "--name", "Bo Berg", "--email", "bo@example.com", "--admin").ok()
    a = bo()
    assert (a["name"], a["email"], a["role"]) == ("Bo Berg", "bo@example.com", "admin")
    assert a["languages"] == ["lv", "en"] and a["queues"] == ["Billing"], "lists kept"
    cli("agent", "update", "bo", "--no-admin", "--no-skills").ok()
    assert (bo()["role"], bo()["skills"]) == ("agent", [])

    table = cli("agent", "list").ok().out_text
    assert "lv, en" in table

    # every change is in the audit log
    audited = store.sqlite(
        "SELECT field, new_value FROM audit_events WHERE action = 'agent-updated' ORDER BY id"
    )
    assert ("agent.skills", "bo: billing,printers") in audited
    assert ("agent.role", "bo: admin") in audited

    assert "nobody" in hd("agent", "update", "nobody", "--name", "X").failed(3).err_text
    assert "Nope" in cli("agent", "update", "bo", "--queue", "Nope").failed(3).err_text


# --------------------------------------------------------------------------- queues
def test_queue_update_ack_refuses_unknown_canned_and_sets_the_limit(
    store: Any, cli: Cli, hd: Cli
) -> None:
    def support() -> dict[str, Any]:
        data: dict[str, Any] = cli("queue", "show", "Support", "--json").ok().json()
        return data

    res = hd("queue", "update", "Support", "--ack", "received").failed(5)
    assert "no shared canned response 'received'" in res.err_text
    assert len(res.err.strip().splitlines()) == 1, "one clear line"
    assert support()["ack"] is None

    # a personal canned response is not usable for an automatic mail
    cli("canned", "add", "mine", "--body", "Hi", "--owner", "anna").ok()
    hd("queue", "update", "Support", "--ack", "mine").failed(5)

    body = "Hello {{customer.name}}, we got ticket {{ticket.number}}."
    cli("canned", "add", "received", "--body", body).ok()
    res = hd("queue", "update", "Support", "--ack", "received", "--ack-limit", "2").ok()
    assert "acknowledgement 'received', at most 2 per address per hour" in res.out_text
    q = support()
    assert (q["ack"], q["ack_limit_per_hour"]) == ("received", 2)
    assert q["addresses"] == ["help@example.com"], "addresses untouched"
    assert cli("queue", "show", "Billing", "--json").ok().json()["ack"] is None
    assert "received (max 2/h)" in cli("queue", "list").ok().out_text
    shown = cli("queue", "show", "support").ok().out_text
    assert "acknowledgement: received, at most 2 per address per hour" in shown

    cli("queue", "update", "Support", "--address", "Help@Example.com", "--address", "b@x.lv").ok()
    q = support()
    assert q["addresses"] == ["help@example.com", "b@x.lv"]
    assert q["ack"] == "received", "ack untouched by --address"

    cli("queue", "update", "Support", "--no-ack").ok()
    assert support()["ack"] is None
    assert "acknowledgement: none" in cli("queue", "show", "Support").ok().out_text
    assert "nothing changed" in cli("queue", "update", "Support", "--no-ack").ok().out_text

    cli("queue", "update", "Support", "--ack", "received", "--no-ack").failed(5)
    cli("queue", "update", "Nowhere", "--no-ack").failed(3)
    cli("queue", "show", "Nowhere").failed(3)
    audited = store.sqlite("SELECT new_value FROM audit_events WHERE action = 'queue-settings'")
    assert ("Support: ack=received ack_limit_per_hour=2",) in audited


def test_acknowledgement_set_by_the_cli_is_the_one_mail_sends(store: Any, cli: Cli) -> None:
    """The setting `queue update --ack` writes is what mail_sync's acknowledgement reads."""
    from mail_sync.autoreply import queue_acknowledgement
    from store.models import Ticket

    cli("canned", "add", "received", "--body", "We got ticket {{ticket.number}}.").ok()
    cli("queue", "update", "Support", "--ack", "received", "--ack-limit", "1").ok()
    number = _mail_ticket(store.url, datetime.now(UTC), "carol@other.org")

    async def ack_twice(service: Service) -> list[str]:
        from sqlalchemy import select

        results = []
        for _ in range(2):
            async with service.db.write() as session:
                t = (
                    (await session.execute(select(Ticket).where(Ticket.number == number)))
                    .unique()
                    .scalar_one()
                )
                results.append(
                    await queue_acknowledgement(service, session, t, sender="carol@other.org")
                )
        return results

    first, second = with_service(store.url, ack_twice, datetime.now(UTC))
    assert first == "acknowledgement queued"
    assert "already sent" in second, "the CLI's --ack-limit 1 is honoured"
