"""Ticket lifecycle rules: allowed transitions, meta-statuses, priority by impact x urgency."""

from __future__ import annotations

from collections.abc import Mapping

from store.labels import DEFAULT_LABELS as DEFAULT_LABELS  # re-exported
from store.models import Level, Priority, Status

S = Status

#: Allowed manual transitions. `merged` is reached only by merging; `closed` is final
#: (a customer reply to a closed ticket opens a new, linked ticket).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.NEW: frozenset({S.OPEN, S.ANSWERED, S.PENDING, S.ON_HOLD, S.POSTPONED, S.SOLVED, S.CLOSED}),
    S.OPEN: frozenset({S.ANSWERED, S.PENDING, S.ON_HOLD, S.POSTPONED, S.SOLVED, S.CLOSED}),
    S.ANSWERED: frozenset({S.OPEN, S.PENDING, S.ON_HOLD, S.POSTPONED, S.SOLVED, S.CLOSED}),
    S.PENDING: frozenset({S.OPEN, S.ANSWERED, S.ON_HOLD, S.POSTPONED, S.SOLVED, S.CLOSED}),
    S.ON_HOLD: frozenset({S.OPEN, S.ANSWERED, S.PENDING, S.POSTPONED, S.SOLVED, S.CLOSED}),
    S.POSTPONED: frozenset({S.OPEN, S.ANSWERED, S.PENDING, S.ON_HOLD, S.SOLVED, S.CLOSED}),
    S.SOLVED: frozenset({S.OPEN, S.CLOSED}),
    S.CLOSED: frozenset(),
    S.MERGED: frozenset(),
}

#: States a customer's reply moves back to `open`.
REOPENED_BY_CUSTOMER: frozenset[Status] = frozenset(
    {S.NEW, S.ANSWERED, S.PENDING, S.ON_HOLD, S.POSTPONED, S.SOLVED}
)


L, P = Level, Priority

#: ITIL-style default: rows are impact, columns urgency.
DEFAULT_MATRIX: dict[tuple[Level, Level], Priority] = {
    (L.HIGH, L.HIGH): P.URGENT,
    (L.HIGH, L.MEDIUM): P.HIGH,
    (L.HIGH, L.LOW): P.NORMAL,
    (L.MEDIUM, L.HIGH): P.HIGH,
    (L.MEDIUM, L.MEDIUM): P.NORMAL,
    (L.MEDIUM, L.LOW): P.LOW,
    (L.LOW, L.HIGH): P.NORMAL,
    (L.LOW, L.MEDIUM): P.LOW,
    (L.LOW, L.LOW): P.LOW,
}


class TransitionError(ValueError):
    """A status change the lifecycle does not allow."""


def parse_status(value: str) -> Status:
    """A status from its name (case-insensitive, `on_hold`/`onhold` accepted)."""
    v = value.strip().lower().replace("_", "-")
    if v == "onhold":
        v = "on-hold"
    try:
        return Status(v)
    except ValueError:
        names = ", ".join(s.value for s in Status if s is not S.MERGED)
        raise ValueError(f"unknown status {value!r}; expected one of: {names}") from None


def parse_priority(value: str) -> Priority:
    """A priority from its name or number."""
    v = value.strip().lower()
    for p in Priority:
        if v in (p.label, str(int(p))):
            return p
    raise ValueError(f"unknown priority {value!r}; expected low, normal, high or urgent")


def parse_level(value: str, what: str = "level") -> Level:
    """Impact or urgency from low/medium/high."""
    v = value.strip().lower()
    aliases = {"med": "medium", "mid": "medium"}
    v = aliases.get(v, v)
    for lv in Level:
        if v in (lv.label, str(int(lv))):
            return lv
    raise ValueError(f"unknown {what} {value!r}; expected low, medium or high")


def check_transition(current: Status, target: Status) -> None:
    """Raise TransitionError unless `current -> target` is allowed."""
    if current == target:
        return
    if target is S.MERGED:
        raise TransitionError("a ticket becomes merged only by merging it into another")
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (final state)"
        raise TransitionError(
            f"cannot change status from {current.value} to {target.value}; allowed: {allowed}"
        )


def matrix_from_setting(value: object) -> dict[tuple[Level, Level], Priority]:
    """Read a matrix stored as {"high/low": "normal", ...}; missing cells use the default."""
    matrix = dict(DEFAULT_MATRIX)
    if isinstance(value, Mapping):
        for key, prio in value.items():
            imp, _, urg = str(key).partition("/")
            matrix[(parse_level(imp, "impact"), parse_level(urg, "urgency"))] = parse_priority(
                str(prio)
            )
    return matrix


def matrix_to_setting(matrix: Mapping[tuple[Level, Level], Priority]) -> dict[str, str]:
    """The storable form of a matrix."""
    return {f"{i.label}/{u.label}": p.label for (i, u), p in matrix.items()}


def derive_priority(
    impact: Level, urgency: Level, matrix: Mapping[tuple[Level, Level], Priority] | None = None
) -> Priority:
    """The priority the matrix gives for an impact and an urgency."""
    return (matrix or DEFAULT_MATRIX)[(impact, urgency)]
