"""Report figures on a fixed dataset, checked against values computed by hand (SQLite + PostgreSQL).

The dataset (all times UTC; Mon = 2026-11-02; the report covers Mon 00:00 - Thu 00:00):

    ticket queue   agent  created      first reply   solved (final)  notes
    T0     Support anna   Sun 20:00    Mon 09:15     Mon 16:00       created before the period
    T1     Support anna   Mon 09:00    Mon 10:00     Mon 12:00       FCR; CSAT 5
    T2     Support anna   Mon 09:30    Mon 11:30     Mon 15:30       customer follow-up 13:00,
                                                                     2nd reply 14:00
    T3     Billing omar   Mon 10:00    Mon 14:00     Tue 10:00       FCR; SLA breached; CSAT 3
    T4     Billing omar   Mon 13:00    Mon 13:30     Tue 12:00       solved Mon 16:00, customer
                                                                     reopens Tue 09:00, reply
                                                                     Tue 10:00, solved again
    T5     Support anna   Tue 08:00    Tue 10:00     -               answered (active)
    T6     Billing -      Tue 11:00    -             -               new; SLA due Tue 13:00 passed
    T7     Support omar   Tue 15:00    Tue 18:00     Wed 09:00       FCR
    T8     Support anna   Wed 10:00    Wed 10:15     -               pending (active)
    T9     Billing omar   Wed 12:00    Wed 12:30     Wed 13:00       FCR; closed Wed 14:00

An SLA policy covers the Billing queue only: first response within 2 h, 24/7.
Percentiles: p90 is the nearest rank, ``sorted(xs)[ceil(0.9 * n) - 1]``.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

import pytest
from rich.console import Console

from store import businesstime as bt
from store import sla
from store.models import Article, ArticleKind, AuditEvent, Status
from store.reports import (
    DurationStats,
    Figures,
    ReportError,
    ReportFilter,
    bars,
    build_report,
    percentile,
    render_text,
    sparkline,
)
from store.service import Actor, ArticleInput, Service
from tests.conftest import FakeClock

MAIL = Actor("mail", "sync")
MON, TUE, WED = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)
SINCE = datetime(2026, 11, 2, tzinfo=UTC)
UNTIL = NOW = datetime(2026, 11, 5, tzinfo=UTC)
PERIOD = ReportFilter(since=SINCE, until=UNTIL, queue=None, agent=None)


def at(day: int, h: int, m: int = 0) -> datetime:
    """2026-11-`day` h:m UTC (1 = Sunday, 2 = Monday ...)."""
    return datetime(2026, 11, day, h, m, tzinfo=UTC)


async def build_dataset(service: Service, clock: FakeClock) -> dict[str, int]:
    clock.now = at(1, 12)
    await service.add_queue("Support")
    await service.add_queue("Billing")
    anna = await service.add_agent("anna", "Anna", queues=["Support"])
    omar = await service.add_agent("omar", "Omar", queues=["Billing", "Support"])
    await sla.add_calendar(service.db, "always", timezone="UTC", hours="24/7")
    await sla.add_policy(
        service.db,
        "billing",
        calendar="always",
        condition="queue:Billing",
        targets=sla.parse_targets(first_response="2h"),
    )
    agents = {"anna": Actor("agent", "anna", anna.id), "omar": Actor("agent", "omar", omar.id)}
    n: dict[str, int] = {}

    async def create(name: str, when: datetime, queue: str, assignee: str | None) -> None:
        clock.now = when
        t = await service.create_ticket(
            MAIL,
            subject=f"ticket {name}",
            customer_email=f"{name.lower()}@customer.example",
            article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="help"),
            queue=queue,
            assignee=assignee,
        )
        n[name] = t.number

    async def reply(name: str, when: datetime, who: str, status: Status | None = None) -> None:
        clock.now = when
        await service.add_reply(agents[who], n[name], "answer", status=status)

    async def customer(name: str, when: datetime) -> None:
        clock.now = when
        await service.add_customer_message(
            MAIL, n[name], ArticleInput(kind=ArticleKind.EMAIL_IN, body="more")
        )

    async def status(name: str, when: datetime, st: Status, who: str = "anna") -> None:
        clock.now = when
        await service.update_ticket(agents[who], n[name], status=st)

    # in time order
    await create("T0", at(1, 20), "Support", "anna")
    await create("T1", at(2, 9), "Support", "anna")
    await reply("T0", at(2, 9, 15), "anna")
    await create("T2", at(2, 9, 30), "Support", "anna")
    await reply("T1", at(2, 10), "anna")
    await create("T3", at(2, 10), "Billing", "omar")
    await reply("T2", at(2, 11, 30), "anna")
    await status("T1", at(2, 12), Status.SOLVED)
    await customer("T2", at(2, 13))
    await create("T4", at(2, 13), "Billing", "omar")
    await reply("T4", at(2, 13, 30), "omar")
    await reply("T2", at(2, 14), "anna")
    await reply("T3", at(2, 14), "omar")
    await status("T2", at(2, 15, 30), Status.SOLVED)
    await status("T0", at(2, 16), Status.SOLVED)
    await status("T4", at(2, 16), Status.SOLVED, "omar")
    await create("T5", at(3, 8), "Support", "anna")
    await customer("T4", at(3, 9))  # solved -> open: the reopen
    await reply("T4", at(3, 10), "omar")
    await reply("T5", at(3, 10), "anna")
    await status("T3", at(3, 10), Status.SOLVED, "omar")
    await create("T6", at(3, 11), "Billing", None)
    await status("T4", at(3, 12), Status.SOLVED, "omar")
    await create("T7", at(3, 15), "Support", "omar")
    await reply("T7", at(3, 18), "omar")
    await status("T7", at(4, 9), Status.SOLVED, "omar")
    await create("T8", at(4, 10), "Support", "anna")
    await reply("T8", at(4, 10, 15), "anna", Status.PENDING)
    await create("T9", at(4, 12), "Billing", "omar")
    await reply("T9", at(4, 12, 30), "omar")
    await status("T9", at(4, 13), Status.SOLVED, "omar")
    await status("T9", at(4, 14), Status.CLOSED, "omar")
    # CSAT ratings as the mail sync will record them: audit rows action='csat'.
    async with service.db.write() as s:
        for name, when, rating in (("T1", at(2, 13), "5"), ("T3", at(3, 11), "3")):
            t = await service.get_ticket(n[name])
            s.add(
                AuditEvent(
                    ticket_id=t.id,
                    actor="mail:sync",
                    action="csat",
                    field="csat",
                    new_value=rating,
                    created_at=when,
                )
            )
    clock.now = NOW
    return n


def stats(f: DurationStats) -> tuple[int, float | None, float | None, float | None]:
    return f.count, f.median, f.mean, f.p90


def by_key(rows: list[Figures]) -> dict[str, Figures]:
    return {f.key: f for f in rows}


async def test_report_on_fixed_dataset(service: Service, clock: FakeClock) -> None:
    await build_dataset(service, clock)
    r = await build_report(service.db, PERIOD, now=NOW)
    o = r.overall

    # Created in the period: T1..T9. Mon T1 T2 T3 T4 = 4, Tue T5 T6 T7 = 3, Wed T8 T9 = 2.
    assert o.created == 9
    assert r.created_per_day == [(MON, 4), (TUE, 3), (WED, 2)]
    # Hours (UTC): 09 T1 T2; 10 T3 T8; 13 T4; 08 T5; 11 T6; 15 T7; 12 T9.
    expected_hours = [0] * 24
    for h, count in {8: 1, 9: 2, 10: 2, 11: 1, 12: 1, 13: 1, 15: 1}.items():
        expected_hours[h] = count
    assert r.created_per_hour == expected_hours

    # Solved in the period (final solve): Mon T1 12:00, T2 15:30, T0 16:00 = 3;
    # Tue T3 10:00, T4 12:00 = 2; Wed T7 09:00, T9 13:00 = 2.
    assert o.solved == 7
    assert r.solved_per_day == [(MON, 3), (TUE, 2), (WED, 2)]

    # Backlog (active at each day's end). Start: T0 = 1.
    # End Mon: created T0-T4; T0 T1 T2 solved, T4 solved Mon 16:00 (reopened only Tue 09:00)
    #          -> only T3 active = 1.
    # End Tue: T3 T4 solved; T5 T6 T7 created -> T5 T6 T7 = 3.
    # End Wed: T7 T9 solved, T8 T9 created -> T5 T6 T8 = 3.
    assert r.backlog == [(MON, 1), (TUE, 3), (WED, 3)]
    assert o.backlog == 3

    # First response (hours), created in the period with a reply:
    # T1 1, T2 2, T3 4, T4 0.5, T5 2, T7 3, T8 0.25, T9 0.5
    # sorted 0.25 0.5 0.5 1 2 2 3 4: median (1+2)/2 = 1.5; mean 13.25/8 = 1.65625;
    # p90 rank ceil(7.2) = 8 -> 4.
    assert stats(o.first_response) == (8, 1.5, pytest.approx(1.65625), 4.0)
    # Resolution (hours), solved in the period: T0 20 (Sun 20:00 -> Mon 16:00), T1 3, T2 6,
    # T3 24, T4 23 (Mon 13:00 -> Tue 12:00), T7 18, T9 1.
    # sorted 1 3 6 18 20 23 24: median 18; mean 95/7; p90 rank ceil(6.3) = 7 -> 24.
    assert stats(o.resolution) == (7, 18.0, pytest.approx(95 / 7), 24.0)

    # FCR: of the 7 solved, one reply and no follow-up: T0 T1 T3 T7 T9 = 5 (T2 and T4 not).
    assert (o.fcr.count, o.fcr.base) == (5, 7)
    assert o.fcr.rate == pytest.approx(5 / 7)
    # SLA (Billing, created in the period): T3 breached (4h > 2h), T4 met, T6 breached
    # (no reply, due Tue 13:00), T9 met -> 2 of 4.
    assert (o.sla.count, o.sla.base, o.sla_compliance) == (2, 4, 0.5)
    # Reopen: ever solved among the created: T1 T2 T3 T4 T7 T9 = 6; reopened: T4 -> 1/6.
    assert (o.reopen.count, o.reopen.base) == (1, 6)
    assert o.reopen.rate == pytest.approx(1 / 6)
    # CSAT: 5 and 3 -> 4.0 from 2 ratings.
    assert (o.csat_average, o.csat_count) == (4.0, 2)

    agents = by_key(r.by_agent)
    assert list(agents) == ["anna", "omar", "(unassigned)"]
    anna, omar, nobody = agents["anna"], agents["omar"], agents["(unassigned)"]
    # anna: created T1 T2 T5 T8; solved T0 T1 T2; active T5 T8.
    assert (anna.created, anna.solved, anna.backlog) == (4, 3, 2)
    # FRT T1 1, T2 2, T5 2, T8 0.25 -> sorted 0.25 1 2 2: median 1.5, mean 5.25/4, p90 rank 4 -> 2
    assert stats(anna.first_response) == (4, 1.5, 1.3125, 2.0)
    # resolution T0 20, T1 3, T2 6 -> median 6, mean 29/3, p90 rank ceil(2.7) = 3 -> 20
    assert stats(anna.resolution) == (3, 6.0, pytest.approx(29 / 3), 20.0)
    assert (anna.fcr.count, anna.fcr.base) == (2, 3)  # T0 T1
    assert (anna.sla.base, anna.sla_compliance) == (0, None)  # Support has no SLA
    assert (anna.reopen.count, anna.reopen.base) == (0, 2)  # ever solved T1 T2
    assert (anna.csat_average, anna.csat_count) == (5.0, 1)
    # omar: created T3 T4 T7 T9, all solved, none active.
    assert (omar.created, omar.solved, omar.backlog) == (4, 4, 0)
    # FRT 4, 0.5, 3, 0.5 -> sorted 0.5 0.5 3 4: median 1.75, mean 2, p90 4
    assert stats(omar.first_response) == (4, 1.75, 2.0, 4.0)
    # resolution 24, 23, 18, 1 -> sorted 1 18 23 24: median 20.5, mean 16.5, p90 24
    assert stats(omar.resolution) == (4, 20.5, 16.5, 24.0)
    assert (omar.fcr.count, omar.fcr.base) == (3, 4)  # T3 T7 T9
    assert (omar.sla.count, omar.sla.base) == (2, 3)  # T3 breached; T4 T9 met
    assert (omar.reopen.count, omar.reopen.base) == (1, 4)  # T4
    assert (omar.csat_average, omar.csat_count) == (3.0, 1)
    # unassigned: T6 only.
    assert (nobody.created, nobody.solved, nobody.backlog) == (1, 0, 1)
    assert nobody.first_response.count == 0 and nobody.first_response.median is None
    assert (nobody.sla.count, nobody.sla.base) == (0, 1)
    assert nobody.reopen.rate is None and nobody.csat_average is None

    queues = by_key(r.by_queue)
    assert list(queues) == ["Billing", "Support"]
    support, billing = queues["Support"], queues["Billing"]
    # Support: created T1 T2 T5 T7 T8; solved T0 T1 T2 T7; active T5 T8.
    assert (support.created, support.solved, support.backlog) == (5, 4, 2)
    # FRT 1 2 2 3 0.25 -> sorted 0.25 1 2 2 3: median 2, mean 8.25/5, p90 rank ceil(4.5) = 5 -> 3
    assert stats(support.first_response) == (5, 2.0, pytest.approx(1.65), 3.0)
    # resolution 20 3 6 18 -> sorted 3 6 18 20: median 12, mean 11.75, p90 20
    assert stats(support.resolution) == (4, 12.0, 11.75, 20.0)
    assert (support.fcr.count, support.fcr.base) == (3, 4)  # T0 T1 T7
    assert support.sla_compliance is None
    assert (support.reopen.count, support.reopen.base) == (0, 3)  # ever solved T1 T2 T7
    # Billing: created T3 T4 T6 T9; solved T3 T4 T9; active T6.
    assert (billing.created, billing.solved, billing.backlog) == (4, 3, 1)
    # FRT 4 0.5 0.5 -> median 0.5, mean 5/3, p90 rank 3 -> 4
    assert stats(billing.first_response) == (3, 0.5, pytest.approx(5 / 3), 4.0)
    # resolution 24 23 1 -> median 23, mean 16, p90 24
    assert stats(billing.resolution) == (3, 23.0, 16.0, 24.0)
    assert (billing.fcr.count, billing.fcr.base) == (2, 3)  # T3 T9
    assert (billing.sla.count, billing.sla.base) == (2, 4)
    assert (billing.reopen.count, billing.reopen.base) == (1, 3)
    assert (billing.csat_average, billing.csat_count) == (3.0, 1)


async def test_business_hours(service: Service, clock: FakeClock) -> None:
    await build_dataset(service, clock)
    office = bt.Calendar.build(timezone="UTC", hours="mon-fri 09:00-17:00", name="office")
    r = await build_report(service.db, PERIOD, now=NOW, calendar=office)
    assert r.business_hours and r.unit == "business hours"
    # First response in business hours (09-17 Mon-Fri):
    # T1 1, T2 2, T3 4, T4 0.5, T5 1 (Tue 08:00 counts from 09:00), T7 2 (15:00 -> 17:00 of
    # 15:00 -> 18:00), T8 0.25, T9 0.5. sorted 0.25 0.5 0.5 1 1 2 2 4: median 1, mean 11.25/8,
    # p90 4.
    assert stats(r.overall.first_response) == (8, 1.0, pytest.approx(1.40625), 4.0)
    # Resolution: T0 7 (Sun 20:00 -> Mon 16:00 = Mon 09-16), T1 3, T2 6, T3 8 (Mon 10-17 = 7,
    # Tue 09-10 = 1), T4 7 (Mon 13-17 = 4, Tue 09-12 = 3), T7 2 (Tue 15-17, Wed 09:00),
    # T9 1. sorted 1 2 3 6 7 7 8: median 6, mean 34/7, p90 8.
    assert stats(r.overall.resolution) == (7, 6.0, pytest.approx(34 / 7), 8.0)
    # Counts do not depend on the unit.
    assert (r.overall.created, r.overall.solved, r.overall.fcr.count) == (9, 7, 5)


async def test_calendar_time_zone_shifts_days_and_hours(service: Service, clock: FakeClock) -> None:
    await build_dataset(service, clock)
    riga = bt.Calendar.build(timezone="Europe/Riga", hours="24/7", name="riga")  # UTC+2 in Nov
    r = await build_report(service.db, PERIOD, now=NOW, calendar=riga)
    # The period Mon 00:00 - Thu 00:00 UTC is Mon 02:00 - Thu 02:00 in Riga: four local days.
    # Created (local): Mon T1 11:00 T2 11:30 T3 12:00 T4 15:00; Tue T5 10:00 T6 13:00 T7 17:00;
    # Wed T8 12:00 T9 14:00; Thu none.
    thu = date(2026, 11, 5)
    assert r.created_per_day == [(MON, 4), (TUE, 3), (WED, 2), (thu, 0)]
    # Hours shift by two: 10 T5; 11 T1 T2; 12 T3 T8; 13 T6; 14 T9; 15 T4; 17 T7.
    assert {h: c for h, c in enumerate(r.created_per_hour) if c} == {
        10: 1,
        11: 2,
        12: 2,
        13: 1,
        14: 1,
        15: 1,
        17: 1,
    }
    # Backlog at Riga midnights (22:00 UTC) is as at UTC midnight; Thu ends at `until`.
    assert r.backlog == [(MON, 1), (TUE, 3), (WED, 3), (thu, 3)]
    # 24/7: business hours equal wall-clock hours.
    assert r.overall.first_response.median == 1.5 and r.overall.resolution.median == 18.0


async def test_filters(service: Service, clock: FakeClock) -> None:
    await build_dataset(service, clock)
    billing = await build_report(
        service.db, ReportFilter(SINCE, UNTIL, queue="billing", agent=None), now=NOW
    )
    assert billing.queue == "Billing"
    o = billing.overall
    assert (o.created, o.solved, o.backlog) == (4, 3, 1)
    # Billing backlog: start 0; end Mon T3 (T4 solved) = 1; end Tue T6 = 1; end Wed T6 = 1.
    assert billing.backlog == [(MON, 1), (TUE, 1), (WED, 1)]
    assert billing.created_per_day == [(MON, 2), (TUE, 1), (WED, 1)]
    assert [f.key for f in billing.by_queue] == ["Billing"]

    anna = await build_report(service.db, ReportFilter(SINCE, UNTIL, None, "anna"), now=NOW)
    o = anna.overall
    assert (o.created, o.solved, o.backlog) == (4, 3, 2)
    # anna's backlog: start T0 = 1; end Mon: T0 T1 T2 solved = 0; end Tue T5 = 1;
    # end Wed T5 T8 = 2.
    assert anna.backlog == [(MON, 0), (TUE, 1), (WED, 2)]
    assert [f.key for f in anna.by_agent] == ["anna"]

    # Only Tuesday: created T5 T6 T7; solved T3 T4; FRT T5 2, T7 3; start backlog (Tue 00:00)
    # is T3 alone (T4 counted out by its solve-reopen span) -> end Tue 3.
    tue = await build_report(service.db, ReportFilter(at(3, 0), at(4, 0), None, None), now=NOW)
    assert tue.created_per_day == [(TUE, 3)] and tue.solved_per_day == [(TUE, 2)]
    assert tue.backlog == [(TUE, 3)]
    assert stats(tue.overall.first_response) == (2, 2.5, 2.5, 3.0)
    # CSAT given on Tuesday: T3's 3 only.
    assert (tue.overall.csat_average, tue.overall.csat_count) == (3.0, 1)
    # Reopen: ever solved among T5 T6 T7 is T7; not reopened.
    assert (tue.overall.reopen.count, tue.overall.reopen.base) == (0, 1)

    with pytest.raises(ReportError, match="no queue"):
        await build_report(service.db, ReportFilter(SINCE, UNTIL, "nope", None), now=NOW)
    with pytest.raises(ReportError, match="no agent"):
        await build_report(service.db, ReportFilter(SINCE, UNTIL, None, "nobody"), now=NOW)
    with pytest.raises(ReportError, match="empty period"):
        await build_report(service.db, ReportFilter(UNTIL, SINCE, None, None), now=NOW)


async def test_empty_store_and_defaults(service: Service) -> None:
    r = await build_report(service.db, ReportFilter(), now=NOW)
    # Defaults: until = now, since = 30 days before.
    assert (r.since, r.until) == (datetime(2026, 10, 6, tzinfo=UTC), NOW)
    assert len(r.created_per_day) == 30 and r.overall.created == 0
    assert r.overall.sla_compliance is None and r.overall.first_response.median is None
    assert r.by_agent == [] and r.by_queue == []
    render = Console(width=120, record=True, color_system=None)
    render.print(render_text(r))


async def test_serialisation(service: Service, clock: FakeClock) -> None:
    await build_dataset(service, clock)
    r = await build_report(service.db, PERIOD, now=NOW)
    data = json.loads(r.to_json())
    assert list(data) == [
        "period",
        "generated_at",
        "time_unit",
        "calendar",
        "summary",
        "created_per_day",
        "created_per_hour",
        "solved_per_day",
        "backlog",
        "by_agent",
        "by_queue",
    ]
    s = data["summary"]
    assert s["created"] == 9 and s["solved"] == 7 and s["backlog"] == 3
    assert s["first_response_hours"] == {"count": 8, "median": 1.5, "mean": 1.6562, "p90": 4.0}
    assert s["fcr"] == {"count": 5, "base": 7, "rate": 0.7143}
    assert s["sla"] == {"met": 2, "with_sla": 4, "compliance": 0.5}
    assert s["reopen"] == {"count": 1, "base": 6, "rate": 0.1667}
    assert s["csat"] == {"average": 4.0, "count": 2}
    assert data["backlog"][0] == {"date": "2026-11-02", "active": 1}
    assert data["created_per_hour"][9] == {"hour": 9, "count": 2}
    assert [a["key"] for a in data["by_agent"]] == ["anna", "omar", "(unassigned)"]
    assert data["time_unit"] == "hours" and data["period"]["timezone"] == "UTC"

    rows = r.to_csv_rows()
    assert rows[0] == ["section", "key", "metric", "value"]
    assert ["summary", "all", "created", "9"] in rows
    assert ["summary", "all", "first_response_hours.median", "1.5"] in rows
    assert ["by_queue", "Billing", "sla.compliance", "0.5"] in rows
    assert ["backlog", "2026-11-03", "active", "3"] in rows
    assert ["summary", "all", "sla.compliance", "0.5"] in rows
    assert ["by_agent", "anna", "sla.compliance", ""] in rows
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    assert buf.getvalue().count("\n") == len(rows)

    console = Console(width=120, record=True, color_system=None)
    console.print(render_text(r))
    text = console.export_text()
    assert "First-contact resolution" in text and "71.4%" in text
    assert "anna" in text and "Billing" in text and "4.00 (2)" in text


def test_percentile_and_stats() -> None:
    assert percentile([], 90) is None
    assert percentile([5.0], 90) == 5.0
    # n = 10: rank ceil(9.0) = 9 -> the 9th value.
    assert percentile([float(i) for i in range(1, 11)], 90) == 9.0
    # n = 11: rank ceil(9.9) = 10.
    assert percentile([float(i) for i in range(1, 12)], 90) == 10.0
    assert stats(DurationStats.of([3.0, 1.0, 2.0])) == (3, 2.0, 2.0, 3.0)
    assert stats(DurationStats.of([])) == (0, None, None, None)


def test_sparkline_and_bars() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""
    assert sparkline([None, 4]) == " █"
    lines = bars([("a", 4), ("bb", 2), ("c", 0)], width=4)
    assert lines == ["a  ████ 4", "bb ██   2", "c       0"]
    # eighth-cell resolution: 1 of 8 over width 1 -> one eighth block
    assert bars([("x", 8), ("y", 1)], width=1) == ["x █ 8", "y ▏ 1"]
    assert bars([], 10) == []


async def test_narrow_period_reads_by_index(service: Service, clock: FakeClock) -> None:
    # One hour out of the dataset's three and a half days: the SQLite reads take the
    # created/solved indexes instead of a plain scan; the figures must not change.
    await build_dataset(service, clock)
    r = await build_report(service.db, ReportFilter(at(3, 10), at(3, 11), None, None), now=NOW)
    # Created Tue 10:00-11:00: none (T6 is 11:00, outside). Solved: T3 at 10:00.
    assert r.overall.created == 0 and r.overall.solved == 1
    assert stats(r.overall.resolution) == (1, 24.0, 24.0, 24.0)
    # Active at 11:00: T4 (reopened at 09:00, solved again at 12:00) and T5.
    assert r.backlog == [(TUE, 2)] and r.overall.backlog == 2
    r = await build_report(service.db, ReportFilter(at(2, 13), at(2, 14), None, None), now=NOW)
    assert r.overall.created == 1 and r.created_per_hour[13] == 1  # T4
    assert r.overall.first_response.median == 0.5


async def test_reopen_and_csat_reads_use_the_partial_indexes(sqlite_url: str) -> None:
    # The report spells the partial indexes' conditions literally; if the texts ever drift
    # apart, SQLite would read the whole audit log again (a million-row store: seconds).
    from sqlalchemy import text

    from store.engine import Database
    from store.migrate import upgrade
    from store.models import CSAT_WHERE, REOPEN_WHERE

    db = Database(sqlite_url)
    try:
        await upgrade(db)
        async with db.read() as s:
            for sql, index in (
                (
                    f"SELECT ticket_id FROM audit_events WHERE {REOPEN_WHERE} "
                    "AND created_at >= '2026-01-01'",
                    "ix_audit_events_reopens",
                ),
                (
                    f"SELECT ticket_id FROM audit_events WHERE {CSAT_WHERE} "
                    "AND created_at >= '2026-01-01' AND created_at < '2027-01-01'",
                    "ix_audit_events_csat",
                ),
            ):
                plan = " ".join(
                    str(r[-1]) for r in await s.execute(text("EXPLAIN QUERY PLAN " + sql))
                )
                assert index in plan, plan
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    "flt",
    [
        ReportFilter(SINCE, UNTIL, None, None),
        ReportFilter(SINCE, UNTIL, "Support", None),
        ReportFilter(SINCE, UNTIL, None, "anna"),
    ],
    ids=["all", "queue", "agent"],
)
@pytest.mark.parametrize("business", [False, True], ids=["wall", "business"])
async def test_cohort_reads_come_from_the_epoch_indexes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, flt: ReportFilter, business: bool
) -> None:
    # The reads of the created and solved tickets (a million rows for a year) must be
    # answered by migration 0007's covering indexes, with the epoch times read from the
    # index: if reports.py's time expression ever drifts from the migration's, SQLite
    # parses every date again (seconds on a million tickets) and this fails.
    from store import reports
    from store.engine import Database
    from store.migrate import upgrade

    db = Database(sqlite_url)
    try:
        await upgrade(db)
        svc = Service(db, clock=FakeClock(at(2, 8)))
        await svc.add_queue("Support")
        await svc.add_agent("anna", "Anna")
        await build_report(db, ReportFilter(SINCE, UNTIL, None, None), now=NOW)  # a warm-up
        seen: list[tuple[str, list[object]]] = []
        fetch = reports._fetch

        async def recording(conn, stmt, index=None):  # type: ignore[no-untyped-def]
            if index is not None:
                sql, params = reports._driver_sql(stmt, conn.dialect)
                seen.append((reports._indexed_by(sql, index), params))
            return await fetch(conn, stmt, index)

        monkeypatch.setattr(reports, "_fetch", recording)
        calendar = bt.Calendar.build(timezone="UTC", hours="mon-fri 09:00-17:00")
        await build_report(db, flt, now=NOW, calendar=calendar if business else None)
        assert len(seen) == 3  # created, solved, first-contact resolution
        async with db.read() as s:
            raw = (await (await s.connection()).get_raw_connection()).driver_connection
            for sql, params in seen:
                plan = " ".join(
                    str(r[-1])
                    for r in await raw.execute_fetchall("EXPLAIN QUERY PLAN " + sql, params)
                )
                assert "USING COVERING INDEX ix_tickets_report_" in plan, plan
                ops = await raw.execute_fetchall("EXPLAIN " + sql, params)
                parsed = [r for r in ops if r[1] == "Function" and "julianday" in str(r[5])]
                assert parsed == [], sql
    finally:
        await db.dispose()


async def test_survey_mail_after_the_solve_keeps_first_contact_resolution(
    service: Service, clock: FakeClock
) -> None:
    """A satisfaction survey and the customer's rating come after the solve: T1 (solved Mon
    12:00 after one reply) stays a first-contact resolution."""
    n = await build_dataset(service, clock)
    t1 = await service.get_ticket(n["T1"])
    async with service.db.write() as s:
        for kind, when in ((ArticleKind.EMAIL_OUT, at(2, 13)), (ArticleKind.EMAIL_IN, at(2, 14))):
            s.add(Article(ticket_id=t1.id, kind=kind.value, body_text="survey", created_at=when))
    r = await build_report(service.db, PERIOD, now=NOW)
    assert (r.overall.fcr.count, r.overall.fcr.base) == (5, 7)
    # Mail between the first reply and the solve still breaks it (T2), as before.
    assert by_key(r.by_agent)["anna"].fcr.count == 2


async def test_text_report_shows_names_as_text_not_markup(service: Service) -> None:
    clock_now = NOW
    await service.add_queue("[bold]Evil[/bold] Q")
    await service.create_ticket(
        MAIL,
        subject="x",
        customer_email="c@customer.example",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body="help"),
        queue="[bold]Evil[/bold] Q",
    )
    r = await build_report(service.db, ReportFilter(SINCE, UNTIL, None, None), now=clock_now)
    console = Console(width=200, record=True, color_system=None)
    console.print(render_text(r))
    assert "[bold]Evil[/bold] Q" in console.export_text()
