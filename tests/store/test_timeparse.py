from datetime import UTC, datetime, timedelta

import pytest

from store.timeparse import parse_future, parse_moment, parse_offset

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_relative_and_absolute_times() -> None:
    assert parse_offset("90min") == timedelta(minutes=90)
    assert parse_offset("+2d") == timedelta(days=2)
    assert parse_offset("2026-12-01") is None
    assert parse_moment("1w", NOW) == NOW + timedelta(weeks=1)
    # A date in the past is fine for `since`-style options, not for postponing.
    assert parse_moment("2026-01-01T00:00+00:00", NOW) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="in the past"):
        parse_future("2026-01-01T00:00+00:00", NOW)


@pytest.mark.parametrize("bad", ["2m", "3mo", "soon", ""])
def test_unreadable_times_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(ValueError, match=r"90min|min, h, d or w"):
        parse_moment(bad, NOW)
