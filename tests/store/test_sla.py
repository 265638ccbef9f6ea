"""SLA policies and clocks on a real store (SQLite and PostgreSQL), hand-computed times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, text

from store import sla
from store.models import ArticleKind, Priority, Status, Ticket
from store.service import Actor, ArticleInput, Service
from store.sla_models import TicketSla, sla_condition
from tests.conftest import FakeClock

AGENT = Actor("agent", "alice")
CUSTOMER = Actor("mail", "sync")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


async def recompute(service: Service, number: int) -> sla.SlaResult | None:
    async with service.db.write() as s:
        t = (await s.execute(select(Ticket).where(Ticket.number == number))).unique().scalar_one()
        return await sla.recompute_ticket(s, t, service.clock())


async def state(service: Service, number: int) -> tuple[Ticket, TicketSla | None]:
    async with service.db.read() as s:
        t = (await s.execute(select(Ticket).where(Ticket.number == number))).unique().scalar_one()
        return t, await s.get(TicketSla, t.id)


async def matching(service: Service, value: str) -> set[int]:
    async with service.db.read() as s:
        cond = sla_condition(value, service.clock())
        return set((await s.execute(select(Ticket.number).where(cond))).scalars())


async def new_ticket(service: Service, **kw: object) -> int:
    t = await service.create_ticket(CUSTOMER, subject="help", customer_email="c@x.com", **kw)  # type: ignore[arg-type]
    await recompute(service, t.number)
    return t.number


async def office(service: Service, **kw: object) -> None:
    await sla.add_calendar(service.db, "office", timezone="UTC", hours="mon-fri 09:00-17:00")
    targets = kw.pop("targets", None) or sla.parse_targets(
        first_response="urgent=1h,normal=4h", resolution="urgent=2h,normal=8h"
    )
    await sla.add_policy(service.db, "default", calendar="office", targets=targets, **kw)  # type: ignore[arg-type]


async def test_no_policy_costs_nothing(service: Service) -> None:
    n = await new_ticket(service)
    assert await recompute(service, n) is None
    t, row = await state(service, n)
    assert t.next_due_at is None and row is None


async def test_due_times_across_a_weekend(service: Service, clock: FakeClock) -> None:
    await office(service)
    clock.now = utc(2026, 11, 6, 15)  # Friday 15:00
    n = await new_ticket(service)
    t, row = await state(service, n)
    assert row is not None
    assert row.first_response_due == utc(2026, 11, 9, 11)  # 2h Fri + 2h Mon
    assert row.resolution_due == utc(2026, 11, 9, 15)  # 2h Fri + 6h Mon
    assert t.next_due_at == utc(2026, 11, 9, 11)


async def test_latvian_holiday_and_dst(service: Service, clock: FakeClock) -> None:
    await sla.add_calendar(
        service.db, "riga", timezone="Europe/Riga", hours="mon-fri 09:00-17:00", country="LV"
    )
    await sla.add_policy(
        service.db, "lv", calendar="riga", targets=sla.parse_targets(first_response="4h")
    )
    clock.now = utc(2026, 11, 17, 13)  # Tue 15:00 in Riga; Wed 18 Nov is Proclamation Day
    n = await new_ticket(service)
    assert (await state(service, n))[1].first_response_due == utc(2026, 11, 19, 9)  # type: ignore[union-attr]
    clock.now = utc(2026, 3, 27, 14)  # Fri 16:00 EET; Riga moves to EEST on Sun 29 Mar
    n = await new_ticket(service)
    # 1h Friday + 3h Monday = Mon 30 Mar 12:00 EEST = 09:00 UTC
    assert (await state(service, n))[0].next_due_at == utc(2026, 3, 30, 9)


async def test_pending_pauses_and_extends(service: Service, clock: FakeClock) -> None:
    await office(service)
    n = await new_ticket(service)  # Mon 2 Nov 09:00
    clock.now = utc(2026, 11, 2, 10)
    await service.update_ticket(AGENT, n, status=Status.PENDING)
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None and t.next_due_at is None
    assert row.paused_since == utc(2026, 11, 2, 10) and row.paused_status == "pending"
    assert row.resolution_due is None
    clock.now = utc(2026, 11, 2, 11)
    assert n in await matching(service, "paused")
    clock.now = utc(2026, 11, 2, 12)  # the customer answers after 2h
    await service.update_ticket(AGENT, n, status=Status.OPEN)
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None and row.paused_since is None
    assert row.first_response_due == utc(2026, 11, 2, 15)  # 13:00 + 2h paused
    assert row.resolution_due == utc(2026, 11, 3, 11)  # 17:00 + 2h -> Tue 11:00
    assert t.next_due_at == utc(2026, 11, 2, 15)
    lines = "\n".join(await sla.explain(service.db, n, clock.now))
    assert "Policy 'default' applies" in lines
    assert "paused Mon 2026-11-02 10:00 UTC .. Mon 2026-11-02 12:00 UTC (pending): +2h" in lines


async def test_priority_change_switches_targets(service: Service, clock: FakeClock) -> None:
    await office(service)
    n = await new_ticket(service)
    assert (await state(service, n))[1].resolution_due == utc(2026, 11, 2, 17)  # type: ignore[union-attr]
    clock.now = utc(2026, 11, 2, 10)
    await service.update_ticket(AGENT, n, priority=Priority.URGENT)
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None
    assert row.resolution_due == utc(2026, 11, 2, 11)  # urgent 2h from creation
    assert row.first_response_due == utc(2026, 11, 2, 10)
    assert t.next_due_at == utc(2026, 11, 2, 10)
    assert n in await matching(service, "breached")  # first response due now


async def test_first_matching_policy_applies(service: Service) -> None:
    await office(service)
    await sla.add_policy(
        service.db,
        "vip",
        calendar="office",
        condition="tag:vip",
        targets=sla.parse_targets(first_response="30m"),
        position=1,
    )
    names = [p.name for p, _ in await sla.list_policies(service.db)]
    assert names == ["vip", "default"]
    vip = await new_ticket(service, tags=["vip"])
    plain = await new_ticket(service)
    assert (await state(service, vip))[1].first_response_due == utc(2026, 11, 2, 9, 30)  # type: ignore[union-attr]
    assert (await state(service, plain))[1].first_response_due == utc(2026, 11, 2, 13)  # type: ignore[union-attr]
    await sla.remove_policy(service.db, "vip")
    await recompute(service, vip)
    assert (await state(service, vip))[1].first_response_due == utc(2026, 11, 2, 13)  # type: ignore[union-attr]


async def test_on_hold_pauses_only_when_configured(service: Service, clock: FakeClock) -> None:
    await office(service)
    await sla.add_policy(
        service.db,
        "supplier",
        calendar="office",
        condition="tag:supplier",
        targets=sla.parse_targets(resolution="8h"),
        pause_on_hold=True,
        position=1,
    )
    keeps = await new_ticket(service)
    pauses = await new_ticket(service, tags=["supplier"])
    clock.now = utc(2026, 11, 2, 10)
    for n in (keeps, pauses):
        await service.update_ticket(AGENT, n, status=Status.ON_HOLD)
        await recompute(service, n)
    clock.now = utc(2026, 11, 2, 13)
    for n in (keeps, pauses):
        await service.update_ticket(AGENT, n, status=Status.OPEN)
        await recompute(service, n)
    assert (await state(service, keeps))[1].resolution_due == utc(2026, 11, 2, 17)  # type: ignore[union-attr]
    assert (await state(service, pauses))[1].resolution_due == utc(2026, 11, 3, 12)  # type: ignore[union-attr]


async def test_postponed_never_pauses(service: Service, clock: FakeClock) -> None:
    await office(service)
    n = await new_ticket(service)
    clock.now = utc(2026, 11, 2, 10)
    await service.update_ticket(AGENT, n, postpone_until=utc(2026, 11, 3, 9))
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None and row.paused_since is None
    assert t.next_due_at == utc(2026, 11, 2, 13)


async def test_warning_and_breach(service: Service, clock: FakeClock) -> None:
    await office(service, targets={"normal": {"resolution": 600}})  # 10 business hours
    n = await new_ticket(service)  # Mon 09:00: due Tue 11:00, warning (2h left) Mon 17:00
    t, row = await state(service, n)
    assert row is not None and t.next_due_at == utc(2026, 11, 3, 11)
    assert row.warning_at == utc(2026, 11, 2, 17)
    clock.now = utc(2026, 11, 2, 16, 59)
    assert await matching(service, "warning") == set()
    assert await matching(service, "running") == {n}
    clock.now = utc(2026, 11, 3, 9, 30)
    assert await matching(service, "warning") == {n}
    assert await matching(service, "due<2h") == {n}
    assert await matching(service, "due<=1h") == set()
    assert await matching(service, "breached") == set()
    clock.now = utc(2026, 11, 3, 11)
    assert await matching(service, "breached") == {n}  # before any recompute
    assert await matching(service, "warning") == set()
    stats = await sla.recompute_all(service.db, clock.now)
    assert stats.newly_breached == [(await state(service, n))[0].id]
    t, row = await state(service, n)
    assert row is not None and row.breached and row.resolution_breached
    lines = "\n".join(await sla.explain(service.db, n, clock.now))
    assert "BREACHED" in lines
    with pytest.raises(ValueError):
        sla_condition("soon", clock.now)


async def test_next_response_and_met_clocks(service: Service, clock: FakeClock) -> None:
    await office(
        service,
        targets=sla.parse_targets(first_response="1h", next_response="2h", resolution="8h"),
    )
    n = await new_ticket(service)
    clock.now = utc(2026, 11, 2, 9, 30)
    await service.add_reply(AGENT, n, "On it", status=Status.ANSWERED)
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None and row.first_response_due == utc(2026, 11, 2, 10)
    assert not row.first_response_breached and row.next_response_due is None
    assert t.next_due_at == utc(2026, 11, 2, 17)  # only resolution runs now
    clock.now = utc(2026, 11, 2, 16)
    await service.add_customer_message(
        CUSTOMER, n, ArticleInput(kind=ArticleKind.EMAIL_IN, body="still broken")
    )
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None and row.next_response_due == utc(2026, 11, 3, 10)  # 1h Mon + 1h Tue
    assert t.next_due_at == utc(2026, 11, 2, 17)
    clock.now = utc(2026, 11, 3, 11)
    await service.add_reply(AGENT, n, "Fixed", status=Status.SOLVED)
    await recompute(service, n)
    t, row = await state(service, n)
    assert row is not None and row.next_response_breached and row.resolution_breached
    assert t.next_due_at is None  # solved: nothing runs


async def test_recompute_all_in_batches(service: Service, clock: FakeClock) -> None:
    numbers = [
        (await service.create_ticket(CUSTOMER, subject="x", customer_email="c@x.com")).number
        for _ in range(7)
    ]
    await service.update_ticket(AGENT, numbers[0], status=Status.SOLVED)
    await office(service)
    stats = await sla.recompute_all(service.db, clock.now, batch=2)
    assert stats.tickets == 6 and stats.changed == 6
    for n in numbers[1:]:
        assert (await state(service, n))[0].next_due_at == utc(2026, 11, 2, 13)
    assert (await state(service, numbers[0]))[0].next_due_at is None
    again = await sla.recompute_all(service.db, clock.now, batch=2)
    assert again.tickets == 6 and again.changed == 0
    await sla.remove_policy(service.db, "default")
    await sla.recompute_all(service.db, clock.now)
    assert (await state(service, numbers[1]))[0].next_due_at is None


async def test_calendar_crud_and_ics(service: Service, clock: FakeClock, tmp_path: Path) -> None:
    await office(service)
    with pytest.raises(sla.SlaError, match="exists"):
        await sla.add_calendar(service.db, "Office")
    with pytest.raises(sla.SlaError, match="time zone"):
        await sla.add_calendar(service.db, "mars", timezone="Mars/Base")
    with pytest.raises(sla.SlaError, match="used by"):
        await sla.remove_calendar(service.db, "office")
    with pytest.raises(sla.SlaError, match="condition"):
        await sla.add_policy(
            service.db,
            "bad",
            calendar="office",
            condition='tag:"x',
            targets={"low": {"resolution": 5}},
        )
    ics = tmp_path / "h.ics"
    ics.write_text(
        "BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:Off\nDTSTART;VALUE=DATE:20261102\n"
        "DTEND;VALUE=DATE:20261103\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    result = await sla.import_ics(service.db, "office", ics)
    assert len(result.dates) == 1
    n = await new_ticket(service)  # Monday 2 Nov is now a holiday: due Tue 13:00
    assert (await state(service, n))[0].next_due_at == utc(2026, 11, 3, 13)
    await sla.remove_holidays(service.db, "office", ["2026-11-02"])
    await recompute(service, n)
    assert (await state(service, n))[0].next_due_at == utc(2026, 11, 2, 13)
    cals = await sla.list_calendars(service.db)
    assert [c.name for c in cals] == ["office"]
    policy, cal = await sla.get_policy(service.db, "DEFAULT")
    assert cal.name == "office"
    assert sla.format_targets(policy.targets)[0] == "urgent: first response 1h, resolution 2h"


def test_parse_targets() -> None:
    assert sla.parse_targets(first_response="urgent=30m,high=1h30m", resolution="2h") == {
        "urgent": {"first_response": 30, "resolution": 120},
        "high": {"first_response": 90, "resolution": 120},
        "normal": {"resolution": 120},
        "low": {"resolution": 120},
    }
    with pytest.raises(sla.SlaError, match="8h"):
        sla.parse_duration("1d")
    with pytest.raises(sla.SlaError):
        sla.parse_targets(first_response="asap=1h")
    assert timedelta(minutes=sla.parse_duration("1.5h")) == timedelta(hours=1, minutes=30)


async def test_recompute_all_applies_conditions_per_ticket(
    service: Service, clock: FakeClock
) -> None:
    # recompute_all matches each condition once per run for all active tickets: tagged
    # tickets on both sides of a batch boundary get the VIP policy, the others the default.
    await office(service)
    await sla.add_policy(
        service.db,
        "vip",
        calendar="office",
        condition="tag:vip",
        targets=sla.parse_targets(first_response="30m"),
        position=1,
    )
    numbers = [await new_ticket(service, **({"tags": ["vip"]} if i % 2 else {})) for i in range(5)]
    async with service.db.write() as s:  # forget what the hooks computed
        await s.execute(delete(TicketSla))
    stats = await sla.recompute_all(service.db, clock.now, batch=2)
    assert stats.tickets == 5 and stats.changed == 5
    for i, n in enumerate(numbers):
        due = (await state(service, n))[1].first_response_due  # type: ignore[union-attr]
        assert due == (utc(2026, 11, 2, 9, 30) if i % 2 else utc(2026, 11, 2, 13)), i


async def _sla_rows(service: Service) -> list[tuple[object, ...]]:
    """The stored values as the database holds them (on SQLite: the text of datetimes and
    JSON, which queries such as ``sla:due<2h`` compare)."""
    async with service.db.read() as s:
        rows = (await s.execute(text("SELECT * FROM ticket_sla ORDER BY ticket_id"))).all()
        dues = (await s.execute(text("SELECT id, next_due_at FROM tickets ORDER BY id"))).all()
        return [tuple(r) for r in rows] + [tuple(d) for d in dues]


async def test_bulk_recompute_paths_agree(
    service: Service, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `recompute_all` writes through the driver on SQLite (tuples, stored forms compared)
    # and through the ORM on PostgreSQL; both must leave the very same rows, pauses,
    # breaches and explanations, starting from what the per-ticket hooks left.
    await sla.add_calendar(
        service.db, "riga", timezone="Europe/Riga", hours="mon-fri 09:00-17:00", country="LV"
    )
    await sla.add_policy(
        service.db,
        'Kunde "VIP" ā',  # quotes and non-ASCII reach the stored explanation JSON
        calendar="riga",
        condition="tag:vip",
        pause_on_hold=True,
        targets=sla.parse_targets(first_response="1h", next_response="2h", resolution="8h"),
    )
    await office(
        service,
        targets=sla.parse_targets(first_response="4h", next_response="3h", resolution="16h"),
    )
    clock.now = utc(2026, 11, 13, 15, 30)  # Friday; 18 Nov (Monday after) is a holiday in LV
    plain = await new_ticket(service)
    vip = await new_ticket(service, tags=["vip"])
    waiting = await new_ticket(service)
    held = await new_ticket(service, tags=["vip"])
    replied = await new_ticket(service)
    clock.now = utc(2026, 11, 13, 16, 10, 30, 250)
    await service.update_ticket(AGENT, waiting, status=Status.PENDING)
    await service.update_ticket(AGENT, held, status=Status.ON_HOLD)
    await service.add_reply(AGENT, replied, "Try this", status=Status.ANSWERED)
    clock.now = utc(2026, 11, 16, 10)
    await service.add_customer_message(
        CUSTOMER, replied, ArticleInput(kind=ArticleKind.EMAIL_IN, body="no luck")
    )
    await service.update_ticket(AGENT, held, status=Status.OPEN)
    start = await _sla_rows(service)
    async with service.db.read() as s:
        saved = [
            {c.key: getattr(r, c.key) for c in TicketSla.__table__.columns}
            for r in (await s.execute(select(TicketSla))).scalars().all()
        ]

    async def run(
        driver: bool | None, worker: bool | None = None
    ) -> list[list[tuple[object, ...]]]:
        async with service.db.write() as s:  # back to what the hooks left
            await s.execute(delete(TicketSla))
            await s.execute(insert(TicketSla), saved)
        out = []
        for now in (utc(2026, 11, 16, 11), utc(2026, 11, 19, 12), utc(2026, 11, 19, 12)):
            await sla.recompute_all(service.db, now, batch=3, driver=driver, worker=worker)
            out.append(await _sla_rows(service))
        return out

    orm = await run(False)
    default = await run(None)
    assert default == orm
    monkeypatch.setattr(sla, "_WRITE_CHUNK", 1)  # SQLite: writes overlapping the computing
    assert await run(None) == orm
    # SQLite: part of each batch computed in a worker process (as on large stores)
    assert await run(None, worker=True) == orm
    assert orm[0] != start and orm[1] != orm[0] and orm[2] == orm[1]
    async with service.db.read() as s:
        rows = {r.ticket_id: r for r in (await s.execute(select(TicketSla))).scalars().all()}
        ids = dict(
            (await s.execute(select(Ticket.number, Ticket.id))).all()  # type: ignore[arg-type]
        )
    assert rows[ids[waiting]].paused_status == "pending"
    assert rows[ids[held]].pauses[0]["status"] == "on-hold"
    assert rows[ids[vip]].explanation["policy"] == 'Kunde "VIP" ā'
    assert rows[ids[replied]].next_response_due is not None
    assert rows[ids[plain]].explanation["policy"] == "default"
    # the explanation text the driver path writes is json.dumps of the explanation
    policies = {p.name: p for p in await _policy_infos(service)}
    facts = sla.Facts(
        id=1,
        status="open",
        priority=1,
        created_at=utc(2026, 11, 13, 15, 30, 0, 7),
        first_response_at=None,
        solved_at=None,
        last_customer_at=utc(2026, 11, 13, 15, 30),
    )
    pauses = [
        {
            "from": "2026-11-13T16:00:00+00:00",
            "until": "2026-11-16T09:30:00+00:00",
            "status": "on-hold",
        },
        {"from": "2026-11-16T10:00:00.000250+00:00", "until": None, "status": "on-hold"},
    ]
    for policy in policies.values():
        for now in (utc(2026, 11, 16, 11), utc(2026, 11, 30)):
            result = sla.compute(policy, facts, pauses, now)
            assert result.explanation_json() == json.dumps(result.explanation())
    assert sla.compute(None, facts, [], clock.now).explanation_json() == '{"policy": null}'


async def _policy_infos(service: Service) -> list[sla.PolicyInfo]:
    async with service.db.read() as s:
        return await sla._policies(s)
