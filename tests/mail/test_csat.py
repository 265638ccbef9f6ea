"""Satisfaction surveys: queued once after solve + delay, delivered over SMTP, rating replies
recorded without reopening (and counted by the report), questions reopen.

Runs on SQLite and on a real PostgreSQL (the `service` fixture is parametrised by `db_url`).
"""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from mail_sync import csat
from mail_sync.csat_cli import register_csat
from mail_sync.ingest import Ingestor, MailSource
from mail_sync.outbox import OutboxSender
from store import reports
from store.engine import Database
from store.migrate import upgrade
from store.models import Article, ArticleKind, AuditEvent, Outbox, Status
from store.service import Actor, Service
from tests.conftest import FakeClock

SUPPORT = "support@help.test"


def customer_mail(
    body: str,
    *,
    subject: str = "Printer broken",
    sender: str = "Alice Customer <alice@example.com>",
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = SUPPORT
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="example.com")
    if in_reply_to:
        m["In-Reply-To"] = f"<{in_reply_to}>"
        m["References"] = f"<{in_reply_to}>"
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    return m.as_bytes()


async def ingest(service: Service, raw: bytes) -> Any:
    ing = Ingestor(service, default_queue="Support")
    (res,) = await ing.ingest_batch([ing.prepare(raw, MailSource("eml", "test"))])
    return res


async def setup(service: Service, clock: FakeClock, **settings: Any) -> Actor:
    await service.add_queue("Support", [SUPPORT])
    await service.add_queue("Sales", ["sales@help.test"])
    agent = await service.add_agent("anna", "Anna Agent", "anna@help.test", queues=["Support"])
    cfg = csat.CsatSettings(
        enabled=True, enabled_at=(clock.now - timedelta(days=1)).isoformat(), **settings
    )
    await service.set_setting(csat.SETTING_KEY, cfg.to_value())
    return Actor("agent", "anna", agent.id)


async def solved_ticket(
    service: Service, clock: FakeClock, actor: Actor, raw: bytes | None = None
) -> int:
    """A mailed-in ticket that an agent answered and solved (at the clock's time)."""
    res = await ingest(service, raw or customer_mail("The printer on floor 2 is dead."))
    assert res.outcome == "created" and res.ticket_number is not None
    clock.advance(minutes=20)
    await service.add_reply(actor, res.ticket_number, "Hello Alice,\n\nreplaced the fuser.\n")
    clock.advance(minutes=10)
    await service.update_ticket(actor, res.ticket_number, status=Status.SOLVED)
    return int(res.ticket_number)


async def surveys(service: Service) -> list[Outbox]:
    async with service.db.read() as s:
        rows = await s.execute(select(Outbox).where(Outbox.kind == "csat").order_by(Outbox.id))
        return list(rows.scalars())


async def audit(service: Service, action: str) -> list[AuditEvent]:
    async with service.db.read() as s:
        rows = await s.execute(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
        return list(rows.scalars())


async def test_survey_queued_once_after_the_delay_and_again_after_a_new_solve(
    service: Service, clock: FakeClock
) -> None:
    actor = await setup(service, clock, delay_seconds=3600)
    n = await solved_ticket(service, clock, actor)
    clock.advance(minutes=59)
    assert await csat.queue_surveys(service.db, clock()) == 0  # not before the delay
    clock.advance(minutes=2)
    assert await csat.queue_surveys(service.db, clock()) == 1
    assert await csat.queue_surveys(service.db, clock()) == 0  # once per solve
    clock.advance(hours=5)
    assert await csat.queue_surveys(service.db, clock()) == 0

    [ob] = await surveys(service)
    assert ob.rcpt_to == ["alice@example.com"] and ob.status == "queued"
    detail = await service.ticket_detail(n)
    survey = detail.articles[-1]
    assert survey.kind == ArticleKind.EMAIL_OUT.value
    assert survey.meta["csat_survey"] is True and survey.message_id == ob.message_id
    assert survey.subject == f"[#{n}] How did we do?"
    assert "1 (poor) to 5 (excellent)" in survey.body_text
    assert detail.ticket.status == Status.SOLVED.value

    # The customer writes again, the agent solves again: a new solve, a new survey.
    clock.advance(hours=1)
    reopen = await ingest(service, customer_mail(f"It jams again. [#{n}]", subject=f"Re: [#{n}]"))
    assert reopen.ticket_number == n
    assert (await service.get_ticket(n)).status == Status.OPEN.value
    clock.advance(minutes=30)
    await service.update_ticket(actor, n, status=Status.SOLVED)
    clock.advance(minutes=30)
    assert await csat.queue_surveys(service.db, clock()) == 0
    clock.advance(minutes=31)
    assert await csat.queue_surveys(service.db, clock()) == 1
    assert len(await surveys(service)) == 2


async def test_no_survey_to_automatic_senders_opted_out_queues_or_when_off(
    service: Service, clock: FakeClock
) -> None:
    actor = await setup(service, clock, delay_seconds=0, skip_queues=["sales"])
    robot = await solved_ticket(
        service,
        clock,
        actor,
        customer_mail(
            "Disk usage 95% on host db1.",
            subject="ALERT disk",
            sender="monitor@example.com",
            headers={"Auto-Submitted": "auto-generated"},
        ),
    )
    noreply = await solved_ticket(
        service,
        clock,
        actor,
        customer_mail("Your invoice is ready.", subject="Invoice", sender="noreply@shop.example"),
    )
    sales_raw = customer_mail("Price list please.", subject="Prices", sender="bob@example.com")
    sales_raw = sales_raw.replace(SUPPORT.encode(), b"sales@help.test")
    await solved_ticket(service, clock, actor, sales_raw)
    clock.advance(minutes=1)
    assert await csat.queue_surveys(service.db, clock()) == 0
    assert await surveys(service) == []
    skipped = {a.ticket_id: a.new_value or "" for a in await audit(service, "csat-survey")}
    by_number = {n: (await service.get_ticket(n)).id for n in (robot, noreply)}
    assert skipped[by_number[robot]].startswith("skipped: the customer's mail is automatic")
    assert "does not take replies" in skipped[by_number[noreply]]
    assert len(skipped) == 2  # the opted-out queue is not even looked at

    # Surveys off: a fresh solve gets nothing.
    await service.set_setting(csat.SETTING_KEY, csat.CsatSettings(enabled=False).to_value())
    await solved_ticket(service, clock, actor)
    clock.advance(hours=2)
    assert await csat.queue_surveys(service.db, clock()) == 0


async def test_survey_delivered_then_rating_reply_recorded_and_ticket_stays_solved(
    service: Service, clock: FakeClock, smtp_server: Any
) -> None:
    actor = await setup(service, clock, delay_seconds=3600)
    smtp = {"host": smtp_server.host, "port": smtp_server.port, "from_address": SUPPORT}
    await service.set_setting("smtp", {**smtp, "from_name": "Help"})
    n = await solved_ticket(service, clock, actor)
    clock.advance(hours=1, minutes=1)
    assert await csat.queue_surveys(service.db, clock()) == 1
    sender = await OutboxSender.from_store(service.db)  # as the daemon does
    sender.clock = clock
    counts = await sender.send_due()
    assert counts == {"sent": 2, "retry": 0, "failed": 0}  # the agent's reply and the survey
    [ob] = await surveys(service)
    [got] = [m for m in smtp_server.wait_for(2) if m.message["Message-ID"] == f"<{ob.message_id}>"]
    msg = got.message
    assert got.rcpt_tos == ["alice@example.com"]
    assert msg["Subject"] == f"[#{n}] How did we do?"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == f"<{ob.message_id}>"
    assert msg["From"] == f"Help <{SUPPORT}>" and msg["To"] == "alice@example.com"
    assert msg["In-Reply-To"] is not None  # threads under the ticket's last mail
    assert "reply to this mail with a number from 1" in msg.get_content()

    # The customer answers the survey from their mail program.
    clock.advance(minutes=30)
    reply = customer_mail(
        "4 great help\n\nOn Mon, Help wrote:\n> How did we do? 1 (poor) to 5 (excellent)\n",
        subject=f"Re: {msg['Subject']}",
        in_reply_to=ob.message_id,
    )
    res = await ingest(service, reply)
    assert res.ticket_number == n and "satisfaction rating 4" in res.reason
    detail = await service.ticket_detail(n)
    assert detail.ticket.status == Status.SOLVED.value
    [rating] = [a for a in detail.audit if a.action == "csat"]
    assert (rating.field, rating.new_value) == ("csat", "4")
    note = detail.articles[-1]
    assert note.kind == ArticleKind.SYSTEM.value
    assert note.body_text == "Satisfaction rating 4/5 from the customer: great help"

    report = await reports.build_report(
        service.db, reports.ReportFilter(), now=clock.advance(minutes=1)
    )
    assert (report.overall.csat_average, report.overall.csat_count) == (4.0, 1)
    [support] = [f for f in report.by_queue if f.label == "Support"]
    assert (support.csat_average, support.csat_count) == (4.0, 1)

    # A second answer replaces the first in the report (the latest rating counts).
    clock.advance(minutes=5)
    await ingest(service, customer_mail("Rating: 2", in_reply_to=ob.message_id, subject="Re"))
    report = await reports.build_report(
        service.db, reports.ReportFilter(), now=clock.advance(minutes=1)
    )
    assert (report.overall.csat_average, report.overall.csat_count) == (2.0, 1)
    assert (await service.get_ticket(n)).status == Status.SOLVED.value


async def test_a_question_in_reply_to_the_survey_reopens_the_ticket(
    service: Service, clock: FakeClock
) -> None:
    actor = await setup(service, clock, delay_seconds=0)
    n = await solved_ticket(service, clock, actor)
    clock.advance(minutes=1)
    assert await csat.queue_surveys(service.db, clock()) == 1
    [ob] = await surveys(service)
    clock.advance(minutes=10)
    res = await ingest(
        service,
        customer_mail(
            "Thanks, but the printer on floor 3 does the same. Can you look?",
            subject=f"Re: [#{n}] How did we do?",
            in_reply_to=ob.message_id,
        ),
    )
    assert res.ticket_number == n
    assert (await service.get_ticket(n)).status == Status.OPEN.value
    assert await audit(service, "csat") == []


async def test_a_digit_in_reply_to_an_agent_mail_is_not_a_rating(
    service: Service, clock: FakeClock
) -> None:
    actor = await setup(service, clock, delay_seconds=0)
    n = await solved_ticket(service, clock, actor)
    async with service.db.read() as s:
        agent_mail = (
            await s.execute(
                select(Article.message_id).where(Article.kind == ArticleKind.EMAIL_OUT.value)
            )
        ).scalar_one()
    assert agent_mail is not None
    await ingest(service, customer_mail("5 more printers broke", in_reply_to=agent_mail))
    assert (await service.get_ticket(n)).status == Status.OPEN.value
    assert await audit(service, "csat") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", (5, "")),
        ("4 great help", (4, "great help")),
        ("4 - quick answer", (4, "quick answer")),
        ("Rating: 3", (3, "")),
        ("5/5", (5, "")),
        ("4 out of 5, thanks", (4, "thanks")),
        ("★★★★", (4, "")),
        ("2\n\nslow, but solved\n> quoted 5", (2, "slow, but solved")),
        ("5\n-- \nAlice, ACME", (5, "")),
        ("Thanks, the printer works again!", None),
        ("5 minutes after you closed it, it broke again", None),
        ("4 or 5", None),
        ("4.5", None),
        ("12", None),
        ("5 but can you also check the scanner?", None),
        ("> 5", None),
        ("", None),
    ],
)
def test_parse_rating(text: str, expected: tuple[int, str] | None) -> None:
    assert csat.parse_rating(text) == expected


def test_cli_enable_show_disable(tmp_path: Path) -> None:
    import asyncio

    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"

    async def prepare() -> None:
        db = Database(url)
        await upgrade(db)
        svc = Service(db)
        await svc.add_queue("Support", [SUPPORT])
        await svc.add_queue("Sales", [])
        await svc.add_canned("survey", "How did we do, {{customer.first_name}}? Reply 1-5.")
        await db.dispose()

    asyncio.run(prepare())
    app = typer.Typer()
    mail = typer.Typer()
    app.add_typer(mail, name="mail")
    register_csat(mail, lambda: Database(url))
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["mail", "csat", *args])

    assert "surveys are off" in cli("show").output
    r = cli("enable", "--template", "survey", "--delay", "2h")
    assert r.exit_code == 0, r.output
    assert "sent 2h after a ticket is solved, with the canned response 'survey'" in r.output
    r = cli("disable", "--queue", "sales")
    assert r.exit_code == 0 and "not for queue(s) Sales" in r.output
    r = cli("show", "--json")
    import json

    data = json.loads(r.output)
    assert data["enabled"] is True and data["delay_seconds"] == 7200
    assert data["template"] == "survey" and data["skip_queues"] == ["Sales"]
    assert cli("enable", "--queue", "Sales").exit_code == 0
    assert "not for queue" not in cli("show").output
    assert cli("enable", "--template", "nope").exit_code == 3
    assert cli("enable", "--delay", "5m").exit_code == 5
    assert cli("disable", "--queue", "Nowhere").exit_code == 3
    assert "surveys are off" in cli("disable").output
