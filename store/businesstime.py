"""Business-time arithmetic: the ONE place that knows about working hours and holidays.

A `Calendar` is a time zone, working hours per weekday (several intervals a day allowed,
none crossing midnight; ``24:00`` ends a day) and holidays (public holidays from the
`holidays` package by country/subdivision, plus dates added by hand or imported from an
iCalendar file).

All inputs and outputs are timezone-aware datetimes (UTC in the store). Internally a
calendar is turned into a *timeline*: the sorted list of its working intervals as integer
microseconds since the epoch, with the cumulative business time before each. Adding
business time or measuring it between two moments is then two binary searches, exact to
the microsecond and correct across DST changes (an interval is placed by its local wall
times, so a 09:00-17:00 day is 8 real hours whatever the UTC offset; a 00:00-24:00 day on
the spring-forward Sunday is 23 real hours).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAY_NAMES",
    "Calendar",
    "CalendarError",
    "IcsResult",
    "add_business_time",
    "add_business_times",
    "business_time_between",
    "format_hours",
    "hours_from_json",
    "hours_to_json",
    "parse_hours",
    "parse_ics",
    "public_holidays",
]

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
#: How far add_business_time looks ahead before deciding the calendar never works.
_MAX_YEARS_AHEAD = 30

Interval = tuple[int, int]  # minutes from local midnight: start, end (end <= 1440)
WeekHours = tuple[tuple[Interval, ...], ...]  # 7 entries, Monday first


class CalendarError(ValueError):
    """A calendar that cannot be used (bad hours, time zone, country...)."""


# --- working hours ----------------------------------------------------------------------

_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def _minutes(text: str) -> int:
    m = _TIME_RE.match(text.strip())
    if not m:
        raise CalendarError(f"not a time of day: {text!r} (use HH:MM, e.g. 09:00)")
    h, mi = int(m.group(1)), int(m.group(2))
    if mi > 59 or h > 24 or (h == 24 and mi):
        raise CalendarError(f"not a time of day: {text!r}")
    return h * 60 + mi


def _fmt_minutes(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _normalise(intervals: Iterable[Interval], where: str) -> tuple[Interval, ...]:
    out = sorted(intervals)
    for s, e in out:
        if e <= s:
            raise CalendarError(
                f"{where}: {_fmt_minutes(s)}-{_fmt_minutes(e)} ends before it starts "
                "(hours crossing midnight are not supported; split them at 24:00)"
            )
    for (_s1, e1), (s2, _e2) in zip(out, out[1:], strict=False):
        if s2 < e1:
            raise CalendarError(f"{where}: working intervals overlap")
    return tuple(out)


def _day_index(name: str) -> int:
    key = name.strip().lower()[:3]
    if key not in DAY_NAMES:
        raise CalendarError(f"not a weekday: {name!r} (use mon, tue, ... sun)")
    return DAY_NAMES.index(key)


def parse_hours(spec: str) -> WeekHours:
    """Parse ``"mon-fri 09:00-17:00; sat 10:00-14:00"``.

    Groups are separated by ``;``; a group is days (``mon``, ``mon-fri``, ``mon,wed``) and
    one or more intervals separated by commas (``08:00-12:00,13:00-17:00``). ``24/7``
    means always. A day named twice gets the union of its intervals.
    """
    text = spec.strip().lower()
    if text in ("24/7", "always"):
        return tuple(((0, 1440),) for _ in DAY_NAMES)
    days: list[list[Interval]] = [[] for _ in DAY_NAMES]
    if not text:
        raise CalendarError("no working hours given (e.g. 'mon-fri 09:00-17:00')")
    for group in text.split(";"):
        group = group.strip()
        if not group:
            continue
        parts = group.split(None, 1)
        if len(parts) != 2:
            raise CalendarError(f"{group!r}: expected days then hours, e.g. 'mon-fri 09:00-17:00'")
        day_part, hours_part = parts
        chosen: list[int] = []
        for item in day_part.split(","):
            if "-" in item:
                a, b = item.split("-", 1)
                i, j = _day_index(a), _day_index(b)
                chosen.extend(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
            else:
                chosen.append(_day_index(item))
        for rng in hours_part.replace(" ", "").split(","):
            if not rng:
                continue
            if "-" not in rng:
                raise CalendarError(f"{rng!r}: expected a range like 09:00-17:00")
            a, b = rng.split("-", 1)
            for d in chosen:
                days[d].append((_minutes(a), _minutes(b)))
    return tuple(_normalise(d, DAY_NAMES[i]) for i, d in enumerate(days))


def hours_to_json(hours: WeekHours) -> dict[str, list[list[str]]]:
    """``{"mon": [["09:00", "17:00"]], ...}`` (days without hours are left out)."""
    return {
        DAY_NAMES[i]: [[_fmt_minutes(s), _fmt_minutes(e)] for s, e in day]
        for i, day in enumerate(hours)
        if day
    }


def hours_from_json(value: Mapping[str, Any]) -> WeekHours:
    """The inverse of `hours_to_json`."""
    days: list[list[Interval]] = [[] for _ in DAY_NAMES]
    for name, intervals in value.items():
        i = _day_index(name)
        for pair in intervals:
            a, b = pair
            days[i].append((_minutes(a), _minutes(b)))
    return tuple(_normalise(d, DAY_NAMES[i]) for i, d in enumerate(days))


def format_hours(hours: WeekHours) -> str:
    """A compact human form, e.g. ``mon-fri 09:00-17:00; sat 10:00-14:00``."""
    groups: list[tuple[int, int, tuple[Interval, ...]]] = []
    for i, day in enumerate(hours):
        if groups and groups[-1][2] == day and groups[-1][1] == i - 1:
            groups[-1] = (groups[-1][0], i, day)
        else:
            groups.append((i, i, day))
    out = []
    for a, b, day in groups:
        if not day:
            continue
        days = DAY_NAMES[a] if a == b else f"{DAY_NAMES[a]}-{DAY_NAMES[b]}"
        out.append(f"{days} " + ",".join(f"{_fmt_minutes(s)}-{_fmt_minutes(e)}" for s, e in day))
    return "; ".join(out) or "(no working hours)"


# --- holidays ---------------------------------------------------------------------------


@lru_cache(maxsize=256)
def public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    """Public holidays of a country (and subdivision) in a year, from `holidays`."""
    import holidays  # imported lazily: a large package, not needed without a country

    try:
        found = holidays.country_holidays(country.upper(), subdiv=subdivision, years=year)
    except NotImplementedError as exc:
        raise CalendarError(
            f"unknown country/subdivision {country!r}/{subdivision!r} for holidays: {exc}"
        ) from None
    return frozenset(found.keys())


# --- the calendar -----------------------------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    """Working hours in a time zone, minus holidays. Immutable and hashable."""

    timezone: str = "UTC"
    hours: WeekHours = field(default_factory=lambda: parse_hours("mon-fri 09:00-17:00"))
    country: str | None = None
    subdivision: str | None = None
    extra_holidays: frozenset[date] = frozenset()
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.hours) != 7:
            raise CalendarError("working hours need an entry for each of the 7 weekdays")
        _zone(self.timezone)  # validates the zone name early

    @property
    def tz(self) -> tzinfo:
        return _zone(self.timezone)

    @classmethod
    def build(
        cls,
        *,
        timezone: str = "UTC",
        hours: str | Mapping[str, Any] | WeekHours = "mon-fri 09:00-17:00",
        country: str | None = None,
        subdivision: str | None = None,
        holidays: Iterable[date | str] = (),
        name: str = "",
    ) -> Calendar:
        """A calendar from friendly values: hours as text or JSON, holidays as ISO dates."""
        if isinstance(hours, str):
            week = parse_hours(hours)
        elif isinstance(hours, Mapping):
            week = hours_from_json(hours)
        else:
            week = tuple(tuple(day) for day in hours)
        extra = frozenset(d if isinstance(d, date) else date.fromisoformat(d) for d in holidays)
        cal = cls(
            timezone=timezone,
            hours=week,
            country=country.upper() if country else None,
            subdivision=subdivision or None,
            extra_holidays=extra,
            name=name,
        )
        if cal.country:
            public_holidays(cal.country, cal.subdivision, 2026)  # validates the codes
        return cal

    def is_holiday(self, day: date) -> bool:
        if day in self.extra_holidays:
            return True
        return bool(self.country) and day in public_holidays(
            self.country or "", self.subdivision, day.year
        )

    def holiday_name(self, day: date) -> str | None:
        """What the holiday on `day` is called (None on a normal day)."""
        if self.country:
            import holidays

            found = holidays.country_holidays(self.country, subdiv=self.subdivision, years=day.year)
            if day in found:
                return str(found.get(day))
        return "holiday (added)" if day in self.extra_holidays else None

    def is_working_day(self, day: date) -> bool:
        return bool(self.hours[day.weekday()]) and not self.is_holiday(day)

    def describe(self) -> str:
        parts = [format_hours(self.hours), self.timezone]
        if self.country:
            parts.append(
                "holidays " + self.country + (f"-{self.subdivision}" if self.subdivision else "")
            )
        if self.extra_holidays:
            parts.append(f"{len(self.extra_holidays)} added holiday(s)")
        return ", ".join(parts)


@lru_cache(maxsize=128)
def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"unknown time zone {name!r} (e.g. Europe/Riga, UTC)") from None


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to business-time arithmetic; use aware UTC")
    return (moment - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class _Timeline:
    """A calendar's working intervals over a span of local years, with prefix sums."""

    def __init__(self, cal: Calendar) -> None:
        self.cal = cal
        self.first_year = 0
        self.last_year = -1
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.cum: list[int] = []  # business time before interval i
        self.cum_end: list[int] = []  # business time at the end of interval i
        self.safe_lo = 0  # moments in [safe_lo, safe_hi) need no rebuild
        self.safe_hi = 0

    def _build(self, first: int, last: int) -> None:
        cal, tz = self.cal, self.cal.tz
        starts: list[int] = []
        ends: list[int] = []
        day = date(first, 1, 1)
        stop = date(last, 12, 31)
        one = timedelta(days=1)
        while day <= stop:
            todays = cal.hours[day.weekday()]
            if todays and not cal.is_holiday(day):
                midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
                for s, e in todays:
                    # Wall-clock arithmetic on an aware datetime, then to UTC via _to_us.
                    a = _to_us(midnight + timedelta(minutes=s))
                    b = _to_us(midnight + timedelta(minutes=e))
                    if b > a:
                        starts.append(a)
                        ends.append(b)
            day += one
        cum: list[int] = []
        cum_end: list[int] = []
        total = 0
        for a, b in zip(starts, ends, strict=True):
            cum.append(total)
            total += b - a
            cum_end.append(total)
        self.first_year, self.last_year = first, last
        # A year of margin either side (local years; 2 days of slack for the UTC offset).
        self.safe_lo = _to_us(datetime(first + 1, 1, 1, tzinfo=UTC)) + 2 * 86_400_000_000
        self.safe_hi = _to_us(datetime(last, 1, 1, tzinfo=UTC)) - 2 * 86_400_000_000
        self.starts, self.ends, self.cum, self.cum_end = starts, ends, cum, cum_end

    def cover(self, us: int) -> None:
        """Make sure the local year of `us` (and one either side) is in the timeline."""
        if self.safe_lo <= us < self.safe_hi:
            return
        year = _from_us(us).astimezone(self.cal.tz).year
        if self.first_year < year < self.last_year:
            return
        first = year - 1 if self.last_year < self.first_year else min(self.first_year, year - 1)
        last = year + 1 if self.last_year < self.first_year else max(self.last_year, year + 1)
        self._build(first, last)

    def extend(self) -> None:
        self._build(self.first_year, self.last_year + 2)

    def business_at(self, us: int) -> int:
        """Business time from the timeline's start up to `us` (covered by the caller)."""
        i = bisect_right(self.starts, us) - 1
        if i < 0:
            return 0
        return self.cum[i] + min(us, self.ends[i]) - self.starts[i]

    def moment_at(self, business: int) -> int | None:
        """The first moment at which `business` time has been worked (None: beyond range)."""
        j = bisect_left(self.cum_end, business)
        if j >= len(self.cum_end):
            return None
        return self.starts[j] + (business - self.cum[j])


@lru_cache(maxsize=64)
def _shared_timeline(cal: Calendar) -> _Timeline:
    if not any(cal.hours):
        raise CalendarError(f"calendar {cal.name or cal.timezone!r} has no working hours")
    return _Timeline(cal)


def _timeline(cal: Calendar) -> _Timeline:
    """The calendar's timeline, memoised on the (immutable) calendar object itself: hashing
    a calendar for the shared cache costs more than the arithmetic it looks up."""
    tl: _Timeline | None = cal.__dict__.get("_timeline")
    if tl is None:
        tl = _shared_timeline(cal)
        object.__setattr__(cal, "_timeline", tl)
    return tl


def add_business_time(cal: Calendar, start: datetime, duration: timedelta) -> datetime:
    """The moment `duration` of business time after `start` (UTC in, UTC out).

    A duration of zero (or less) returns `start` unchanged. When the duration runs out
    exactly at the end of a working interval, that end is returned (Friday 17:00, not
    Monday 09:00).
    """
    if duration <= timedelta(0):
        return start.astimezone(UTC)
    return add_business_times(cal, start, (duration,))[0]


def add_business_times(
    cal: Calendar, start: datetime, durations: Sequence[timedelta]
) -> list[datetime]:
    """`add_business_time` for several durations from the same `start` at once (one
    lookup of `start` on the timeline; the SLA engine's due and warning times)."""
    tl = _timeline(cal)
    s = _to_us(start)
    tl.cover(s)
    base = tl.business_at(s)
    out: list[datetime] = []
    for duration in durations:
        if duration <= timedelta(0):
            out.append(start.astimezone(UTC))
            continue
        want = base + duration // _US
        for _ in range(_MAX_YEARS_AHEAD // 2 + 1):
            found = tl.moment_at(want)
            if found is not None:
                out.append(_from_us(found))
                break
            tl.extend()
        else:
            raise CalendarError(
                f"calendar {cal.name or cal.timezone!r} has no working time within "
                f"{_MAX_YEARS_AHEAD} years of {start:%Y-%m-%d}"
            )
    return out


def business_time_between(cal: Calendar, a: datetime, b: datetime) -> timedelta:
    """Business time from `a` to `b` (negative when `b` is before `a`)."""
    if b < a:
        return -business_time_between(cal, b, a)
    tl = _timeline(cal)
    ua, ub = _to_us(a), _to_us(b)
    tl.cover(ua)
    tl.cover(ub)
    return timedelta(microseconds=tl.business_at(ub) - tl.business_at(ua))


# --- iCalendar import -------------------------------------------------------------------


@dataclass
class IcsResult:
    """What an .ics file gave: all-day dates, and what was skipped and why."""

    dates: set[date] = field(default_factory=set)
    events: int = 0
    skipped: list[str] = field(default_factory=list)


_MAX_EVENT_DAYS = 366
_DURATION_RE = re.compile(r"^\+?P(?:(\d+)W)?(?:(\d+)D)?(?:T.*)?$")


def _unfold(text: str) -> list[str]:
    """RFC 5545 3.1: a line starting with a space or tab continues the previous one."""
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += raw[1:]
        elif raw.strip():
            lines.append(raw)
    return lines


def _split_property(line: str) -> tuple[str, dict[str, str], str] | None:
    """``NAME;PARAM=V;P2="a:b":VALUE`` -> (NAME, params, VALUE); colons in quotes are kept."""
    in_quotes = False
    for i, c in enumerate(line):
        if c == '"':
            in_quotes = not in_quotes
        elif c == ":" and not in_quotes:
            head, value = line[:i], line[i + 1 :]
            break
    else:
        return None
    parts: list[str] = []
    buf, in_quotes = "", False
    for c in head:
        if c == '"':
            in_quotes = not in_quotes
        if c == ";" and not in_quotes:
            parts.append(buf)
            buf = ""
        else:
            buf += c
    parts.append(buf)
    params: dict[str, str] = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        params[k.strip().upper()] = v.strip().strip('"')
    return parts[0].strip().upper(), params, value.strip()


def _ics_date(value: str, params: Mapping[str, str]) -> date | None:
    """An all-day DATE value, or None for a DATE-TIME (a timed event)."""
    if params.get("VALUE", "").upper() == "DATE-TIME" or "T" in value.upper():
        return None
    if not re.fullmatch(r"\d{8}", value):
        raise ValueError(f"not an iCalendar date: {value!r}")
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def parse_ics(source: str | Path) -> IcsResult:
    """All-day dates of the VEVENTs in an iCalendar file (path) or text.

    DTSTART/DTEND with DATE values (DTEND exclusive; no DTEND means one day; DURATION
    in days/weeks is honoured). Timed events, cancelled events and broken events are
    skipped with a reason; recurring events (RRULE) contribute their first date only and
    are reported, since expanding rules is out of scope.
    """
    text = (
        Path(source).read_text(encoding="utf-8-sig", errors="replace")
        if isinstance(source, Path)
        else source
    )
    result = IcsResult()
    event: dict[str, tuple[dict[str, str], str]] | None = None
    depth = 0  # nested components inside a VEVENT (VALARM)
    for lineno, line in enumerate(_unfold(text), start=1):
        prop = _split_property(line)
        if prop is None:
            continue
        name, params, value = prop
        if name == "BEGIN":
            if value.upper() == "VEVENT" and event is None:
                event = {}
            elif event is not None:
                depth += 1
            continue
        if name == "END":
            if event is not None and depth:
                depth -= 1
            elif event is not None and value.upper() == "VEVENT":
                result.events += 1
                _take_event(event, result, lineno)
                event = None
            continue
        if event is not None and not depth and name not in event:
            event[name] = (params, value)
    return result


def _take_event(
    event: Mapping[str, tuple[dict[str, str], str]], result: IcsResult, lineno: int
) -> None:
    summary = event.get("SUMMARY", ({}, ""))[1] or f"event ending on line {lineno}"
    if event.get("STATUS", ({}, ""))[1].upper() == "CANCELLED":
        result.skipped.append(f"{summary}: cancelled")
        return
    if "DTSTART" not in event:
        result.skipped.append(f"{summary}: no DTSTART")
        return
    try:
        start = _ics_date(event["DTSTART"][1], event["DTSTART"][0])
        if start is None:
            result.skipped.append(f"{summary}: not an all-day event")
            return
        end: date | None = None
        if "DTEND" in event:
            end = _ics_date(event["DTEND"][1], event["DTEND"][0])
            if end is None:
                result.skipped.append(f"{summary}: DTEND is not a date")
                return
        elif "DURATION" in event:
            m = _DURATION_RE.match(event["DURATION"][1].upper())
            if not m:
                raise ValueError(f"unsupported DURATION {event['DURATION'][1]!r}")
            days = int(m.group(1) or 0) * 7 + int(m.group(2) or 0)
            end = start + timedelta(days=max(days, 1))
        if end is None or end <= start:
            end = start + timedelta(days=1)
    except ValueError as exc:
        result.skipped.append(f"{summary}: {exc}")
        return
    span = (end - start).days
    if span > _MAX_EVENT_DAYS:
        result.skipped.append(f"{summary}: spans {span} days (more than a year)")
        return
    if "RRULE" in event:
        result.skipped.append(f"{summary}: recurring (RRULE); only {start.isoformat()} imported")
    for i in range(span):
        result.dates.add(start + timedelta(days=i))


def dates_from(values: Sequence[str]) -> list[date]:
    """ISO dates from text, with a clear error for a bad one."""
    out = []
    for v in values:
        try:
            out.append(date.fromisoformat(v.strip()))
        except ValueError:
            raise CalendarError(f"not a date: {v!r} (use YYYY-MM-DD)") from None
    return out
