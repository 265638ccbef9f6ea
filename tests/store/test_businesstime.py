"""Business-time arithmetic against hand-computed expectations."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from store import businesstime as bt
from store.businesstime import Calendar, add_business_time, business_time_between

H = timedelta(hours=1)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


OFFICE = Calendar.build(timezone="UTC", hours="mon-fri 09:00-17:00")
RIGA = Calendar.build(timezone="Europe/Riga", hours="mon-fri 09:00-17:00", country="LV")


def test_over_a_weekend() -> None:
    # Fri 6 Nov 2026 15:00: 2h left on Friday, 2h more on Monday.
    assert add_business_time(OFFICE, utc(2026, 11, 6, 15), 4 * H) == utc(2026, 11, 9, 11)
    assert business_time_between(OFFICE, utc(2026, 11, 6, 16), utc(2026, 11, 9, 10)) == 2 * H
    # Starting on Saturday counts from Monday 09:00.
    assert add_business_time(OFFICE, utc(2026, 11, 7, 12), 30 * timedelta(minutes=1)) == utc(
        2026, 11, 9, 9, 30
    )


def test_ending_exactly_at_close_stays_on_that_day() -> None:
    assert add_business_time(OFFICE, utc(2026, 11, 6, 13), 4 * H) == utc(2026, 11, 6, 17)


def test_zero_duration_and_negative_between() -> None:
    sat = utc(2026, 11, 7, 12)
    assert add_business_time(OFFICE, sat, timedelta(0)) == sat
    assert business_time_between(OFFICE, utc(2026, 11, 9, 10), utc(2026, 11, 9, 9)) == -H
    assert business_time_between(OFFICE, sat, sat + 5 * H) == timedelta(0)


def test_latvian_proclamation_day_is_skipped() -> None:
    # Tue 17 Nov 2026 15:00 Riga (EET, UTC+2) + 4h: 2h Tuesday, Wednesday 18 Nov is
    # Proclamation Day, 2h Thursday -> Thu 19 Nov 11:00 Riga = 09:00 UTC.
    assert RIGA.is_holiday(date(2026, 11, 18))
    assert "Proclamation" in (RIGA.holiday_name(date(2026, 11, 18)) or "")
    assert add_business_time(RIGA, utc(2026, 11, 17, 13), 4 * H) == utc(2026, 11, 19, 9)
    assert business_time_between(RIGA, utc(2026, 11, 17, 7), utc(2026, 11, 19, 15)) == 16 * H


def test_christmas_in_riga_spans_several_holidays() -> None:
    # Wed 23 Dec 2026 16:00 Riga + 2h: 1h Wed; 24, 25 (Thu, Fri) holidays, weekend,
    # Mon 28 Dec 10:00 Riga = 08:00 UTC.
    assert add_business_time(RIGA, utc(2026, 12, 23, 14), 2 * H) == utc(2026, 12, 28, 8)


def test_hand_added_holiday() -> None:
    cal = Calendar.build(timezone="UTC", hours="mon-fri 09:00-17:00", holidays=["2026-11-09"])
    assert add_business_time(cal, utc(2026, 11, 6, 15), 4 * H) == utc(2026, 11, 10, 11)


def test_riga_spring_forward() -> None:
    # Last Sunday of March 2026 is 29 Mar: Riga goes from UTC+2 to UTC+3.
    # Fri 27 Mar 16:00 EET (14:00 UTC) + 4h: 1h Friday, 3h Monday -> Mon 30 Mar 12:00 EEST
    # = 09:00 UTC (a fixed-offset calculation would say 10:00 UTC).
    assert add_business_time(RIGA, utc(2026, 3, 27, 14), 4 * H) == utc(2026, 3, 30, 9)
    assert business_time_between(RIGA, utc(2026, 3, 27, 14), utc(2026, 3, 30, 9)) == 4 * H


def test_riga_fall_back() -> None:
    # Last Sunday of October 2026 is 25 Oct: UTC+3 -> UTC+2.
    # Fri 23 Oct 16:00 EEST (13:00 UTC) + 4h -> Mon 26 Oct 12:00 EET = 10:00 UTC.
    assert add_business_time(RIGA, utc(2026, 10, 23, 13), 4 * H) == utc(2026, 10, 26, 10)


def test_new_york_dst_days_have_23_and_25_hours() -> None:
    always = Calendar.build(timezone="America/New_York", hours="24/7")
    # 8 Mar 2026 (second Sunday of March) has 23 hours in New York, 1 Nov 2026 has 25.
    assert business_time_between(always, utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)) == 23 * H
    assert business_time_between(always, utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)) == 25 * H
    # 24/7 business time is simply elapsed time, across the change.
    assert add_business_time(always, utc(2026, 3, 7, 12), 48 * H) == utc(2026, 3, 9, 12)
    office = Calendar.build(timezone="America/New_York", hours="mon-fri 09:00-17:00")
    # Fri 6 Mar 16:00 EST (21:00 UTC) + 2h -> Mon 9 Mar 10:00 EDT = 14:00 UTC.
    assert add_business_time(office, utc(2026, 3, 6, 21), 2 * H) == utc(2026, 3, 9, 14)


def test_several_intervals_a_day_and_saturday() -> None:
    cal = Calendar.build(timezone="UTC", hours="mon-fri 08:00-12:00,13:00-17:00; sat 10:00-12:00")
    assert add_business_time(cal, utc(2026, 11, 2, 11), 2 * H) == utc(2026, 11, 2, 14)
    # Fri 16:00 + 3h: 1h Fri, 2h Sat 10-12 -> Sat 12:00.
    assert add_business_time(cal, utc(2026, 11, 6, 16), 3 * H) == utc(2026, 11, 7, 12)
    assert business_time_between(cal, utc(2026, 11, 2, 0), utc(2026, 11, 3, 0)) == 8 * H


def test_add_and_between_are_inverse() -> None:
    rng = random.Random(7)
    for cal in (
        OFFICE,
        RIGA,
        Calendar.build(timezone="America/New_York", hours="mon-sat 07:30-19:15"),
    ):
        for _ in range(300):
            start = utc(2026, 1, 1) + timedelta(minutes=rng.randrange(0, 60 * 24 * 730))
            dur = timedelta(minutes=rng.randrange(1, 60 * 200))
            due = add_business_time(cal, start, dur)
            assert due > start
            assert business_time_between(cal, start, due) == dur


def test_far_future_and_microseconds() -> None:
    start = utc(2026, 11, 6, 16, 59, 59, 999999)
    assert add_business_time(OFFICE, start, timedelta(microseconds=2)) == utc(
        2026, 11, 9, 9, 0, 0, 1
    )
    # A long target runs across a year boundary the timeline has not built yet.
    due = add_business_time(OFFICE, utc(2026, 12, 1, 9), 8 * H * 300)
    assert business_time_between(OFFICE, utc(2026, 12, 1, 9), due) == 8 * H * 300


def test_hours_parsing_and_round_trip() -> None:
    week = bt.parse_hours("mon-fri 09:00-17:00; sat 10:00-14:00")
    assert week[0] == ((540, 1020),) and week[5] == ((600, 840),) and week[6] == ()
    assert bt.hours_from_json(bt.hours_to_json(week)) == week
    assert bt.format_hours(week) == "mon-fri 09:00-17:00; sat 10:00-14:00"
    assert bt.parse_hours("fri-mon 00:00-24:00")[6] == ((0, 1440),)
    for bad in ("mon 17:00-09:00", "mon 09:00-12:00,11:00-13:00", "funday 09:00-17:00", "", "mon"):
        with pytest.raises(bt.CalendarError):
            bt.parse_hours(bad)


def test_bad_calendars() -> None:
    with pytest.raises(bt.CalendarError, match="time zone"):
        Calendar.build(timezone="Mars/Olympus")
    with pytest.raises(bt.CalendarError, match="country"):
        Calendar.build(country="XX")
    never = Calendar.build(hours={})
    with pytest.raises(bt.CalendarError, match="no working hours"):
        add_business_time(never, utc(2026, 1, 1), H)
    with pytest.raises(ValueError, match="naive"):
        add_business_time(OFFICE, datetime(2026, 1, 1, 9), H)


ICS = (
    "BEGIN:VCALENDAR\r\n"
    "VERSION:2.0\r\n"
    "PRODID:-//Test//EN\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:1\r\n"
    "SUMMARY:Company day\r\n"
    "DTSTART;VALUE=DATE:20261109\r\n"
    "DTEND;VALUE=DATE:20261110\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:2\r\n"
    "SUMMARY:Summer break spanning\r\n"
    "  three days\r\n"
    "DTSTART;VALUE=DATE:20260727\r\n"
    "DTEND;VALUE=DATE:20260730\r\n"
    "BEGIN:VALARM\r\n"
    "DTSTART;VALUE=DATE:20200101\r\n"
    "END:VALARM\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:3\r\n"
    'SUMMARY;X-NOTE="a:b;c":No end given\r\n'
    "DTSTART:20261201\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:4\r\n"
    "SUMMARY:A meeting\r\n"
    "DTSTART:20261202T100000Z\r\n"
    "DTEND:20261202T110000Z\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:5\r\n"
    "SUMMARY:Called off\r\n"
    "STATUS:CANCELLED\r\n"
    "DTSTART;VALUE=DATE:20261203\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:6\r\n"
    "SUMMARY:Two days by duration\r\n"
    "DTSTART;VALUE=DATE:20261207\r\n"
    "DURATION:P2D\r\n"
    "END:VEVENT\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:7\r\n"
    "SUMMARY:Broken\r\n"
    "DTSTART;VALUE=DATE:2026-12-10\r\n"
    "END:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)


def test_ics_all_day_dates(tmp_path: Path) -> None:
    path = tmp_path / "holidays.ics"
    path.write_text(ICS, encoding="utf-8")
    result = bt.parse_ics(path)
    assert result.events == 7
    assert sorted(result.dates) == [
        date(2026, 7, 27),
        date(2026, 7, 28),
        date(2026, 7, 29),
        date(2026, 11, 9),
        date(2026, 12, 1),
        date(2026, 12, 7),
        date(2026, 12, 8),
    ]
    reasons = " | ".join(result.skipped)
    assert "A meeting: not an all-day event" in reasons
    assert "Called off: cancelled" in reasons
    assert "Broken" in reasons
    assert len(result.skipped) == 3
    cal = Calendar.build(timezone="UTC", holidays=result.dates)
    assert add_business_time(cal, utc(2026, 11, 6, 15), 4 * H) == utc(2026, 11, 10, 11)


def test_ics_recurring_is_reported() -> None:
    text = (
        "BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:Yearly\nDTSTART;VALUE=DATE:20260101\n"
        "RRULE:FREQ=YEARLY\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    result = bt.parse_ics(text)
    assert result.dates == {date(2026, 1, 1)}
    assert "recurring" in result.skipped[0]
