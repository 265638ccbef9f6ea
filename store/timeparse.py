"""Times typed by people: `2d`, `3h`, `90min`, `1w`, `2026-12-01`, `2026-12-01T09:00`.

One reading for the console's postpone prompt and the CLI's `--postpone`/`--since` options.
A bare `m` is refused (minutes or months?). A time without a zone is the typist's local time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

#: Units a relative time may use.
UNITS = {"min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^\+?(\d+)\s*(min|h|d|w)$")
_AMBIGUOUS = re.compile(r"^\d+\s*(m|mo|months?|s|y)$")


def parse_offset(value: str) -> timedelta | None:
    """`3h` -> 3 hours; None when `value` is not a relative time."""
    match = _RELATIVE.match(value.strip().lower())
    if match is None:
        return None
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])


def parse_moment(value: str, now: datetime) -> datetime:
    """A relative time (after `now`) or a date/time -> an aware UTC datetime.

    Raises ValueError naming what is accepted.
    """
    offset = parse_offset(value)
    if offset is not None:
        return now + offset
    if _AMBIGUOUS.match(value.strip().lower()):
        raise ValueError(f"{value!r}: use min, h, d or w (e.g. 90min, 3h, 2d, 1w) or a date")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"cannot read the time {value!r}; use e.g. 2d, 3h, 90min, 1w or 2026-12-01T09:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as typed
    return moment.astimezone(UTC)


def parse_future(value: str, now: datetime) -> datetime:
    """Like `parse_moment`, but the result must be after `now` (postponing, reminders)."""
    offset = parse_offset(value)
    if offset is not None and offset <= timedelta(0):
        raise ValueError("the time must be in the future")
    moment = parse_moment(value, now)
    if moment <= now:
        raise ValueError(f"{value!r} is in the past; the time must be in the future")
    return moment
