"""The one parse path for incoming mail: raw RFC 5322 bytes -> ParsedMail."""

# Design notes
# * parse_mail never raises for malformed mail except ParseError (a hard limit that makes the mail
#   unusable, or the time limit); everything recoverable becomes a note in ParsedMail.warnings.
# * MIME structure comes from the standard library's feed parser, but headers are read raw
#   (compat32 semantics, surrogate-escaped 8-bit bytes kept) and decoded here: lenient RFC 2047
#   encoded-words, raw 8-bit headers as UTF-8 when valid, else the body charset, else detected /
#   Windows-1252. policy.default's structured header parsing is about ten times slower (it
#   dominates the cost of a small mail) and raises on broken headers.
# * Body charsets: the declared one (common aliases fixed), mislabelled UTF-8 detected, then
#   charset-normalizer, then Windows-1252/Latin-1.
# * Every str returned is free of NUL characters and lone surrogates.

from __future__ import annotations

import binascii
import calendar
import codecs
import email.utils
import hashlib
import html as html_lib
import operator
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from functools import lru_cache
from typing import Any

from mail_sync.lang import DEFAULT_LANGUAGES, detect_language
from mail_sync.lang import warm_up as _warm_up_languages
from mail_sync.sanitize_names import sanitize_filename

__all__ = [
    "DEFAULT_LANGUAGES",
    "Attachment",
    "ParseError",
    "ParseLimits",
    "ParsedMail",
    "parse_mail",
    "split_quoted",
    "warm_up",
]

MB = 1024 * 1024

#: Longest subject kept (characters); longer ones are cut and noted in truncated_parts.
MAX_SUBJECT_CHARS = 2000
#: Longest decoded header value kept in ``ParsedMail.headers``.
MAX_HEADER_VALUE_CHARS = 8192
#: Most header fields kept in ``ParsedMail.headers``.
MAX_HEADERS = 500
#: Most distinct warnings kept.
MAX_WARNINGS = 50
#: Address headers are parsed up to this length (the rest is cut at a comma).
MAX_ADDRESS_HEADER_CHARS = 262144
#: Content-Type / Content-Disposition values longer than this are cut before their parameters
#: are parsed (the standard library's parameter parser is quadratic).
MAX_PARAM_HEADER_CHARS = 8192
#: Quote detection looks at this many lines at most; later lines follow the last decision.
MAX_QUOTE_SCAN_LINES = 20000


class ParseError(Exception):
    """The mail cannot be turned into a usable ParsedMail (hard limit or time limit hit)."""


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Resource limits for one parse. Part/depth caps truncate; they never drop the mail."""

    #: MIME parts walked at most; the rest is left out and noted in ``truncated_parts``.
    max_parts: int = 200
    #: MIME nesting depth walked at most.
    max_depth: int = 20
    #: HTML larger than this (UTF-8 bytes) is truncated before it is converted to text.
    max_html_bytes: int = 2 * MB
    #: Larger attachments are left out (named in ``truncated_parts``).
    max_attachment_bytes: int = 25 * MB
    #: Wall-clock budget for one parse; exceeding it raises ParseError. None: no limit.
    time_limit_s: float | None = 10.0
    #: Larger raw messages are refused with ParseError. None: no limit.
    max_message_bytes: int | None = 100 * MB


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment (or inline resource) of a mail."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)
    size: int
    inline: bool = False
    content_id: str | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Attachment, _attachment_values(self))


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """Everything the helpdesk needs from one incoming mail. Text fields never contain NUL."""

    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    subject: str
    from_addr: str
    from_name: str
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]
    return_path: str | None
    date: datetime | None
    text: str
    html: str | None
    new_text: str
    quoted_text: str
    attachments: list[Attachment]
    language: str | None
    auto_submitted: bool
    is_bulk_or_list: bool
    is_bounce: bool
    bounce_original_message_id: str | None
    content_hash: str
    size: int
    warnings: list[str]
    truncated_parts: list[str]
    headers: list[tuple[str, str]]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as the constructor's arguments: parse workers send thousands a second, and
        # a frozen dataclass's default state restore sets every field in a Python loop.
        return (ParsedMail, _parsed_values(self))


_attachment_values = operator.attrgetter(*(f.name for f in fields(Attachment)))
_parsed_values = operator.attrgetter(*(f.name for f in fields(ParsedMail)))


# ---------------------------------------------------------------------------------------------
# Parser setup


class _RawPolicy(Compat32):
    """compat32, but header values are handed back exactly as parsed (surrogate-escaped bytes
    included) so that nothing in the email package converts or raises on them; this module
    decodes them itself."""

    def header_fetch_parse(self, name: str, value: str) -> str:  # type: ignore[override]
        return value


_POLICY = _RawPolicy()
_PARSER = BytesParser(policy=_POLICY)

_NEWLINE = re.compile(r"\r\n|\r|\n")
_LONE_CR = re.compile(r"\r(?!\n)")
_FIELD_NAME = re.compile(r"[\041-\071\073-\176]+")


def _header_block(text: str, pos: int, stop: int) -> tuple[Message, int] | None:
    """The header fields of the part starting at `pos` (the part ends at `stop`) and where
    its body starts, split as the feed parser splits them; None for a header the feed parser
    would treat specially (a continuation first, a Unix `From ` line, a line that is neither
    a field nor blank)."""
    msg = Message(policy=_POLICY)
    field: list[str] = []
    body_start = stop
    while pos < stop:
        m = _NEWLINE.search(text, pos, stop)
        end = m.end() if m is not None else stop
        line = text[pos:end]
        head = line[0]
        if head == " " or head == "\t":
            if not field:
                return None
            field.append(line)
        elif head == "\r" or head == "\n":
            body_start = end
            break
        else:
            colon = line.find(":")
            if colon <= 0 or line.startswith("From ") or not _FIELD_NAME.fullmatch(line, 0, colon):
                return None
            if field:
                msg.set_raw(*_POLICY.header_source_parse(field))
            field = [line]
        pos = end
    if field:
        msg.set_raw(*_POLICY.header_source_parse(field))
    return msg, body_start


def _strip_eol(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith(("\r", "\n")):
        return value[:-1]
    return value


def _parse_simple(raw: bytes) -> Message | None:
    """What `_PARSER.parsebytes(raw)` returns, for the common shapes: a single part, or a
    multipart/* of single parts (a text with an HTML alternative or attachments). None for
    anything else (nesting, message/*, a defect the feed parser would note): use the parser.

    The stdlib feed parser walks every line of the message in Python and matches each against
    the boundaries (a 60 kB attachment is ~800 lines); this cuts the same pieces with a few
    searches. Its rules, kept here: lines end at CRLF, CR or LF; a field line is `name:`
    (characters 33-126 but ':'), continuation lines start with space or tab, a blank line
    ends the header; a boundary line is `--boundary`, optionally `--`, blanks, end of line;
    the line break before a boundary belongs to the boundary; the preamble is what precedes
    the first boundary, the epilogue what follows the closing one."""
    text = raw.decode("ascii", "surrogateescape")
    n = len(text)
    top = _header_block(text, 0, n)
    if top is None:
        return None
    msg, body_start = top
    maintype = msg.get_content_maintype()
    if maintype == "message":
        return None
    if maintype != "multipart":
        msg.set_payload(text[body_start:])
        return msg
    boundary = msg.get_boundary()
    if (
        boundary is None
        or msg.get_content_type() == "multipart/digest"
        or str(msg.get("content-transfer-encoding", "8bit")).lower()
        not in ("7bit", "8bit", "binary")
        or _LONE_CR.search(text, body_start) is not None
    ):
        return None
    found = _boundary_lines(text, body_start, "--" + boundary)
    if not found or found[0][2]:
        return None  # no start boundary
    if found[0][0] > body_start:
        msg.preamble = _strip_eol(text[body_start : found[0][0]])
    close = None
    for sep, nxt in zip(found, found[1:], strict=False):
        if nxt[0] == sep[1]:
            return None  # consecutive boundary lines
        part = _header_block(text, sep[1], nxt[0])
        if part is None:
            return None
        sub, sub_body = part
        if sub.get_content_maintype() in ("multipart", "message"):
            return None
        sub.set_payload(_strip_eol(text[sub_body : nxt[0]]))
        msg.attach(sub)
        if nxt[2]:
            close = nxt
            break
    if close is None:
        return None  # no closing boundary
    msg.epilogue = text[close[1] :]
    return msg


_BOUNDARY_TAIL = re.compile(r"[ \t]*(?:\r\n|\n|\Z)")


def _boundary_lines(text: str, start: int, delimiter: str) -> list[tuple[int, int, bool]]:
    """(start, end, closing) of every line `delimiter` [`--`] [blanks] at or after `start`:
    what `^--boundary(--)?[ \\t]*(?:\\r\\n|\\n|\\Z)` with
    MULTILINE finds when no lone CR is left, without compiling a pattern per message."""
    found: list[tuple[int, int, bool]] = []
    size = len(delimiter)
    pos = start
    while (at := text.find(delimiter, pos)) >= 0:
        pos = at + 1
        if at > 0 and text[at - 1] != "\n":
            continue  # not at a line start
        after = at + size
        closing = text.startswith("--", after)
        tail = _BOUNDARY_TAIL.match(text, after + 2 if closing else after)
        if tail is None:
            continue
        found.append((at, tail.end(), closing))
        pos = tail.end()
    return found


# For re-serialising attached messages: no ">From " mangling, no re-folding, CRLF like a .eml.
_SERIALISE_POLICY = _POLICY.clone(mangle_from_=False, max_line_length=0, linesep="\r\n")


class _Deadline:
    __slots__ = ("_end", "_limit")

    def __init__(self, limit: float | None) -> None:
        self._limit = limit
        self._end = None if limit is None else time.monotonic() + limit

    def check(self, stage: str) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise ParseError(f"time limit of {self._limit}s exceeded during {stage}")


class _Notes:
    """Ordered, de-duplicated, capped warnings."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}

    def add(self, text: str) -> None:
        if len(self._items) < MAX_WARNINGS:
            self._items.setdefault(_clean(text)[:500], None)

    def as_list(self) -> list[str]:
        return list(self._items)


# ---------------------------------------------------------------------------------------------
# Charsets and text cleaning

_SURROGATES = re.compile("[\ud800-\udfff]")
_NON_ESCAPE_SURROGATES = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_ESCAPE_RUN = re.compile("[\udc80-\udcff]+")

_UNKNOWN_CHARSETS = frozenset(
    {
        "",
        "none",
        "unknown",
        "unknown-8bit",
        "x-unknown",
        "x-user-defined",
        "default",
        "8bit",
        "7bit",
        "binary",
        "charset",
        "auto",
        "undefined",
    }
)
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601-1989": "cp949",
    "x-windows-949": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-8-e": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "iso-8859-6-e": "iso8859_6",
    "unicode-1-1-utf-7": "utf-7",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "x-mac-cyrillic": "mac_cyrillic",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "iso-ir-166": "cp874",
    "utf8": "utf-8",
    "utf-8-sig": "utf-8",
    "x-utf-8": "utf-8",
    "ansi_x3.4-1968": "ascii",
}
# Declared charset -> the superset mail clients actually mean.
_CODEC_UPGRADES = {"iso8859-1": "cp1252", "iso8859-9": "cp1254", "latin-1": "cp1252"}
_BANNED_CODECS = frozenset(
    {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined", "mbcs", "oem"}
)


@lru_cache(maxsize=512)
def _codec(label: str | None) -> str | None:
    """Python codec name for a MIME charset label, or None if unknown / unusable."""
    if not label:
        return None
    name = label.strip().strip("\"'").strip().lower().split("*", 1)[0]
    if name in _UNKNOWN_CHARSETS or len(name) > 40:
        return None
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _BANNED_CODECS:
        return None
    return _CODEC_UPGRADES.get(info.name, info.name)


def _is_8bit_single_byte(codec: str) -> bool:
    return codec == "ascii" or codec.startswith(("cp12", "iso8859", "koi8", "mac", "cp8", "cp4"))


# charset-normalizer cannot tell single-byte Latin code pages apart on short texts and then
# returns the alphabetically first (cp1250); among equally good answers prefer the common ones.
_DETECTION_PREFERENCE = {
    name: rank
    for rank, name in enumerate(
        ["utf_8", "ascii", "cp1252", "iso8859_15", "cp1251", "koi8_r", "cp1257", "iso8859_13"]
        + ["cp1256", "cp1250", "iso8859_2"]
    )
}


def _detect_codec(data: bytes) -> str | None:
    try:
        from charset_normalizer import from_bytes

        results = list(from_bytes(data[:65536]))
    except Exception:  # noqa: BLE001 - detection is best effort
        return None
    if not results:
        return None
    best = results[0]
    tied = [m for m in results if m.chaos == best.chaos and m.coherence == best.coherence]
    tied.sort(key=lambda m: _DETECTION_PREFERENCE.get(m.encoding, len(_DETECTION_PREFERENCE)))
    return _codec(tied[0].encoding)


def _decode_utf8_tolerant(data: bytes) -> str | None:
    """UTF-8 with a few broken bytes replaced, if the rest clearly is UTF-8; else None."""
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    good = sum(1 for ch in text if ord(ch) > 0x7F) - bad
    if bad <= len(data) // 20 and good >= 4 * bad:
        return text
    return None


def _decode_body(data: bytes, charset: str | None, notes: _Notes, what: str) -> str:
    """Decode a body part: declared charset, mislabelled UTF-8, detection, Latin-1."""
    if not data:
        return ""
    codec = _codec(charset)
    ascii_only = data.isascii()
    if codec is None:
        label = (charset or "").strip().strip("\"'").strip().lower()
        if label and label not in _UNKNOWN_CHARSETS:
            notes.add(f"{what}: unknown charset {label[:40]!r}")
        if ascii_only:
            return data.decode("ascii")
    else:
        if ascii_only and _is_8bit_single_byte(codec):
            return data.decode("ascii")
        if not ascii_only and _is_8bit_single_byte(codec):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                if codec != "ascii":
                    notes.add(f"{what}: declared {charset} but is UTF-8")
                return text
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            if codec == "utf-8":
                tolerant = _decode_utf8_tolerant(data)
                if tolerant is not None:
                    notes.add(f"{what}: invalid UTF-8 bytes replaced")
                    return tolerant
            if codec != "ascii":
                notes.add(f"{what}: not valid {charset}; charset detected instead")
        except Exception:  # noqa: BLE001 - exotic codecs can raise anything
            notes.add(f"{what}: decoding as {charset} failed")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    detected = _detect_codec(data)
    if detected is not None:
        try:
            return data.decode(detected, errors="replace")
        except Exception:  # noqa: BLE001
            pass
    if codec is not None:
        try:
            return data.decode(codec, errors="replace")
        except Exception:  # noqa: BLE001
            pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode_header_bytes(data: bytes, hint: str | None) -> str:
    """Decode raw 8-bit header bytes: UTF-8, the body charset, detection, Windows-1252."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    tolerant = data.decode("utf-8", errors="replace")
    if tolerant.count("\ufffd") <= sum(1 for b in data if b > 0x7F) // 20:
        return tolerant  # UTF-8 with a stray or truncated byte
    codec = _codec(hint)
    if codec is not None and codec not in ("utf-8", "ascii"):
        try:
            return data.decode(codec)
        except Exception:  # noqa: BLE001
            pass
    if sum(1 for b in data if b > 0x7F) >= 8:
        detected = _detect_codec(data)
        if detected is not None:
            try:
                return data.decode(detected)
            except Exception:  # noqa: BLE001
                pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _fix_surrogates(text: str, hint: str | None = None) -> str:
    """Turn surrogate-escaped raw bytes (from the byte parser) into real characters."""
    if not _SURROGATES.search(text):
        return text
    text = _NON_ESCAPE_SURROGATES.sub("\ufffd", text)
    if not _SURROGATES.search(text):
        return text
    stripped = _ESCAPE_RUN.sub("", text)
    if stripped.isascii():
        return _decode_header_bytes(text.encode("ascii", "surrogateescape"), hint)
    return _ESCAPE_RUN.sub(
        lambda m: _decode_header_bytes(m.group(0).encode("ascii", "surrogateescape"), hint), text
    )


def _clean(text: str) -> str:
    """No NUL characters, no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if _SURROGATES.search(text):
        text = _fix_surrogates(text)
    return text


# ---------------------------------------------------------------------------------------------
# Header decoding

_FOLD = re.compile(r"\r?\n[ \t]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*?)\?=")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def _unfold(value: str) -> str:
    if "\n" in value or "\r" in value:
        value = _FOLD.sub(" ", value)
        value = value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return value


def _b64_lenient(data: bytes) -> bytes | None:
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        pass
    cleaned = _B64_JUNK.sub(b"", data)
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        return None


def _decode_words(value: str, hint: str | None) -> str:
    """Decode RFC 2047 encoded-words leniently (bad base64, unknown charsets, split chars)."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    last_was_word = False
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            data = bytes(pending)
            codec = _codec(pending_charset)
            text: str | None = None
            if codec is not None:
                try:
                    text = data.decode(codec)
                except Exception:  # noqa: BLE001
                    text = None
            if text is None:
                text = _decode_header_bytes(data, hint)
            out.append(text)
        pending = bytearray()
        pending_charset = ""

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        if between and not (last_was_word and not between.strip()):
            flush()
            out.append(between)
        charset, encoding, payload = match.groups()
        raw_payload = payload.encode("utf-8", "surrogateescape")
        decoded: bytes | None
        if encoding in "bB":
            decoded = _b64_lenient(raw_payload)
            if not decoded and raw_payload.strip():
                decoded = None  # nothing decodable in it: keep the word as written
        else:
            try:
                decoded = binascii.a2b_qp(raw_payload, header=True)
            except (binascii.Error, ValueError):
                decoded = None
        if decoded is None:
            flush()
            out.append(match.group(0))
            last_was_word = False
        else:
            key = charset.lower().split("*", 1)[0]
            if pending and key != pending_charset:
                flush()
            pending += decoded
            pending_charset = key
            last_was_word = True
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _decode_header(value: str, hint: str | None) -> str:
    """Unfold, decode encoded-words and raw 8-bit bytes, remove NULs."""
    text = _unfold(value)
    text = _fix_surrogates(text, hint)
    text = _decode_words(text, hint)
    return _clean(text).strip()


class _HeaderMap:
    """Raw header values by lower-cased name, in order."""

    def __init__(self, items: Iterable[tuple[str, Any]]) -> None:
        self.items: list[tuple[str, str]] = []
        self.by_name: dict[str, list[str]] = {}
        for name, value in items:
            name_s = str(name)
            value_s = value if isinstance(value, str) else str(value)
            self.items.append((name_s, value_s))
            self.by_name.setdefault(name_s.strip().lower(), []).append(value_s)

    def first(self, name: str) -> str | None:
        values = self.by_name.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name in self.by_name


_ANGLE_ID = re.compile(r"<([^<>]*)>")
_ADDR_FALLBACK = re.compile(r"[^\s<>,;:\"']+@[^\s<>,;:\"']+")


def _message_ids(raw: str | None) -> list[str]:
    if not raw:
        return []
    value = _clean(_fix_surrogates(_unfold(raw)))
    ids = ["".join(found.split()) for found in _ANGLE_ID.findall(value)]
    ids = [i for i in ids if i]
    if not ids:
        ids = [t.strip("<>,;()\"'") for t in value.split() if "@" in t]
        ids = [i for i in ids if i]
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i[:998], None)
    return list(seen)


def _single_message_id(raw: str | None) -> str | None:
    ids = _message_ids(raw)
    if ids:
        return ids[0]
    if raw:
        value = "".join(_clean(_fix_surrogates(_unfold(raw))).split()).strip("<>")
        return value[:998] or None
    return None


_ADDR_SPEC = r"[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"
#: One address without quoting, comments, encoded words or groups: a bare addr-spec, or a
#: display name of plain ASCII words (single spaces) followed by <addr-spec>.
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:([A-Za-z0-9]+(?: [A-Za-z0-9]+)*) <({_ADDR_SPEC})>|({_ADDR_SPEC}))[ \t]*",
    re.ASCII,
)


def _addresses(
    raw_values: list[str] | None, hint: str | None, notes: _Notes | None = None
) -> list[tuple[str, str]]:
    if not raw_values:
        return []
    result: list[tuple[str, str]] = []
    for raw in raw_values:
        value = _unfold(raw)
        if len(value) > MAX_ADDRESS_HEADER_CHARS:
            cut = value.rfind(",", 0, MAX_ADDRESS_HEADER_CHARS)
            value = value[: cut if cut > 0 else MAX_ADDRESS_HEADER_CHARS]
            if notes is not None:
                notes.add(f"address header longer than {MAX_ADDRESS_HEADER_CHARS} characters cut")
        if value.count("(") > 200:
            # the address parser is quadratic in nested comments; make them plain words
            value = value.replace("(", " ").replace(")", " ")
        simple = _SIMPLE_ADDRESS.fullmatch(value)
        if simple is not None:
            # the common "addr" / "Plain Name <addr>" shape: same answer as getaddresses(),
            # without running its tokenizer (a large share of the parse cost per message)
            pairs = [(simple.group(1) or "", simple.group(2) or simple.group(3))]
        else:
            try:
                pairs = email.utils.getaddresses([value])
            except Exception:  # noqa: BLE001 - fall back to a plain address scan
                pairs = [("", a) for a in _ADDR_FALLBACK.findall(value)]
        for name, addr in pairs:
            name_s = _decode_header(name, hint) if name else ""
            addr_s = _clean(_fix_surrogates(addr, hint)).strip().strip("<>").strip().lower()
            if not addr_s and not name_s:
                continue
            if not addr_s and "@" in name_s and " " not in name_s:
                name_s, addr_s = "", name_s.lower()
            elif "@" not in addr_s and any(ch.isspace() for ch in addr_s):
                # a bare display name ("From: Only Name"), not an address
                name_s, addr_s = name_s or _decode_header(addr, hint), ""
            result.append((name_s, addr_s))
    return result


def _parse_date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    value = _clean(_fix_surrogates(_unfold(raw))).strip()
    if not value:
        return None
    parsed: Any = None
    for candidate in (value, re.sub(r"\([^)]*\)", " ", value)):
        try:
            parsed = email.utils.parsedate_tz(candidate)
        except Exception:  # noqa: BLE001
            parsed = None
        if parsed is not None:
            break
    if parsed is None:
        try:
            iso = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if iso.tzinfo is None:
                iso = iso.replace(tzinfo=UTC)
            return iso.astimezone(UTC)
        except (ValueError, OverflowError):
            return None
    try:
        year = int(parsed[0])
        if not 1900 <= year <= 9999:
            return None
        offset = int(parsed[9] or 0)
        stamp = calendar.timegm(tuple(int(x) for x in parsed[:6]) + (0, 0, 0)) - offset
        return datetime.fromtimestamp(stamp, UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# MIME part helpers


#: Header values longer than this are not memoised (see _cached_param).
_PARAM_CACHE_MAX_CHARS = 300


@lru_cache(maxsize=1024)
def _cached_param(value: str, name: str) -> Any:
    """``Message.get_param(name)`` of a header holding ``value``.

    Parameter parsing is a noticeable share of the parse cost and the same few values
    (``text/plain; charset="utf-8"``, ...) recur in almost every message.
    """
    probe = Message(policy=_POLICY)
    probe["content-type"] = value
    return probe.get_param(name)


def _get_param(part: Message, name: str, header: str = "content-type") -> Any:
    """Same answer as ``part.get_param(name, header=header)``, memoised on the header value."""
    value = part.get(header)
    if value is None:
        return None
    if type(value) is str and len(value) <= _PARAM_CACHE_MAX_CHARS:
        return _cached_param(value, name)
    return part.get_param(name, header=header)


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value = _get_param(part, name, header)
    except Exception:  # noqa: BLE001
        return None
    if value is None:
        return None
    try:
        text = email.utils.collapse_rfc2231_value(value)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        text = value[2] if isinstance(value, tuple) else str(value)
    return str(text).strip() if text is not None else None


def _tame_headers(part: Message, notes: _Notes) -> None:
    """Cut absurdly long Content-Type / Content-Disposition values before parsing them."""
    for name in ("content-type", "content-disposition"):
        value = part.get(name)
        if value is not None and len(value) > MAX_PARAM_HEADER_CHARS:
            cut = value.rfind(";", 0, MAX_PARAM_HEADER_CHARS)
            try:
                part.replace_header(name, value[: cut if cut > 0 else MAX_PARAM_HEADER_CHARS])
            except Exception:  # noqa: BLE001
                continue
            notes.add(f"{name} header longer than {MAX_PARAM_HEADER_CHARS} characters cut")


def _content_type(part: Message, has_filename: bool) -> str:
    raw = part.get("content-type")
    if raw is None:
        return part.get_default_type()
    declared = _unfold(str(raw)).split(";", 1)[0].strip().lower()
    if declared.count("/") == 1 and all(declared.split("/")) and " " not in declared:
        return _clean(_fix_surrogates(declared))
    if declared in ("text", "plain"):
        return "text/plain"
    if declared == "html":
        return "text/html"
    return "application/octet-stream" if has_filename else part.get_default_type()


def _disposition(part: Message) -> str | None:
    raw = part.get("content-disposition")
    if raw is None:
        return None
    value = str(raw).split(";", 1)[0].strip().lower()
    if value in ("inline", "attachment"):
        return value
    return "attachment" if "filename" in str(raw).lower() else None


def _filename(part: Message, hint: str | None) -> str | None:
    name: Any
    try:
        # Message.get_filename(), through the memoised parameter lookup
        raw = _get_param(part, "filename", "content-disposition")
        if raw is None:
            raw = _get_param(part, "name", "content-type")
        name = None if raw is None else email.utils.collapse_rfc2231_value(raw).strip()
    except Exception:  # noqa: BLE001
        name = _param(part, "filename", "content-disposition") or _param(part, "name")
    if name is None:
        return None
    text = _decode_header(str(name), hint).strip().strip('"')
    return text or None


def _content_id(part: Message) -> str | None:
    raw = part.get("content-id")
    if raw is None:
        return None
    value = "".join(_clean(_fix_surrogates(_unfold(str(raw)))).split()).strip("<>")
    return value[:998] or None


def _cte(part: Message) -> str:
    raw = part.get("content-transfer-encoding")
    if raw is None:
        return ""
    value = str(raw).strip().lower().split(";", 1)[0].strip().strip("\"'")
    if value in ("base64", "base-64", "b64"):
        return "base64"
    if value in ("quoted-printable", "quoted printable", "qp", "quotedprintable"):
        return "quoted-printable"
    if value in ("x-uuencode", "uuencode", "uue", "x-uue"):
        return "uuencode"
    return value


def _payload_of(part: Message) -> Any:
    """The stored payload, untouched (``get_payload()`` would decode 8-bit text lossily)."""
    try:
        return part._payload  # type: ignore[attr-defined]
    except AttributeError:
        return part.get_payload()


def _raw_payload(part: Message) -> bytes:
    payload = _payload_of(part)
    if isinstance(payload, list):
        return b""
    if isinstance(payload, bytes):
        return payload
    return str(payload).encode("utf-8", "surrogateescape")


def _uudecode_lines(lines: Iterable[bytes]) -> bytes:
    out = bytearray()
    for line in lines:
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            nbytes = (((line[0] - 32) & 63) * 4 + 5) // 3
            try:
                out += binascii.a2b_uu(line[:nbytes])
            except binascii.Error:
                continue
    return bytes(out)


def _uudecode_payload(data: bytes) -> bytes:
    lines = data.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if line.startswith(b"begin "):
            start = i + 1
            break
    body: list[bytes] = []
    for line in lines[start:]:
        if line.strip() == b"end":
            break
        body.append(line)
    return _uudecode_lines(body)


def _payload_bytes(part: Message) -> bytes:
    data = _raw_payload(part)
    cte = _cte(part)
    if cte == "base64":
        decoded = _b64_lenient(data)
        return decoded if decoded is not None else data
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(data)
        except (binascii.Error, ValueError):
            return data
    if cte == "uuencode":
        return _uudecode_payload(data)
    return data


def _estimated_size(part: Message) -> int:
    payload = _payload_of(part)
    if not isinstance(payload, str | bytes):
        return 0
    size = len(payload)
    return size * 3 // 4 if _cte(part) == "base64" else size


_UU_BEGIN = re.compile(r"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]+)\r?$", re.MULTILINE)


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: join soft-broken lines (same quote depth)."""
    out: list[str] = []
    buffer = ""
    buffer_depth = -1
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        if buffer and depth != buffer_depth:
            out.append(">" * buffer_depth + (" " if buffer_depth else "") + buffer)
            buffer = ""
        soft = content.endswith(" ") and content != "-- "
        if soft and delsp:
            content = content[:-1]
        buffer += content
        buffer_depth = depth
        if not soft:
            out.append(">" * depth + (" " if depth else "") + buffer)
            buffer = ""
    if buffer:
        out.append(">" * buffer_depth + (" " if buffer_depth > 0 else "") + buffer)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML -> text

_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_TAG = re.compile(r"<[^>]*>")
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _tidy_text(text: str) -> str:
    text = _TRAILING_WS.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


#: Where a <blockquote> opens and closes, carried through the HTML conversion (private-use
#: characters, removed from the mail first) so its lines can be marked "> " as quotes.
_QUOTE_IN, _QUOTE_OUT = "\ue000", "\ue001"
_BLOCKQUOTE_OPEN = re.compile(r"<blockquote\b[^>]*>", re.IGNORECASE)
_BLOCKQUOTE_CLOSE = re.compile(r"</blockquote\s*>", re.IGNORECASE)
#: inscriptis shows a link as [text](url); a link whose text is its address once.
_SAME_LINK = re.compile(r"\[([^\[\]\n]+)\]\(\1/?\)")


@lru_cache(maxsize=1)
def _html_config() -> Any:
    from inscriptis.model.config import ParserConfig

    return ParserConfig(display_links=True)


def _html_to_text(markup: str) -> str:
    """Readable text of an HTML part: links keep their address ("[text](url)"), and what
    was inside <blockquote> (a quoted earlier message) becomes "> " lines, so it is folded
    like a plain-text quote."""
    if not markup.strip():
        return ""
    quotes = _BLOCKQUOTE_OPEN.search(markup) is not None
    if quotes:
        markup = markup.replace(_QUOTE_IN, "").replace(_QUOTE_OUT, "")
        markup = _BLOCKQUOTE_OPEN.sub(f"<div>{_QUOTE_IN}</div>", markup)
        markup = _BLOCKQUOTE_CLOSE.sub(f"<div>{_QUOTE_OUT}</div>", markup)
    try:
        from inscriptis import get_text

        text = _SAME_LINK.sub(r"\1", get_text(markup, _html_config()))
    except Exception:  # noqa: BLE001 - lxml refuses some documents; strip tags instead
        text = html_lib.unescape(_TAG.sub(" ", _SCRIPT_STYLE.sub(" ", markup)))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if quotes:
        text = _mark_quotes(text)
    return _tidy_text(text)


def _mark_quotes(text: str) -> str:
    """Prefix the lines between the blockquote marks with "> " per level; drop the marks."""
    out: list[str] = []
    depth = 0
    blank: str | None = None  # a blank quoted line, kept only if the quote goes on
    for line in text.split("\n"):
        opened = line.count(_QUOTE_IN)
        closed = line.count(_QUOTE_OUT)
        if opened or closed:
            line = line.replace(_QUOTE_IN, "").replace(_QUOTE_OUT, "")
            if closed:
                blank = None
            depth = max(0, depth + opened - closed)
            if not line.strip():
                continue
        stripped = line.strip()
        if not depth:
            out.append(line)
        elif not stripped:
            blank = ">" * depth
        else:
            if blank is not None:
                out.append(blank)
                blank = None
            out.append(">" * depth + " " + stripped)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Quote detection

_WROTE = re.compile(
    r"(?:\bwrote|\bwrites|\bschrieb|\ba écrit|\bescribió|\bescribio|\bнаписал[аи]?|\bпишет"
    r"|\brakstīja|\bparašė|\brašė|\bmenulis|كتب|\bschreef|\bha scritto|\bescreveu"
    r"|\bnapisał[a]?|\bskrev|\bkirjoitti)\s*:?\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION_OPENER = re.compile(
    r"^(?:-+\s*)?(?:(?:on|am|le|el|il|op|em|w dniu|в|في)\b|\d)", re.IGNORECASE
)
_ORIGINAL_SEPARATOR = re.compile(
    r"^[-_=*\s]{2,}\s*(?:original message|original message follows|ursprüngliche nachricht"
    r"|originalnachricht|message d'origine|mensaje original|исходное сообщение"
    r"|oriģinālā ziņa|sākotnējā ziņa|originalus laiškas|pradinis laiškas|mesej asal"
    r"|الرسالة الأصلية)\s*[-_=*\s]{2,}$",
    re.IGNORECASE,
)
_HEADER_FROM = re.compile(
    r"^\*?(?:from|von|de|от|no|nuo|daripada|من)\s*\*?:\s*\*?\s*\S", re.IGNORECASE
)
_HEADER_OTHER = re.compile(
    r"^\*?(?:sent|date|to|subject|cc|gesendet|datum|an|betreff|envoyé|à|objet|enviado|fecha"
    r"|para|asunto|отправлено|дата|кому|тема|копия|nosūtīts|sūtīts|datums|kam|tēma|išsiųsta"
    r"|data|tema|gavėjas|dihantar|tarikh|kepada|subjek|أرسل|التاريخ|إلى|الموضوع)\s*\*?:",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(
    r"forwarded message|begin forwarded message|weitergeleitete nachricht|message transféré"
    r"|mensaje reenviado|пересылаемое сообщение|pārsūtīta ziņa|persiųstas laiškas"
    r"|mesej yang dimajukan|رسالة مُعاد توجيهها",
    re.IGNORECASE,
)
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fwd?|wg|tr|rv|enc|pd|fw|пересл|pārs)\s*:", re.IGNORECASE)
_RULE_LINE = re.compile(r"^\s*[_\-=]{8,}\s*$")


def _is_quote_line(line: str) -> bool:
    return line.lstrip(" \t").startswith(">")


def _next_content_line(lines: list[str], start: int, limit: int) -> int | None:
    for j in range(start, min(len(lines), limit)):
        if lines[j].strip():
            return j
    return None


def _prev_content_line(lines: list[str], start: int) -> int | None:
    for j in range(start, -1, -1):
        if lines[j].strip():
            return j
    return None


def _attribution_start(lines: list[str], i: int, quoted: list[bool]) -> int:
    """First line of an attribution ending at line i (clients wrap long ones once)."""
    if i > 0 and not _ATTRIBUTION_OPENER.match(lines[i].strip()):
        prev = lines[i - 1].strip()
        if prev and not quoted[i - 1] and len(prev) < 200 and _ATTRIBUTION_OPENER.match(prev):
            return i - 1
    return i


def split_quoted(text: str, *, is_forward: bool = False) -> tuple[str, str]:
    """Split a plain-text body into (new_text, quoted_text).

    Quoted are: ``>`` lines with their attribution ("On ... wrote:" in several languages),
    and everything after an "-----Original Message-----" separator, an Outlook-style
    ``From:``/``Sent:`` header block or an attribution not followed by ``>`` lines. With
    ``is_forward`` only ``>`` quoting counts (forwarded content is new to the helpdesk).
    If nothing new remains, new_text is the whole text and quoted_text is empty.
    """
    if not text.strip():
        return text, ""
    lines = text.split("\n")
    n = len(lines)
    scan = min(n, MAX_QUOTE_SCAN_LINES)
    quoted = [False] * n
    hard: int | None = None
    for i in range(scan):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == ">":
            quoted[i] = True
            continue
        if len(stripped) > 400:
            continue
        if stripped.endswith(":") and _WROTE.search(stripped):
            start = _attribution_start(lines, i, quoted)
            nxt = _next_content_line(lines, i + 1, i + 6)
            if nxt is not None and _is_quote_line(lines[nxt]):
                for j in range(start, i + 1):
                    quoted[j] = True
                continue
            if not is_forward:
                hard = start
                break
            continue
        if is_forward:
            continue
        if stripped[0] in "-_=*" and _ORIGINAL_SEPARATOR.match(stripped):
            hard = i
            break
        if ":" in stripped[:30] and _HEADER_FROM.match(stripped):
            others = 0
            for j in range(i + 1, min(n, i + 6)):
                candidate = lines[j].strip()
                if not candidate:
                    continue
                if _HEADER_OTHER.match(candidate):
                    others += 1
                else:
                    break
            if others >= 2:
                prev = _prev_content_line(lines, i - 1)
                if prev is not None and _FORWARD_MARKER.search(lines[prev]):
                    continue
                hard = i
                if prev is not None and _RULE_LINE.match(lines[prev]):
                    hard = prev
                break
    if hard is None and scan < n:
        tail_quoted = quoted[scan - 1]
        for j in range(scan, n):
            quoted[j] = tail_quoted
    if hard is not None:
        for j in range(hard, n):
            quoted[j] = True
    # Blank lines inside a quoted block belong to it.
    for i in range(n):
        if not quoted[i] and not lines[i].strip():
            prev = _prev_content_line(lines, i - 1)
            if prev is not None and quoted[prev]:
                nxt = _next_content_line(lines, i + 1, n)
                if nxt is None or quoted[nxt]:
                    quoted[i] = True
    if not any(quoted):
        return text, ""
    new_lines = [line for line, q in zip(lines, quoted, strict=True) if not q]
    quoted_lines = [line for line, q in zip(lines, quoted, strict=True) if q]
    new_text = _BLANK_RUNS.sub("\n\n", "\n".join(new_lines)).strip("\n")
    if not new_text.strip():
        return text, ""
    return new_text, "\n".join(quoted_lines).strip("\n")


# ---------------------------------------------------------------------------------------------
# The MIME walk


@dataclass(slots=True)
class _Segment:
    plain: str | None = None
    html: str | None = None


_BOUNDARY_LINE = re.compile(rb"^--([^\s]{1,200})[ \t]*\r?$", re.MULTILINE)
_HEADERISH = re.compile(rb"^[A-Za-z][A-Za-z0-9-]{0,60}:")
_MSGID_LINE = re.compile(r"^message-id:[ \t]*(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery failure|mail delivery failed"
    r"|returned mail|failure notice|delivery has failed|nondeliverable|non-delivery"
    r"|could not be delivered|delivery problem|mail system error",
    re.IGNORECASE,
)
_BOUNCE_BODY_MARKER = re.compile(
    r"original message|message follows|copy of the message|undelivered message"
    r"|returned message|message headers follow|below this line",
    re.IGNORECASE,
)
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|out of (?:the )?office"
    r"|abwesenheitsnotiz|automatische antwort|réponse automatique|respuesta automática"
    r"|автоответ|automātiskā atbilde|automatinis atsakymas)\b",
    re.IGNORECASE,
)


class _Walker:
    def __init__(self, limits: ParseLimits, deadline: _Deadline, notes: _Notes) -> None:
        self.limits = limits
        self.deadline = deadline
        self.notes = notes
        self.truncated: list[str] = []
        self.attachments: list[Attachment] = []
        self.skipped_attachments = 0
        self.segments: list[_Segment] = []
        self.parts = 0
        self.parts_capped = False
        self.depth_capped = False
        self.has_dsn = False
        self.has_report = False
        self.report_types: list[str] = []
        self.has_original_part = False
        self.original_ids: list[str] = []
        self.original_ids_from_fields: list[str] = []
        self.nested: list[Message] = []
        self.charset_hint: str | None = None
        self.tnef_noted = False

    # -- entry -------------------------------------------------------------------------------

    def walk(self, part: Message, depth: int, sink: list[_Segment], text_only: bool) -> None:
        self.deadline.check("MIME walk")
        if depth > self.limits.max_depth:
            if not self.depth_capped:
                self.depth_capped = True
                self.truncated.append(
                    f"MIME parts nested deeper than {self.limits.max_depth} levels were skipped"
                )
            return
        self.parts += 1
        if self.parts > self.limits.max_parts:
            if not self.parts_capped:
                self.parts_capped = True
                self.truncated.append(
                    f"MIME parts after the first {self.limits.max_parts} were skipped"
                )
            return
        for defect in getattr(part, "defects", ()) or ():
            self.notes.add(f"MIME defect: {type(defect).__name__}")
        try:
            self._walk_part(part, depth, sink, text_only)
        except ParseError:
            raise
        except RecursionError:
            if not self.depth_capped:
                self.depth_capped = True
                self.truncated.append("MIME parts nested too deeply for the parser were skipped")
        except Exception as exc:  # noqa: BLE001 - one broken part must not lose the mail
            self.notes.add(f"a MIME part could not be read ({type(exc).__name__}); skipped")

    def _walk_part(self, part: Message, depth: int, sink: list[_Segment], text_only: bool) -> None:
        _tame_headers(part, self.notes)
        hint = self.charset_hint
        filename = _filename(part, hint)
        ctype = _content_type(part, filename is not None)
        maintype = ctype.split("/", 1)[0]
        if self.charset_hint is None:
            charset = _param(part, "charset")
            if charset and _codec(charset) not in (None, "ascii", "utf-8"):
                self.charset_hint = charset
        payload = _payload_of(part)
        if isinstance(payload, list):
            if maintype == "message":
                self._message_part(part, ctype, payload, filename, depth, sink, text_only)
            elif ctype == "multipart/alternative":
                self._alternative(payload, depth, sink, text_only)
            else:
                if ctype == "multipart/report":
                    self.has_report = True
                    report_type = (_param(part, "report-type") or "").lower()
                    self.report_types.append(report_type)
                for child in payload:
                    if isinstance(child, Message):
                        self.walk(child, depth + 1, sink, text_only)
            return
        if maintype == "multipart":
            if self._recover_multipart(part, ctype, depth, sink, text_only):
                return
            self.notes.add(f"{ctype} without readable parts treated as text")
            ctype = "text/plain"
        self._leaf(part, ctype, filename, sink, text_only)

    # -- multipart ---------------------------------------------------------------------------

    def _alternative(
        self, children: list[Any], depth: int, sink: list[_Segment], text_only: bool
    ) -> None:
        plain: str | None = None
        html: str | None = None
        for child in children:
            if not isinstance(child, Message):
                continue
            found: list[_Segment] = []
            self.walk(child, depth + 1, found, text_only)
            child_plain = [s.plain for s in found if s.plain is not None]
            child_html = [s.html for s in found if s.html is not None]
            if child_plain and (plain is None or not plain.strip()):
                plain = "\n\n".join(child_plain)  # the first plain alternative with text wins
            if child_html and "".join(child_html).strip():
                html = "\n".join(child_html)
        if plain is not None or html is not None:
            sink.append(_Segment(plain=plain, html=html))

    def _recover_multipart(
        self, part: Message, ctype: str, depth: int, sink: list[_Segment], text_only: bool
    ) -> bool:
        """A multipart whose boundary never matched: find the boundary actually used."""
        data = _raw_payload(part)
        for match in _BOUNDARY_LINE.finditer(data[:65536]):
            following = data[match.end() :].lstrip(b"\r\n")
            if not _HEADERISH.match(following):
                continue
            boundary = match.group(1)
            if boundary.endswith(b"--") and data.count(b"--" + boundary[:-2]) < 2:
                boundary = boundary[:-2]
            if b'"' in boundary or b"\\" in boundary:
                return False
            synthetic = (
                b"Content-Type: "
                + ctype.encode("ascii", "replace")
                + b'; boundary="'
                + boundary
                + b'"\r\n\r\n'
                + data
            )
            try:
                rebuilt = _PARSER.parsebytes(synthetic)
            except Exception:  # noqa: BLE001
                return False
            children = _payload_of(rebuilt)
            if not isinstance(children, list) or not children:
                return False
            self.notes.add(
                f"{ctype}: boundary did not match; recovered parts using the boundary found"
            )
            if ctype == "multipart/alternative":
                self._alternative(children, depth, sink, text_only)
            else:
                for child in children:
                    if isinstance(child, Message):
                        self.walk(child, depth + 1, sink, text_only)
            return True
        return False

    # -- message/* ---------------------------------------------------------------------------

    def _message_part(
        self,
        part: Message,
        ctype: str,
        payload: list[Any],
        filename: str | None,
        depth: int,
        sink: list[_Segment],
        text_only: bool,
    ) -> None:
        blocks = [p for p in payload if isinstance(p, Message)]
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            self.has_dsn = True
            for block in blocks:
                self._note_original_field(block)
            if not text_only:
                data = b"\n".join(_serialise(b) for b in blocks)
                self._attach_data(part, ctype, filename or "delivery-status.txt", data)
            return
        inner = blocks[0] if blocks else None
        if inner is None:
            return
        if ctype in ("message/rfc822", "message/global", "message/news"):
            cte = _cte(part)
            if cte in ("base64", "quoted-printable"):
                inner = self._reparse_encoded(inner, cte) or inner
            self.nested.append(inner)
            self.has_original_part = True
            inner_id = _single_message_id(_first_header(inner, "message-id"))
            if inner_id:
                self.original_ids.append(inner_id)
            if text_only:
                return
            name = filename
            if not name:
                subject = _first_header(inner, "subject")
                subject_text = _decode_header(subject, self.charset_hint) if subject else ""
                name = (subject_text[:150] or "forwarded-message") + ".eml"
            self._attach_data(part, "message/rfc822", name, _serialise(inner))
            return
        # disposition-notification, feedback-report, external-body, partial, ...
        self._note_original_field(inner)
        if not text_only:
            self._attach_data(part, ctype, filename, _serialise(inner))

    def _reparse_encoded(self, inner: Message, cte: str) -> Message | None:
        raw = _serialise(inner)
        decoded: bytes | None
        if cte == "base64":
            decoded = _b64_lenient(raw)
        else:
            try:
                decoded = binascii.a2b_qp(raw)
            except (binascii.Error, ValueError):
                decoded = None
        if not decoded:
            return None
        try:
            return _PARSER.parsebytes(decoded)
        except Exception:  # noqa: BLE001
            return None

    def _note_original_field(self, block: Message) -> None:
        for name in ("original-message-id", "x-original-message-id"):
            value = _first_header(block, name)
            if value:
                found = _single_message_id(value)
                if found:
                    self.original_ids_from_fields.append(found)

    # -- leaves ------------------------------------------------------------------------------

    def _leaf(
        self,
        part: Message,
        ctype: str,
        filename: str | None,
        sink: list[_Segment],
        text_only: bool,
    ) -> None:
        disposition = _disposition(part)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            data = _payload_bytes(part)
            charset = _param(part, "charset")
            text = _decode_body(data, charset, self.notes, ctype)
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if ctype == "text/plain":
                if (_param(part, "format") or "").lower() == "flowed":
                    text = _unflow(text, (_param(part, "delsp") or "").lower() == "yes")
                if "begin " in text:
                    text = self._extract_uuencoded(text, text_only)
                sink.append(_Segment(plain=text))
            else:
                sink.append(_Segment(html=text))
            return
        if ctype == "text/rfc822-headers":
            self.has_original_part = True
            headers_text = _decode_body(
                _payload_bytes(part), _param(part, "charset"), self.notes, ctype
            )
            match = _MSGID_LINE.search(headers_text)
            if match:
                found = _single_message_id(match.group(1))
                if found:
                    self.original_ids.append(found)
        if text_only:
            return
        self._attach_part(part, ctype, disposition, filename)

    def _extract_uuencoded(self, text: str, text_only: bool) -> str:
        if not _UU_BEGIN.search(text):
            return text
        lines = text.split("\n")
        count = len(lines)
        next_end = [count] * (count + 1)  # index of the first "end" line at or after i
        for j in range(count - 1, -1, -1):
            next_end[j] = j if lines[j].strip() == "end" else next_end[j + 1]
        kept: list[str] = []
        i = 0
        while i < count:
            match = _UU_BEGIN.match(lines[i]) if lines[i].startswith("begin") else None
            end = next_end[i + 1] if match is not None else count
            if match is None or end >= count:  # no "end": not a uuencoded block after all
                kept.append(lines[i])
                i += 1
                continue
            self.deadline.check("uudecode")
            self.parts += 1
            if self.parts > self.limits.max_parts:
                kept.extend(lines[i : end + 1])
                i = end + 1
                continue
            body = [ln.encode("latin-1", "replace") for ln in lines[i + 1 : end]]
            if not text_only:
                data = _uudecode_lines(body)
                self._attach_data(None, "application/octet-stream", match.group(1).strip(), data)
                self.notes.add("uuencoded attachment extracted from the text")
            i = end + 1
        return "\n".join(kept)

    # -- attachments -------------------------------------------------------------------------

    def _next_index(self) -> int:
        return len(self.attachments) + self.skipped_attachments + 1

    def _name(self, filename: str | None, ctype: str) -> str:
        if ctype == "application/ms-tnef" or (filename or "").strip().lower() == "winmail.dat":
            if not self.tnef_noted:
                self.tnef_noted = True
                self.notes.add(
                    "TNEF (winmail.dat) attachment kept as is; its contents were not decoded"
                )
            return "winmail.dat"
        return sanitize_filename(filename, index=self._next_index(), content_type=ctype)

    def _too_big(self, name: str, size: int) -> bool:
        if size > self.limits.max_attachment_bytes:
            self.skipped_attachments += 1
            self.truncated.append(
                f"attachment {name!r} ({size} bytes) exceeds {self.limits.max_attachment_bytes} bytes"
            )
            return True
        return False

    def _attach_part(
        self, part: Message, ctype: str, disposition: str | None, filename: str | None
    ) -> None:
        if filename is None and not ctype.startswith("text/"):
            location = part.get("content-location")
            if location:
                tail = _decode_header(str(location), self.charset_hint).rsplit("/", 1)[-1]
                filename = tail.split("?", 1)[0] or None
        name = self._name(filename, ctype)
        estimate = _estimated_size(part)
        if estimate > self.limits.max_attachment_bytes + 4096 and self._too_big(name, estimate):
            return
        data = _payload_bytes(part)
        if self._too_big(name, len(data)):
            return
        content_id = _content_id(part)
        inline = disposition == "inline" or (disposition is None and content_id is not None)
        self.attachments.append(
            Attachment(
                filename=name,
                content_type=ctype,
                data=data,
                size=len(data),
                inline=inline,
                content_id=content_id,
            )
        )

    def _attach_data(
        self, part: Message | None, ctype: str, filename: str | None, data: bytes
    ) -> None:
        name = self._name(filename, ctype)
        if self._too_big(name, len(data)):
            return
        disposition = _disposition(part) if part is not None else None
        content_id = _content_id(part) if part is not None else None
        self.attachments.append(
            Attachment(
                filename=name,
                content_type=ctype,
                data=data,
                size=len(data),
                inline=disposition == "inline",
                content_id=content_id,
            )
        )


def _first_header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items():
        if key.strip().lower() == name:
            return value if isinstance(value, str) else str(value)
    return None


def _serialise(msg: Message) -> bytes:
    try:
        return msg.as_bytes(policy=_SERIALISE_POLICY)
    except Exception:  # noqa: BLE001
        pass
    try:
        return msg.as_string(policy=_SERIALISE_POLICY).encode("utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001
        return b""


# ---------------------------------------------------------------------------------------------
# Assembly


def _limit_html(markup: str, limits: ParseLimits, notes: _Notes, truncated: list[str]) -> str:
    cap = limits.max_html_bytes
    if len(markup) <= cap // 4:
        return markup
    encoded = markup.encode("utf-8", "surrogatepass")
    if len(encoded) <= cap:
        return markup
    notes.add(f"HTML body of {len(encoded)} bytes truncated to {cap} bytes before conversion")
    truncated.append(f"HTML body beyond {cap} bytes not converted to text")
    return encoded[:cap].decode("utf-8", "ignore")


def _body_text(
    segments: list[_Segment],
    limits: ParseLimits,
    deadline: _Deadline,
    notes: _Notes,
    truncated: list[str],
) -> tuple[str, str | None]:
    texts: list[str] = []
    htmls: list[str] = []
    for segment in segments:
        if segment.html is not None and segment.html.strip():
            htmls.append(segment.html)
        if segment.plain is not None and segment.plain.strip():
            texts.append(segment.plain)
        elif segment.html is not None and segment.html.strip():
            deadline.check("HTML conversion")
            texts.append(_html_to_text(_limit_html(segment.html, limits, notes, truncated)))
            deadline.check("HTML conversion")
    text = "\n\n".join(t.strip("\n") for t in texts if t.strip())
    html = "\n".join(htmls) if htmls else None
    return text, html


def _forward_fallback(walker: _Walker, hint: str | None) -> str:
    """Text of a mail that only carries an attached message: the attached message's body."""
    inner = walker.nested[0]
    found: list[_Segment] = []
    walker.walk(inner, 1, found, True)
    body, _ = _body_text(found, walker.limits, walker.deadline, walker.notes, walker.truncated)
    lines = ["---------- Forwarded message ----------"]
    for label, name in (("From", "from"), ("Date", "date"), ("Subject", "subject"), ("To", "to")):
        value = _first_header(inner, name)
        if value:
            lines.append(f"{label}: {_decode_header(value, hint)}")
    return "\n".join(lines) + "\n\n" + body


def _normalised_hash(raw: bytes) -> str:
    data = raw.replace(b"\r\n", b"\n") if b"\r" in raw else raw
    if b"\r" in data:
        data = data.replace(b"\r", b"\n")
    return hashlib.sha256(data).hexdigest()


def _header_flag(headers: _HeaderMap, name: str) -> str | None:
    value = headers.first(name)
    if value is None:
        return None
    return _unfold(value).strip().lower()


def _display_headers(
    headers: _HeaderMap, hint: str | None, truncated: list[str]
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in headers.items[:MAX_HEADERS]:
        decoded = _decode_header(value, hint)
        if len(decoded) > MAX_HEADER_VALUE_CHARS:
            decoded = decoded[:MAX_HEADER_VALUE_CHARS] + "…"
        out.append((_clean(_fix_surrogates(name.strip())), decoded))
    if len(headers.items) > MAX_HEADERS:
        truncated.append(f"header fields after the first {MAX_HEADERS} left out of headers")
    return out


def warm_up(languages: Sequence[str] = DEFAULT_LANGUAGES) -> None:
    """Load the language model, charset detector and HTML converter now (about a second) rather
    than during the first parse; call it when a sync worker starts."""
    _warm_up_languages(languages)
    _detect_codec("Grüße".encode("latin-1"))
    _html_to_text("<p>warm</p>")


def parse_mail(
    raw: bytes,
    *,
    limits: ParseLimits = ParseLimits(),  # noqa: B008 - immutable default
    languages: Sequence[str] = DEFAULT_LANGUAGES,
) -> ParsedMail:
    """Parse one raw RFC 5322 message.

    Raises ParseError only when the message is refused by a hard limit (size, time); every
    other problem is repaired as well as possible and reported in ``warnings``.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"parse_mail() needs bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    deadline = _Deadline(limits.time_limit_s)
    size = len(raw)
    if limits.max_message_bytes is not None and size > limits.max_message_bytes:
        raise ParseError(f"message of {size} bytes exceeds {limits.max_message_bytes} bytes")
    content_hash = _normalised_hash(raw)
    notes = _Notes()
    if not raw.strip():
        notes.add("empty message")
    source = raw
    if source[:1] in (b"\r", b"\n"):
        source = source.lstrip(b"\r\n")
        notes.add("blank lines before the header removed")
    body_unparsed = False
    try:
        fast = _parse_simple(source)
        msg = fast if fast is not None else _PARSER.parsebytes(source)
    except RecursionError:
        # Nesting deeper than Python's recursion limit: keep the headers, leave the body out.
        try:
            msg = _PARSER.parsebytes(source, headersonly=True)
        except Exception as exc:  # noqa: BLE001
            raise ParseError("MIME structure too deeply nested") from exc
        body_unparsed = True
    except Exception as exc:  # noqa: BLE001 - the feed parser is lenient; this is a last resort
        raise ParseError(f"message could not be parsed: {type(exc).__name__}: {exc}") from exc
    deadline.check("MIME parsing")

    headers = _HeaderMap(msg.raw_items())

    walker = _Walker(limits, deadline, notes)
    _tame_headers(msg, notes)
    top_charset = _param(msg, "charset")
    if top_charset and _codec(top_charset) not in (None, "ascii", "utf-8"):
        walker.charset_hint = top_charset
    if body_unparsed:
        walker.truncated.append("body left out: MIME structure nested too deeply to parse")
    else:
        walker.walk(msg, 0, walker.segments, False)
    hint = walker.charset_hint
    truncated = walker.truncated

    # -- headers ---------------------------------------------------------------------------
    subject_raw = headers.first("subject")
    subject = _decode_header(subject_raw, hint) if subject_raw else ""
    if len(subject) > MAX_SUBJECT_CHARS:
        truncated.append(f"subject beyond {MAX_SUBJECT_CHARS} characters")
        subject = subject[:MAX_SUBJECT_CHARS] + "…"
    from_list = _addresses(headers.by_name.get("from"), hint, notes)
    if not from_list:
        from_list = _addresses(headers.by_name.get("sender"), hint, notes)
    from_name, from_addr = from_list[0] if from_list else ("", "")
    date_raw = headers.first("date")
    date = _parse_date(date_raw)
    if date_raw and date is None:
        notes.add("Date header could not be parsed")
    return_path_raw = headers.first("return-path")
    return_path: str | None = None
    if return_path_raw is not None:
        rp = _clean(_fix_surrogates(_unfold(return_path_raw))).strip()
        inner_rp = _ANGLE_ID.search(rp)
        return_path = (inner_rp.group(1) if inner_rp else rp).strip().lower()
    message_id = _single_message_id(headers.first("message-id"))
    in_reply_to = _message_ids(headers.first("in-reply-to"))
    references = _message_ids(" ".join(headers.by_name.get("references", [])))
    deadline.check("header decoding")

    # -- body --------------------------------------------------------------------------------
    text, html = _body_text(walker.segments, limits, deadline, notes, truncated)
    if not text.strip() and walker.nested:
        text = _forward_fallback(walker, hint)
    text = _clean(text)
    is_forward = bool(_FORWARD_SUBJECT.match(subject))
    new_text, quoted_text = split_quoted(text, is_forward=is_forward)
    deadline.check("quote detection")

    language: str | None = None
    sample = new_text[:2000]
    if sum(map(str.isalpha, sample[:400])) < 40:
        stripped_subject = re.sub(r"^(?:\s*\w{1,4}\s*:\s*)+", "", subject)
        sample = (stripped_subject + "\n" + sample)[:2000]
    try:
        language = detect_language(sample, languages)
    except Exception as exc:  # noqa: BLE001 - language is optional metadata
        notes.add(f"language detection failed: {type(exc).__name__}")

    # -- classification ------------------------------------------------------------------------
    precedence = _header_flag(headers, "precedence") or ""
    precedence = precedence.split(";", 1)[0].strip()
    is_bulk_or_list = (
        precedence in ("bulk", "junk", "list")
        or headers.has("list-id")
        or headers.has("list-unsubscribe")
    )
    auto_submitted_value = _header_flag(headers, "auto-submitted")
    sender_local = from_addr.split("@", 1)[0]
    daemon_sender = sender_local in ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
    report_is_dsn = any(
        t in ("delivery-status", "global-delivery-status") for t in walker.report_types
    )
    is_bounce = (
        walker.has_dsn
        or report_is_dsn
        or (
            daemon_sender
            and (
                walker.has_original_part
                or bool(_BOUNCE_SUBJECT.search(subject))
                or return_path == ""
                or bool(_BOUNCE_BODY_MARKER.search(text[:20000]))
            )
        )
    )
    auto_submitted = (
        (auto_submitted_value is not None and auto_submitted_value.split(";", 1)[0].strip() != "no")
        or precedence in ("bulk", "junk", "list", "auto_reply")
        or headers.has("x-auto-response-suppress")
        or headers.has("list-id")
        or any(
            (_header_flag(headers, h) or "yes") not in ("no", "false", "0")
            for h in ("x-autoreply", "x-autorespond", "x-autogenerated", "x-autoreply-from")
            if headers.has(h)
        )
        or is_bulk_or_list
        or is_bounce
        or walker.has_report
        or return_path == ""
        or bool(_AUTOREPLY_SUBJECT.match(subject))
    )
    bounce_original: str | None = None
    if is_bounce:
        candidates = walker.original_ids + walker.original_ids_from_fields
        for name in ("original-message-id", "x-original-message-id"):
            found_id = _single_message_id(headers.first(name))
            if found_id:
                candidates.append(found_id)
        if not candidates:
            for match in _MSGID_LINE.finditer(text[:200000]):
                found = _single_message_id(match.group(1))
                if found and found != message_id:
                    candidates.append(found)
                    break
        if not candidates and in_reply_to:
            candidates = in_reply_to[:1]
        bounce_original = candidates[0] if candidates else None

    display_headers = _display_headers(headers, hint, truncated)
    deadline.check("finishing")

    return ParsedMail(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        to=_addresses(headers.by_name.get("to"), hint, notes),
        cc=_addresses(headers.by_name.get("cc"), hint, notes),
        reply_to=_addresses(headers.by_name.get("reply-to"), hint, notes),
        return_path=return_path,
        date=date,
        text=text,
        html=_clean(html) if html is not None else None,
        new_text=new_text,
        quoted_text=quoted_text,
        attachments=walker.attachments,
        language=language,
        auto_submitted=auto_submitted,
        is_bulk_or_list=is_bulk_or_list,
        is_bounce=is_bounce,
        bounce_original_message_id=bounce_original,
        content_hash=content_hash,
        size=size,
        warnings=notes.as_list(),
        truncated_parts=[_clean(t) for t in truncated],
        headers=display_headers,
    )
