"""The ticket query language shared by the console filter bar, the CLI and saved views.

    status:open assignee:me tag:billing -tag:spam queue:"IT Support" priority:>=high
    from:@acme.com customer:alice@x.com created:<7d updated:2w.. is:unassigned "printer jam"

Grammar, informally:

* Terms are separated by white space and all must hold (AND).
* ``key:value`` filters; ``key:"quoted value"`` for values with spaces (``\\"`` and ``\\\\``
  escape inside quotes). Keys are case-insensitive.
* Repeating a key ORs its values: ``status:open status:pending`` is either. Comparisons
  (``<``, ``>``, ``<=``, ``>=``) and the ``is:`` / ``has:`` flags always narrow (AND):
  ``priority:>=normal priority:<urgent``, ``is:active is:unassigned``.
* ``-`` before a term negates it: ``-tag:spam``, ``-"out of office"``, ``-printer``.
* Bare words and ``"quoted phrases"`` are full-text search: each must match the ticket's
  subject or the body of one of its articles. ``print*`` matches by prefix.
* ``#1234`` is ticket number 1234.

`parse` turns text into a `Query` (raising `QueryError` with a 1-based column for any
mistake, never anything else); `compile_where` turns a `Query` into a SQLAlchemy boolean
expression over ``tickets`` for a given `QueryContext` (who "me" is, what "now" is, the
SQL dialect); `describe` explains the resolved date ranges; `tokens` gives highlight spans.
"""

from __future__ import annotations

import calendar
import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Subquery,
    and_,
    any_,
    column,
    exists,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    tablesample,
    text,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import visitors

from store.models import (
    ACTIVE_STATUSES,
    INACTIVE_STATUSES,
    Agent,
    Article,
    Attachment,
    Customer,
    CustomerEmail,
    Level,
    Organization,
    Priority,
    Queue,
    Status,
    Tag,
    Ticket,
    TicketTag,
)

__all__ = [
    "KEYS",
    "KeySpec",
    "Query",
    "QueryContext",
    "QueryError",
    "SearchSpec",
    "Term",
    "Token",
    "analyze",
    "compile_where",
    "count_matches",
    "describe",
    "estimate_matches",
    "parse",
    "plan_search",
    "rank_subquery",
    "search_specs",
    "search_sql",
    "tokens",
]

#: Longest query text accepted, and most terms in one query (keeps the SQL bounded).
MAX_QUERY_LENGTH = 2000
MAX_TERMS = 60


class QueryError(ValueError):
    """A query that cannot be understood; `position` is the 1-based column of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return self.message


# --- keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """One filter key, for `?` help and completion."""

    name: str
    summary: str
    example: str
    #: Other spellings accepted for the key.
    aliases: tuple[str, ...] = ()
    #: Fixed values offered for completion (free-text keys list only their special values).
    values: tuple[str, ...] = ()
    #: "enum", "flag", "ordinal", "number", "date" or "text".
    kind: str = "text"


_STATUS_VALUES = tuple(s.value for s in Status) + ("active", "inactive")
_IS_VALUES = (
    "active",
    "inactive",
    "unassigned",
    "assigned",
    "mine",
    "postponed",
    "overridden",
    "merged",
)
_HAS_VALUES = ("attachment",)
_PRIORITY_VALUES = tuple(p.label for p in Priority)
_LEVEL_VALUES = tuple(level.label for level in Level)
_DATE_VALUES = ("today", "yesterday", "<7d", ">30d", "2w..", "2026-01-01..2026-01-31")

KEYS: tuple[KeySpec, ...] = (
    KeySpec(
        "status",
        "ticket status; 'active' and 'inactive' stand for groups of statuses",
        "status:open status:pending",
        values=_STATUS_VALUES,
        kind="enum",
    ),
    KeySpec(
        "is",
        "a property: active, inactive, unassigned, assigned, mine, postponed, "
        "overridden (priority set by hand), merged",
        "is:unassigned",
        values=_IS_VALUES,
        kind="flag",
    ),
    KeySpec(
        "assignee",
        "the assigned agent's login; 'me' for you, 'none' for unassigned",
        "assignee:me",
        values=("me", "none"),
    ),
    KeySpec("queue", "queue name (any case)", 'queue:"IT Support"'),
    KeySpec("tag", "a tag on the ticket", "tag:billing -tag:spam"),
    KeySpec(
        "priority",
        "priority low/normal/high/urgent; compare with <, <=, >, >= or a range a..b",
        "priority:>=high",
        values=_PRIORITY_VALUES,
        kind="ordinal",
    ),
    KeySpec(
        "impact",
        "impact low/medium/high; comparisons as for priority",
        "impact:high",
        values=_LEVEL_VALUES,
        kind="ordinal",
    ),
    KeySpec(
        "urgency",
        "urgency low/medium/high; comparisons as for priority",
        "urgency:>=medium",
        values=_LEVEL_VALUES,
        kind="ordinal",
    ),
    KeySpec(
        "from",
        "the customer's address (any of theirs), or @domain for a whole domain",
        "from:@acme.com",
    ),
    KeySpec("customer", "part of the customer's name or address", "customer:alice"),
    KeySpec("org", "part of the organization's name", "org:acme", aliases=("organization",)),
    KeySpec("tier", "the organization's tier", "tier:vip"),
    KeySpec("lang", "the ticket's language code", "lang:de", aliases=("language",)),
    KeySpec("channel", "how the ticket came in (email, phone...)", "channel:phone"),
    KeySpec(
        "sla",
        "SLA state: breached, warning (under 20% left), paused, running, none, due<2h",
        "sla:warning",
        values=("breached", "warning", "paused", "running", "none", "due<2h"),
    ),
    KeySpec("type", "ticket type", "type:incident"),
    KeySpec(
        "number",
        "ticket number (also written #1234); comparisons allowed",
        "number:1234",
        kind="number",
    ),
    KeySpec("subject", "text anywhere in the subject (plain substring)", "subject:invoice"),
    KeySpec(
        "created",
        "when the ticket was created: <7d (within 7 days), >7d (longer ago), 2w.. (since), "
        "..2026-01-31 (until the end of that day), a..b, a date, today, yesterday; "
        "units min h d w mo y",
        "created:<7d",
        values=_DATE_VALUES,
        kind="date",
    ),
    KeySpec(
        "updated",
        "when the ticket last changed (dates as for created)",
        "updated:2w..",
        values=_DATE_VALUES,
        kind="date",
    ),
    KeySpec(
        "solved",
        "when the ticket was solved (dates as for created)",
        "solved:yesterday",
        values=_DATE_VALUES,
        kind="date",
    ),
    KeySpec(
        "postponed",
        "when a postponed ticket comes back (dates as for created; +2d is two days ahead)",
        "postponed:..+2d",
        values=("today", "tomorrow", "..+2d", "<+1w"),
        kind="date",
    ),
    KeySpec(
        "has",
        "has:attachment - some article has a file attached",
        "has:attachment",
        values=_HAS_VALUES,
        kind="flag",
    ),
)

_KEY_BY_NAME: dict[str, KeySpec] = {}
for _spec in KEYS:
    _KEY_BY_NAME[_spec.name] = _spec
    for _alias in _spec.aliases:
        _KEY_BY_NAME[_alias] = _spec

#: Keys whose positive "equal"/"range" terms OR together when repeated.
_AND_KEYS = frozenset({"is", "has"})
_DATE_COLUMNS = {
    "created": Ticket.created_at,
    "updated": Ticket.updated_at,
    "solved": Ticket.solved_at,
    "postponed": Ticket.postponed_until,
}


# --- AST --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One term of a query.

    `key` is the canonical key name, or ``"text"`` for full-text words and phrases.
    `op` is ``"="``, ``"<"``, ``"<="``, ``">"``, ``">="`` or ``".."`` (range; `value`
    keeps the whole ``a..b`` text) for filters, and ``"word"``, ``"prefix"`` or
    ``"phrase"`` for full text. `position` is the 1-based column where the term starts
    (at its ``-`` when negated), `value_position` where its value starts.
    """

    key: str
    op: str
    value: str
    negated: bool = False
    position: int = 1
    value_position: int = 1

    @property
    def is_text(self) -> bool:
        return self.key == "text"


@dataclass(frozen=True)
class Query:
    """A parsed query: the terms in the order written."""

    text: str
    terms: tuple[Term, ...] = ()

    @property
    def has_text(self) -> bool:
        """Whether there is a positive full-text term (so a relevance order makes sense)."""
        return any(t.is_text and not t.negated and _has_token(t.value) for t in self.terms)

    @property
    def is_empty(self) -> bool:
        return not self.terms

    def keys(self) -> set[str]:
        return {t.key for t in self.terms}


@dataclass
class QueryContext:
    """What a query is resolved against: who "me" is, the current time, the SQL dialect."""

    me_agent_id: int | None
    now: datetime
    dialect: str = "sqlite"
    #: Search terms (as FTS5 strings) known to match many tickets: see `analyze`. For these
    #: `compile_where` writes the probing SQL (the list is walked in its own order and each
    #: ticket checked) instead of collecting every match first. Empty is always correct;
    #: `store.listing` re-plans every search itself (`plan_search`).
    frequent_text: frozenset[str] = frozenset()


# --- lexing -----------------------------------------------------------------------------

_KEY_RE = re.compile(r"([A-Za-z][A-Za-z_]*):")
_HASH_RE = re.compile(r"#(\d+)")


@dataclass(frozen=True)
class _Raw:
    start: int  # 0-based, the '-' when negated
    end: int
    negated: bool
    key: str | None
    key_start: int
    value: str
    value_start: int  # 0-based, inside the quotes when quoted
    value_end: int
    quoted: bool


@dataclass(frozen=True)
class Token:
    """A span of the input for highlighting: ``text[start:end]`` (0-based, end exclusive).

    `kind` is one of ``negation``, ``key`` (with its colon), ``operator``, ``value``,
    ``number`` (``#1234``), ``word``, ``phrase`` or ``error`` (from the first problem to
    the end of the input).
    """

    kind: str
    start: int
    end: int


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted string whose opening quote is at `i`; returns (value, index after)."""
    buf: list[str] = []
    j, n = i + 1, len(text)
    while j < n:
        c = text[j]
        if c == "\\" and j + 1 < n and text[j + 1] in '"\\':
            buf.append(text[j + 1])
            j += 2
            continue
        if c == '"':
            return "".join(buf), j + 1
        buf.append(c)
        j += 1
    raise QueryError(f"unclosed quote at column {i + 1}", i + 1)


def _lex(text: str, out: list[_Raw]) -> None:
    """Split `text` into raw terms, appending to `out` (so a caller keeps partial results)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        start = i
        negated = False
        if c == "-" and i + 1 < n and not text[i + 1].isspace():
            negated = True
            i += 1
        if text[i] == '"':
            value, j = _read_quoted(text, i)
            out.append(_Raw(start, j, negated, None, i, value, i + 1, j - 1, True))
            i = j
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] != '"':
            j += 1
        word = text[i:j]
        m = _KEY_RE.match(word)
        if m and not word[m.end() :].startswith("//"):  # a URL is text, not key "http"
            key = m.group(1)
            vstart = i + m.end()
            if vstart == j and j < n and text[j] == '"':
                value, k = _read_quoted(text, j)
                out.append(_Raw(start, k, negated, key, i, value, j + 1, k - 1, True))
                i = k
                continue
            out.append(_Raw(start, j, negated, key, i, word[m.end() :], vstart, j, False))
        else:
            out.append(_Raw(start, j, negated, None, i, word, i, j, False))
        i = j


def tokens(text: str) -> list[Token]:
    """Highlight spans for `text`; never raises (a problem becomes an ``error`` span)."""
    raws: list[_Raw] = []
    error_at: int | None = None
    try:
        if len(text) > MAX_QUERY_LENGTH:
            raise QueryError("query too long", MAX_QUERY_LENGTH + 1)
        _lex(text, raws)
    except QueryError as exc:
        error_at = exc.position - 1
    out: list[Token] = []
    for raw in raws:
        if raw.negated:
            out.append(Token("negation", raw.start, raw.start + 1))
        if raw.key is not None:
            colon = raw.key_start + len(raw.key) + 1
            out.append(Token("key", raw.key_start, colon))
            value_start = colon
            if not raw.quoted:
                op_len = len(raw.value) - len(_split_op(raw.value)[1])
                if op_len and _KEY_BY_NAME.get(raw.key.lower(), KEYS[0]).kind in (
                    "ordinal",
                    "number",
                    "date",
                ):
                    out.append(Token("operator", colon, colon + op_len))
                    value_start = colon + op_len
            if raw.end > value_start:
                out.append(Token("value", value_start, raw.end))
        elif raw.quoted:
            out.append(Token("phrase", raw.key_start, raw.end))
        elif _HASH_RE.fullmatch(raw.value):
            out.append(Token("number", raw.key_start, raw.end))
        else:
            out.append(Token("word", raw.key_start, raw.end))
    if error_at is not None:
        out.append(Token("error", error_at, len(text)))
    return out


# --- parsing ----------------------------------------------------------------------------


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    best = _suggest(word, choices)
    if best is not None:
        return f"; did you mean '{best}'?"
    return f" (one of: {', '.join(choices)})" if len(choices) <= 12 else ""


def _split_op(value: str) -> tuple[str, str]:
    for op in ("<=", ">=", "<", ">", "="):
        if value.startswith(op):
            return op, value[len(op) :]
    return "=", value


def _has_token(text: str) -> bool:
    """Whether full-text search would see a word in `text` (letters or digits)."""
    return any(c.isalnum() for c in text)


def parse(text: str) -> Query:
    """Parse query text; raises `QueryError` (with a 1-based column) on any mistake."""
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(
            f"query too long ({len(text)} characters, at most {MAX_QUERY_LENGTH})",
            MAX_QUERY_LENGTH + 1,
        )
    raws: list[_Raw] = []
    _lex(text, raws)
    if len(raws) > MAX_TERMS:
        at = raws[MAX_TERMS].start + 1
        raise QueryError(f"too many terms (at most {MAX_TERMS}) at column {at}", at)
    return Query(text, tuple(_term(raw) for raw in raws))


def _term(raw: _Raw) -> Term:
    pos = raw.start + 1
    vpos = raw.value_start + 1
    if raw.key is None:
        if raw.quoted:
            return Term("text", "phrase", raw.value, raw.negated, pos, vpos)
        hashed = _HASH_RE.fullmatch(raw.value)
        if hashed:
            return Term("number", "=", hashed.group(1), raw.negated, pos, vpos + 1)
        if len(raw.value) > 1 and raw.value.endswith("*"):
            return Term("text", "prefix", raw.value.rstrip("*"), raw.negated, pos, vpos)
        return Term("text", "word", raw.value, raw.negated, pos, vpos)

    kpos = raw.key_start + 1
    spec = _KEY_BY_NAME.get(raw.key.lower())
    if spec is None:
        best = _suggest(raw.key, list(_KEY_BY_NAME))
        hint = (
            f"; did you mean '{best}'?"
            if best
            else " (type ? for the list of keys; put text with ':' in quotes to search for it)"
        )
        raise QueryError(f"unknown key '{raw.key}' at column {kpos}{hint}", kpos)
    key = spec.name
    value = raw.value if raw.quoted else raw.value.strip()
    if not value:
        raise QueryError(f"missing value for '{raw.key}:' at column {vpos}", vpos)

    if spec.kind in ("enum", "flag"):
        norm = value.lower().replace("_", "-")
        if key == "has" and norm == "attachments":
            norm = "attachment"
        if norm == "onhold":
            norm = "on-hold"
        if norm not in spec.values:
            noun = key if key == "status" else f"'{key}:' value"
            raise QueryError(
                f"unknown {noun} '{value}' at column {vpos}{_did_you_mean(norm, spec.values)}",
                vpos,
            )
        return Term(key, "=", norm, raw.negated, pos, vpos)

    if spec.kind in ("ordinal", "number", "date") and not raw.quoted:
        op, rest = _split_op(value)
        rest_pos = vpos + len(value) - len(rest)
        if op != "=" and not rest:
            raise QueryError(f"missing value after '{op}' at column {rest_pos}", rest_pos)
        if spec.kind == "ordinal":
            if op == "=" and ".." in rest:
                lo, _, hi = rest.partition("..")
                if not lo and not hi:
                    raise QueryError(f"empty range at column {rest_pos}", rest_pos)
                if lo:
                    _ordinal(key, lo, rest_pos)
                if hi:
                    _ordinal(key, hi, rest_pos + len(lo) + 2)
                return Term(key, "..", f"{lo.lower()}..{hi.lower()}", raw.negated, pos, vpos)
            _ordinal(key, rest, rest_pos)
            return Term(key, op, rest.lower(), raw.negated, pos, rest_pos)
        if spec.kind == "number":
            digits = rest[1:] if rest.startswith("#") else rest
            if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
                raise QueryError(
                    f"ticket number must be digits, not '{rest}' at column {rest_pos}", rest_pos
                )
            return Term(key, op, str(int(digits)), raw.negated, pos, rest_pos)
        # dates
        if op == "=" and ".." in rest:
            _date_spec(key, "..", rest, rest_pos)
            return Term(key, "..", rest.lower(), raw.negated, pos, rest_pos)
        _date_spec(key, op, rest, rest_pos)
        return Term(key, op, rest.lower(), raw.negated, pos, rest_pos)

    if spec.kind in ("ordinal", "number", "date"):  # quoted: no operators
        return _term(
            _Raw(
                raw.start,
                raw.end,
                raw.negated,
                raw.key,
                raw.key_start,
                value,
                raw.value_start,
                raw.value_end,
                False,
            )
        )

    if key == "from" and value.strip("@") == "":
        raise QueryError(f"'from:' wants an address or @domain at column {vpos}", vpos)
    return Term(key, "=", value, raw.negated, pos, vpos)


def _ordinal(key: str, name: str, pos: int) -> int:
    values = _PRIORITY_VALUES if key == "priority" else _LEVEL_VALUES
    norm = name.lower()
    if norm not in values:
        raise QueryError(
            f"unknown {key} '{name}' at column {pos}{_did_you_mean(norm, values)}", pos
        )
    return values.index(norm)  # enum value == position (0..n)


# --- dates ------------------------------------------------------------------------------

_UNITS = {
    "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "w": "w", "wk": "w", "wks": "w", "week": "w", "weeks": "w",
    "mo": "mo", "mon": "mo", "month": "mo", "months": "mo",
    "y": "y", "yr": "y", "yrs": "y", "year": "y", "years": "y",
}  # fmt: skip
_UNIT_DAYS = {"min": 1 / 1440, "h": 1 / 24, "d": 1, "w": 7, "mo": 31, "y": 366}
_MAX_DAYS = 200 * 366
_DURATION_RE = re.compile(r"(\+)?(\d+)([^\d]*)")
_DATE_RE = re.compile(r"(\d{4})-(\d{1,2})(?:-(\d{1,2}))?")
_NAMED_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}


@dataclass(frozen=True)
class _Bound:
    """One end of a date expression: a moment relative to now, or a calendar interval."""

    kind: str  # "ago", "ahead", "now", "day", "month", "named"
    amount: int = 0
    unit: str = ""
    day: date | None = None
    offset: int = 0  # named days: 0 today, -1 yesterday, 1 tomorrow

    @property
    def is_point(self) -> bool:
        return self.kind in ("ago", "ahead", "now")


@dataclass(frozen=True)
class _DateSpec:
    op: str  # "=", "<", "<=", ">", ">=", ".."
    low: _Bound | None
    high: _Bound | None = None


@dataclass(frozen=True)
class DateRange:
    """A resolved date condition: start/end (aware) with their inclusiveness; None = open."""

    start: datetime | None
    end: datetime | None
    start_inclusive: bool = True
    end_inclusive: bool = False


def _bound(text: str, pos: int) -> _Bound:
    s = text.strip().lower()
    if s == "now":
        return _Bound("now")
    if s in _NAMED_DAYS:
        return _Bound("named", offset=_NAMED_DAYS[s])
    m = _DATE_RE.fullmatch(s)
    if m:
        try:
            year, month = int(m.group(1)), int(m.group(2))
            if not 1900 <= year <= 9000:
                raise ValueError("year out of range")
            if m.group(3) is None:
                return _Bound("month", day=date(year, month, 1))
            return _Bound("day", day=date(year, month, int(m.group(3))))
        except ValueError:
            raise QueryError(f"invalid date '{text}' at column {pos}", pos) from None
    m = _DURATION_RE.fullmatch(s)
    if m:
        unit_text = m.group(3)
        unit_pos = pos + m.start(3)
        if not unit_text:
            raise QueryError(
                f"missing unit after '{m.group(2)}' at column {unit_pos}; "
                "use min, h, d, w, mo or y (e.g. 7d)",
                unit_pos,
            )
        if unit_text == "m":
            raise QueryError(
                f"ambiguous unit 'm' at column {unit_pos}; did you mean 'min' (minutes) "
                "or 'mo' (months)?",
                unit_pos,
            )
        unit = _UNITS.get(unit_text)
        if unit is None:
            best = _suggest(unit_text, list(_UNITS))
            hint = f"did you mean '{best}'?" if best else "use min, h, d, w, mo or y"
            raise QueryError(f"unknown unit '{unit_text}' at column {unit_pos}; {hint}", unit_pos)
        amount = int(m.group(2)) if len(m.group(2)) <= 9 else 10**9
        if amount * _UNIT_DAYS[unit] > _MAX_DAYS:
            raise QueryError(f"'{text}' is too far from now at column {pos}", pos)
        return _Bound("ahead" if m.group(1) else "ago", amount, unit)
    raise QueryError(
        f"invalid date '{text}' at column {pos}; use e.g. 7d, 2w, 2026-01-31, today", pos
    )


def _date_spec(key: str, op: str, value: str, pos: int) -> _DateSpec:
    if op != "..":
        return _DateSpec(op, _bound(value, pos))
    left, _, right = value.partition("..")
    if not left and not right:
        raise QueryError(f"empty date range at column {pos}; write e.g. 7d.. or ..2026-01-31", pos)
    low = _bound(left, pos) if left else None
    high = _bound(right, pos + len(left) + 2) if right else None
    return _DateSpec("..", low, high)


def _shift_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _shift(now: datetime, amount: int, unit: str) -> datetime:
    if unit == "mo":
        return _shift_months(now, amount)
    if unit == "y":
        return _shift_months(now, 12 * amount)
    minutes = {"min": 1, "h": 60, "d": 1440, "w": 10080}[unit]
    return now + timedelta(minutes=amount * minutes)


def _midnight(day: date, tz: tzinfo | None) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz or UTC)


def _interval(bound: _Bound, now: datetime) -> tuple[datetime, datetime]:
    """The [start, end) a bound covers; a point has start == end."""
    tz = now.tzinfo
    if bound.kind == "now":
        return now, now
    if bound.kind == "ago":
        point = _shift(now, -bound.amount, bound.unit)
        return point, point
    if bound.kind == "ahead":
        point = _shift(now, bound.amount, bound.unit)
        return point, point
    if bound.kind == "named":
        day = now.astimezone(tz).date() + timedelta(days=bound.offset)
        return _midnight(day, tz), _midnight(day + timedelta(days=1), tz)
    assert bound.day is not None
    if bound.kind == "month":
        first = _midnight(bound.day, tz)
        return first, _shift_months(first, 1)
    return _midnight(bound.day, tz), _midnight(bound.day + timedelta(days=1), tz)


def _end_of(bound: _Bound, now: datetime) -> tuple[datetime, bool]:
    """Where a range ending at `bound` ends: a point is included, an interval is not."""
    return _interval(bound, now)[1], bound.is_point


def resolve_dates(term: Term, now: datetime) -> DateRange:
    """The absolute range a date term (created/updated/solved/postponed) stands for."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    spec = _date_spec(term.key, term.op, term.value, term.value_position)
    if spec.op == "..":
        low, high = spec.low, spec.high
        if (
            low is not None
            and high is not None
            and _interval(low, now)[0] > _interval(high, now)[0]
        ):
            low, high = high, low  # written backwards (1w..2w): the same span, right way round
        start = _interval(low, now)[0] if low is not None else None
        end, end_inclusive = _end_of(high, now) if high is not None else (None, False)
        return DateRange(start, end, True, end_inclusive)
    assert spec.low is not None
    bound = spec.low
    lo, hi = _interval(bound, now)
    op = spec.op
    if bound.kind == "ago":
        # An age: "<7d" is less than 7 days ago, i.e. after that moment.
        op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
    if op == "=":
        if bound.kind == "ago":
            return DateRange(lo, None)  # "7d": within the last 7 days
        if bound.kind == "ahead":
            return DateRange(min(now, lo), max(now, lo), True, True)  # "+2d": from now to then
        if bound.kind == "now":
            return DateRange(now, now, True, True)
        return DateRange(lo, hi)
    if op == "<":
        return DateRange(None, lo, end_inclusive=False)
    if op == "<=":
        return DateRange(None, hi, end_inclusive=bound.is_point)
    if op == ">":
        return DateRange(hi, None, start_inclusive=not bound.is_point)
    return DateRange(lo, None)  # ">="


def _fmt_moment(moment: datetime, now: datetime) -> str:
    local = moment.astimezone(now.tzinfo or UTC)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or 'UTC'}"


def describe_range(key: str, rng: DateRange, now: datetime, negated: bool = False) -> str:
    """One line for a resolved range, e.g. ``created: 2026-11-16 09:00 UTC .. now``."""
    if rng.start is not None and rng.end is not None:
        if rng.start == rng.end:
            text = f"at {_fmt_moment(rng.start, now)}"
        else:
            text = f"{_fmt_moment(rng.start, now)} .. {_fmt_moment(rng.end, now)}"
    elif rng.start is not None:
        if key == "postponed":
            word = "from" if rng.start_inclusive else "after"
            text = f"{word} {_fmt_moment(rng.start, now)}"
        else:
            text = f"{_fmt_moment(rng.start, now)} .. now"
    elif rng.end is not None:
        word = "until" if rng.end_inclusive else "before"
        text = f"{word} {_fmt_moment(rng.end, now)}"
    else:  # pragma: no cover - every form bounds at least one side
        text = "any time"
    return f"{key}: {'not ' if negated else ''}{text}"


def describe(query: Query, ctx: QueryContext) -> list[str]:
    """The resolved absolute ranges of the query's date terms, one line each."""
    out = []
    for term in query.terms:
        if term.key in _DATE_COLUMNS:
            out.append(
                describe_range(term.key, resolve_dates(term, ctx.now), ctx.now, term.negated)
            )
    return out


# --- compiling --------------------------------------------------------------------------

#: The per-ticket search documents (see `store.search_index`).
_FTS = table("ticket_search", column("rowid", Integer))
_PG_SEARCH = table("ticket_search", column("ticket_id", Integer), column("tsv"))
_PG_SIMPLE = "'simple'::regconfig"
#: ts_rank weights {D, C, B, A}: the subject ('A') counts double the bodies ('D').
_PG_WEIGHTS = "'{0.5, 0.5, 0.5, 1.0}'::float4[]"
#: The annotation `compile_where` puts on each full-text condition, for `plan_search`.
SEARCH_ANNOTATION = "helpdesk_search"
_IntColumn = ColumnElement[int] | InstrumentedAttribute[int]


def _fts5_string(term: Term) -> str:
    """An FTS5 query for one term: the text as one FTS5 string (a phrase), never syntax."""
    quoted = '"' + term.value.replace('"', '""') + '"'
    return quoted + " *" if term.op == "prefix" else quoted


def _pg_tsquery(term: Term) -> ColumnElement[object]:
    if term.op == "prefix":
        words = re.findall(r"[^\W_]+", term.value.lower())
        text = " <-> ".join(f"'{w}'" for w in words) + ":*"
        return func.to_tsquery(literal_column(_PG_SIMPLE), literal(text))
    return func.phraseto_tsquery(literal_column(_PG_SIMPLE), literal(term.value))


def _fts5_match(terms: Sequence[Term]) -> str:
    """All `terms` ANDed as one FTS5 query (FTS5 intersects the document lists itself)."""
    return " ".join(_fts5_string(t) for t in terms)


def _pg_match(terms: Sequence[Term]) -> ColumnElement[object]:
    tsq = _pg_tsquery(terms[0])
    for t in terms[1:]:
        tsq = tsq.op("&&")(_pg_tsquery(t))
    return tsq


@dataclass(frozen=True)
class SearchSpec:
    """A full-text condition of a compiled WHERE: tickets whose document has all `terms`.

    `negated` when the WHERE keeps the tickets that do *not* match. `plan_search` reads
    these from the annotations to pick the SQL form of each.
    """

    terms: tuple[Term, ...]
    dialect: str
    negated: bool = False

    @property
    def match(self) -> str:
        """The FTS5 query text (SQLite), also the key used in `QueryContext.frequent_text`."""
        return _fts5_match(self.terms)


def search_sql(spec: SearchSpec, *, probe: bool) -> ColumnElement[bool]:
    """The SQL for `spec` (true for matching tickets), annotated for `plan_search`.

    ``probe=False`` ("collect"): ``tickets.id IN (every matching ticket)``; cheap when few
    tickets match, and then the matches are sorted. ``probe=True``: a correlated EXISTS
    that checks one ticket (one seek in the document lists per term); cheap per ticket, so
    right for common words while a list is walked in its index order and stops after one
    page.
    """
    if spec.dialect == "sqlite":
        matches = literal_column("ticket_search").op("MATCH", is_comparison=True)(
            literal(spec.match)
        )
        if probe:
            cond: ColumnElement[bool] = exists(
                select(literal(1)).select_from(_FTS).where(matches, _FTS.c.rowid == Ticket.id)
            )
        else:
            cond = Ticket.id.in_(select(_FTS.c.rowid).where(matches))
    else:
        tsv: ColumnElement[Any] = _PG_SEARCH.c.tsv
        matches = tsv.op("@@", is_comparison=True)(_pg_match(spec.terms))
        # PostgreSQL's estimate for a word is a flat guess (0.5% of rows), so it would walk
        # the list for a rare word (seconds) or collect for a common one. Both forms are
        # written so the planner cannot turn them into a join it chooses itself: OFFSET 0
        # keeps the EXISTS a per-row check, and ARRAY(...) collects once (an InitPlan)
        # and then fetches the matches by primary key.
        if probe:
            cond = exists(
                select(literal(1))
                .select_from(_PG_SEARCH)
                .where(_PG_SEARCH.c.ticket_id == Ticket.id, matches)
                .offset(0)
            )
        else:
            ids = select(_PG_SEARCH.c.ticket_id).where(matches).scalar_subquery()
            cond = Ticket.id == any_(func.array(ids))
    return cond._annotate({SEARCH_ANNOTATION: spec})


def _text_condition(term: Term, ctx: QueryContext) -> ColumnElement[bool] | None:
    """A negated search term (positive ones are combined by `compile_where`)."""
    if not _has_token(term.value):
        return None  # nothing a search index would see (punctuation only)
    spec = SearchSpec((term,), ctx.dialect, negated=term.negated)
    return search_sql(spec, probe=spec.match in ctx.frequent_text)


def _ordinal_condition(term: Term, col: _IntColumn) -> ColumnElement[bool]:
    if term.op == "..":
        lo, _, hi = term.value.partition("..")
        conds = []
        if lo:
            conds.append(col >= _ordinal(term.key, lo, term.value_position))
        if hi:
            conds.append(col <= _ordinal(term.key, hi, term.value_position))
        return and_(*conds)
    return _compare(col, term.op, _ordinal(term.key, term.value, term.value_position))


def _compare(col: _IntColumn, op: str, value: int) -> ColumnElement[bool]:
    ops: dict[str, Callable[[_IntColumn, int], ColumnElement[bool]]] = {
        "=": lambda c, v: c == v,
        "<": lambda c, v: c < v,
        "<=": lambda c, v: c <= v,
        ">": lambda c, v: c > v,
        ">=": lambda c, v: c >= v,
    }
    return ops[op](col, value)


def _date_condition(term: Term, ctx: QueryContext) -> ColumnElement[bool]:
    col = _DATE_COLUMNS[term.key]
    rng = resolve_dates(term, ctx.now)
    conds: list[ColumnElement[bool]] = []
    if rng.start is not None:
        conds.append(col >= rng.start if rng.start_inclusive else col > rng.start)
    if rng.end is not None:
        conds.append(col <= rng.end if rng.end_inclusive else col < rng.end)
    return and_(*conds) if conds else col.is_not(None)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _customer_ids_by_address(value: str) -> ColumnElement[bool]:
    v = value.strip().lower()
    if "@" in v and not v.startswith("@"):
        primary = select(Customer.id).where(Customer.email == v)
        other = select(CustomerEmail.customer_id).where(CustomerEmail.email == v)
    else:
        domain = _like_escape(v.lstrip("@"))
        at, sub = f"%@{domain}", f"%.{domain}"
        primary = select(Customer.id).where(
            or_(Customer.email.like(at, escape="\\"), Customer.email.like(sub, escape="\\"))
        )
        other = select(CustomerEmail.customer_id).where(
            or_(
                CustomerEmail.email.like(at, escape="\\"),
                CustomerEmail.email.like(sub, escape="\\"),
            )
        )
    return Ticket.customer_id.in_(union_all(primary, other))


def _is_condition(value: str, ctx: QueryContext) -> ColumnElement[bool]:
    if value == "active":
        return Ticket.status.in_(sorted(s.value for s in ACTIVE_STATUSES))
    if value == "inactive":
        return Ticket.status.in_(sorted(s.value for s in INACTIVE_STATUSES))
    if value == "unassigned":
        return Ticket.assignee_id.is_(None)
    if value == "assigned":
        return Ticket.assignee_id.is_not(None)
    if value == "mine":
        return false() if ctx.me_agent_id is None else Ticket.assignee_id == ctx.me_agent_id
    if value == "postponed":
        return or_(Ticket.status == Status.POSTPONED.value, Ticket.postponed_until > ctx.now)
    if value == "overridden":
        return Ticket.priority_override_by.is_not(None)
    if value == "merged":
        return or_(Ticket.status == Status.MERGED.value, Ticket.merged_into_id.is_not(None))
    raise QueryError(f"unknown 'is:' value '{value}'", 1)  # pragma: no cover - parse checks


def _term_condition(term: Term, ctx: QueryContext) -> ColumnElement[bool] | None:
    key, value = term.key, term.value
    if key == "text":
        return _text_condition(term, ctx)
    if key == "sla":
        from store.sla_models import sla_condition

        try:
            return sla_condition(value, ctx.now)
        except ValueError as exc:
            raise QueryError(
                f"{exc} at column {term.value_position}", term.value_position
            ) from None
    if key == "status":
        if value == "active":
            return _is_condition("active", ctx)
        if value == "inactive":
            return _is_condition("inactive", ctx)
        return Ticket.status == value
    if key == "is":
        return _is_condition(value, ctx)
    if key == "has":
        return exists().where(Article.ticket_id == Ticket.id, Attachment.article_id == Article.id)
    if key == "assignee":
        v = value.lower()
        if v == "none":
            return Ticket.assignee_id.is_(None)
        if v == "me":
            return false() if ctx.me_agent_id is None else Ticket.assignee_id == ctx.me_agent_id
        login_id = select(Agent.id).where(Agent.login == value).scalar_subquery()
        return Ticket.assignee_id == login_id
    if key == "queue":
        return Ticket.queue_id.in_(select(Queue.id).where(func.lower(Queue.name) == value.lower()))
    if key == "tag":
        return Ticket.id.in_(
            select(TicketTag.ticket_id).where(
                TicketTag.tag_id.in_(select(Tag.id).where(Tag.name == value.strip().lower()))
            )
        )
    if key == "priority":
        return _ordinal_condition(term, Ticket.priority)
    if key == "impact":
        return _ordinal_condition(term, Ticket.impact)
    if key == "urgency":
        return _ordinal_condition(term, Ticket.urgency)
    if key == "from":
        return _customer_ids_by_address(value)
    if key == "customer":
        pattern = f"%{_like_escape(value.lower())}%"
        return Ticket.customer_id.in_(
            union_all(
                select(Customer.id).where(
                    or_(
                        func.lower(Customer.name).like(pattern, escape="\\"),
                        Customer.email.like(pattern, escape="\\"),
                    )
                ),
                select(CustomerEmail.customer_id).where(
                    CustomerEmail.email.like(pattern, escape="\\")
                ),
            )
        )
    if key == "org":
        pattern = f"%{_like_escape(value.lower())}%"
        return Ticket.organization_id.in_(
            select(Organization.id).where(func.lower(Organization.name).like(pattern, escape="\\"))
        )
    if key == "tier":
        return Ticket.organization_id.in_(
            select(Organization.id).where(func.lower(Organization.tier) == value.lower())
        )
    if key == "lang":
        return func.lower(Ticket.language) == value.lower()
    if key == "channel":
        return func.lower(Ticket.channel) == value.lower()
    if key == "type":
        return func.lower(Ticket.type) == value.lower()
    if key == "number":
        return _compare(Ticket.number, term.op, int(value))
    if key == "subject":
        return Ticket.subject.icontains(value, autoescape=True)
    if key in _DATE_COLUMNS:
        return _date_condition(term, ctx)
    raise QueryError(f"unknown key '{key}' at column {term.position}", term.position)


def compile_where(query: Query, ctx: QueryContext) -> ColumnElement[bool]:
    """The query as a boolean SQL expression over ``tickets`` (no joins: subqueries only).

    Positive terms of one key OR together (``status:open status:pending``), except
    comparisons and ``is:``/``has:`` flags, which AND; negated terms and full-text words
    always AND. A negated term is NULL-safe: ``-assignee:alice`` keeps unassigned tickets.
    All positive full-text words and phrases become one search condition (each must
    occur in the ticket's subject or in one of its articles); `plan_search` may rewrite
    its SQL form, never its meaning.
    """
    groups: dict[str, list[ColumnElement[bool]]] = {}
    conds: list[ColumnElement[bool]] = []
    words: list[Term] = []
    for term in query.terms:
        if term.is_text and not term.negated:
            if _has_token(term.value):
                words.append(term)
            continue
        cond = _term_condition(term, ctx)
        if cond is None:
            continue
        if term.negated:
            conds.append(not_(func.coalesce(cond, false())))
        elif term.key in _AND_KEYS or term.op not in ("=", ".."):
            conds.append(cond)
        else:
            groups.setdefault(term.key, []).append(cond)
    if words:
        spec = SearchSpec(tuple(words), ctx.dialect)
        frequent = all(_fts5_string(t) in ctx.frequent_text for t in words)
        conds.insert(0, search_sql(spec, probe=frequent))
    for group in groups.values():
        conds.append(group[0] if len(group) == 1 else or_(*group))
    if not conds:
        return true()
    return conds[0] if len(conds) == 1 else and_(*conds)


#: A search matching at least this many tickets counts as frequent (see `plan_search`).
FREQUENT_MATCHES = 5000


async def count_matches(session: AsyncSession, spec: SearchSpec, cap: int) -> int:
    """How many tickets match `spec`'s words, counting no further than `cap`.

    Reads only the index's document lists and stops at `cap`: well under a millisecond
    for rare words, about a millisecond per 10,000 matches for common ones.
    """
    if spec.dialect == "sqlite":
        stmt = text(
            "SELECT count(*) FROM (SELECT 1 FROM ticket_search "
            "WHERE ticket_search MATCH :q LIMIT :cap)"
        ).bindparams(q=spec.match, cap=cap)
        return int((await session.execute(stmt)).scalar_one())
    tsv: ColumnElement[Any] = _PG_SEARCH.c.tsv
    hits = (
        select(literal(1))
        .select_from(_PG_SEARCH)
        .where(tsv.op("@@", is_comparison=True)(_pg_match(spec.terms)))
        .limit(cap)
        .subquery("hits")
    )
    return int((await session.execute(select(func.count()).select_from(hits))).scalar_one())


#: PostgreSQL: about how many search documents `estimate_matches` samples.
PG_SAMPLE = 2000


async def estimate_matches(session: AsyncSession, spec: SearchSpec, cap: int) -> int:
    """Roughly how many tickets match `spec` (exact up to `cap` on SQLite).

    SQLite counts in the FTS5 document lists (`count_matches`). On PostgreSQL that count
    needs a GIN bitmap of every match (20 ms at 100,000 matches, 100 ms at 500,000), so a
    large table is sampled instead: about `PG_SAMPLE` documents from random blocks
    (``TABLESAMPLE SYSTEM``, not the newest tickets: a word that only recent tickets
    have would look common there), and the share that match is scaled to the table.
    """
    if spec.dialect == "sqlite":
        return await count_matches(session, spec, cap)
    rows = (
        await session.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = 'ticket_search'::regclass")
        )
    ).scalar()
    total = float(rows or 0)
    if total < 50 * PG_SAMPLE:  # small (or never analysed): counting is cheap
        return await count_matches(session, spec, cap)
    percent = round(100.0 * PG_SAMPLE / total, 4)
    sample = tablesample(_PG_SEARCH, func.system(literal_column(repr(percent))), name="sample")
    tsv: ColumnElement[Any] = sample.c.tsv
    matches = tsv.op("@@", is_comparison=True)(_pg_match(spec.terms))
    stmt = select(func.count(), func.count().filter(matches)).select_from(sample)
    sampled, hits = (await session.execute(stmt)).one()
    if not sampled:
        return await count_matches(session, spec, cap)
    return int(hits * total / sampled)


async def analyze(
    session: AsyncSession, query: Query, ctx: QueryContext, *, threshold: int = FREQUENT_MATCHES
) -> QueryContext:
    """`ctx` with `frequent_text` filled in for this query's search words.

    A word or phrase matching at least `threshold` tickets is frequent: `compile_where`
    then compiles it in the probing form. Optional: `plan_search` (called by
    `store.listing` for every page) makes the same choice for the whole search.
    """
    frequent = set(ctx.frequent_text)
    for term in query.terms:
        if not term.is_text or not _has_token(term.value):
            continue
        spec = SearchSpec((term,), ctx.dialect)
        if (
            spec.match not in frequent
            and await count_matches(session, spec, threshold) >= threshold
        ):
            frequent.add(spec.match)
    return replace(ctx, frequent_text=frozenset(frequent))


def search_specs(where: ColumnElement[bool]) -> list[SearchSpec]:
    """The full-text conditions in a WHERE made by `compile_where`, in order."""
    out: list[SearchSpec] = []
    for elem in visitors.iterate(where):
        spec = getattr(elem, "_annotations", {}).get(SEARCH_ANNOTATION)
        if isinstance(spec, SearchSpec) and spec not in out:
            out.append(spec)
    return out


async def plan_search(
    session: AsyncSession,
    where: ColumnElement[bool],
    *,
    for_count: bool = False,
    threshold: int | None = None,
) -> ColumnElement[bool]:
    """`where` with each full-text condition in the SQL form that is fast for it.

    For one page of a list (`store.listing`): a search matching fewer than `threshold`
    (default `FREQUENT_MATCHES`) tickets by `estimate_matches` collects its matches and
    sorts them (a few ms); a more frequent one is probed ticket by ticket while the list's
    index is walked in order, which stops after a page (at 10% density, about 500
    probes). The estimate is for all the words together, so common words that never
    occur together count as rare (0 matches) and cost little.
    Negated words are always probed: each candidate row checks one document. For
    `for_count` (a full count) every condition collects its matches instead.
    """
    specs = search_specs(where)
    if not specs:
        return where
    cap = FREQUENT_MATCHES if threshold is None else threshold
    probe: dict[SearchSpec, bool] = {}
    for spec in specs:
        if for_count:
            probe[spec] = False
        elif any(t.op == "prefix" for t in spec.terms):
            # FTS5 expands a prefix by merging every matching word's list, again for each
            # probe: one collect is far cheaper than thousands of those.
            probe[spec] = False
        elif spec.negated:
            probe[spec] = True
        else:
            probe[spec] = await estimate_matches(session, spec, cap) >= cap

    def swap(element: Any, **_kw: Any) -> Any:
        spec = getattr(element, "_annotations", {}).get(SEARCH_ANNOTATION)
        if isinstance(spec, SearchSpec):
            return search_sql(spec, probe=probe[spec])
        return None

    no_options: dict[str, Any] = {}
    return visitors.replacement_traverse(where, no_options, swap)


def rank_subquery(query: Query, ctx: QueryContext) -> Subquery | None:
    """A ``(ticket_id, score)`` relevance subquery (higher score = better), or None.

    None when the query has no positive full-text term. A ticket scores by how well its
    whole document (subject and every article) matches any of the words, with words in
    the subject counting double (bm25 on SQLite, ts_rank on PostgreSQL).
    """
    terms = [t for t in query.terms if t.is_text and not t.negated and _has_token(t.value)]
    if not terms:
        return None
    if ctx.dialect == "sqlite":
        match = literal(" OR ".join(_fts5_string(t) for t in terms))
        ts: ColumnElement[Any] = literal_column("ticket_search")
        return (
            select(
                _FTS.c.rowid.label("ticket_id"),
                (func.bm25(ts, 2.0, 1.0) * -1.0).label("score"),
            )
            .where(ts.op("MATCH", is_comparison=True)(match))
            .subquery("relevance")
        )
    tsq: ColumnElement[object] = _pg_tsquery(terms[0])
    for t in terms[1:]:
        tsq = tsq.op("||")(_pg_tsquery(t))
    tsv: ColumnElement[Any] = _PG_SEARCH.c.tsv
    return (
        select(
            _PG_SEARCH.c.ticket_id.label("ticket_id"),
            func.ts_rank(literal_column(_PG_WEIGHTS), tsv, tsq).label("score"),
        )
        .where(tsv.op("@@", is_comparison=True)(tsq))
        .subquery("relevance")
    )
