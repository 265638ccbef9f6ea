"""Parsing raw mail into `IncomingMail`, with no store: what the sync engine's parse worker
processes run. Kept apart from `mail_sync.ingest` (which needs the store and SQLAlchemy) so a
worker starts with the parser's imports only."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mail_sync.parse import ParsedMail, ParseError, ParseLimits, parse_mail, warm_up

__all__ = [
    "MB",
    "IncomingMail",
    "MailSource",
    "ParseTimeout",
    "PrepareJob",
    "human_size",
    "parse_worker_init",
    "prepare_mail",
    "prepare_many",
    "split_header",
]

MB = 1024 * 1024


@dataclass(frozen=True)
class MailSource:
    """Where a raw mail came from (IMAP folder+UID, an mbox entry, a file...)."""

    kind: str
    label: str
    account_id: int | None = None
    folder: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None

    @property
    def seen_key(self) -> tuple[int, str, int, int] | None:
        if (
            self.account_id is None
            or self.folder is None
            or self.uidvalidity is None
            or self.uid is None
        ):
            return None
        return (self.account_id, self.folder, self.uidvalidity, self.uid)


@dataclass
class IncomingMail:
    """A raw mail with its parse result (or the parse error)."""

    raw: bytes
    source: MailSource
    parsed: ParsedMail | None = None
    error: str | None = None
    #: Set when the body was left out because of the message size limit.
    omitted: str | None = None


def split_header(raw: bytes) -> bytes:
    """The header block of a raw message (up to and including the blank line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = raw.find(sep)
        if idx >= 0:
            return raw[: idx + len(sep)]
    return raw[: 256 * 1024]


def human_size(n: int) -> str:
    if n >= MB:
        return f"{n / MB:.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} kB"
    return f"{n} bytes"


def prepare_mail(
    raw: bytes,
    source: MailSource,
    omitted: str | None,
    limits: ParseLimits,
    languages: Sequence[str],
    max_message_bytes: int,
) -> IncomingMail:
    """`Ingestor.prepare` as a plain function (CPU only, no store): raw bytes -> IncomingMail."""
    raw = bytes(raw)
    if omitted is None and len(raw) > max_message_bytes:
        omitted = (
            f"the message is {human_size(len(raw))}, over the "
            f"{human_size(max_message_bytes)} limit: only its header was kept"
        )
        raw = split_header(raw)
    item = IncomingMail(raw=raw, source=source, omitted=omitted)
    limit = limits.time_limit_s or 0.0
    timed = _alarm_installed and limit > 0
    try:
        if timed:
            _arm(limit)
        item.parsed = parse_mail(raw, limits=limits, languages=languages)
        _disarm()
    except ParseTimeout:
        item.error = f"parse error: time limit of {limit:g}s exceeded"
    except ParseError as exc:
        item.error = f"parse error: {exc}"
    except RecursionError:
        item.error = "parse error: MIME structure too deeply nested"
    except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the mail
        item.error = f"parser crashed: {type(exc).__name__}: {exc}"
    finally:
        if timed:
            _disarm()
    return item


class ParseTimeout(BaseException):  # noqa: N818 - not an Exception: nothing may swallow it
    """Raised by SIGALRM in a parse worker when one mail takes longer than the time limit.

    `parse_mail` itself checks its deadline between stages; a stage that never ends (a
    pathological input for the MIME, HTML or quote parser) is cut here, so the worker
    returns the rest of the batch and the mail goes to quarantine."""


#: SIGALRM cuts a parse (`parse_worker_init` installs it: worker processes run mail in their
#: main thread, where signals arrive; a parse in a thread relies on the deadline checks).
_alarm_installed = False
_armed = False


def _on_alarm(_signum: int, _frame: object) -> None:
    if _armed:
        raise ParseTimeout


def _arm(seconds: float) -> None:
    global _armed
    _armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _disarm() -> None:
    global _armed
    _armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)


@dataclass(frozen=True)
class PrepareJob:
    """Parse settings that travel to a worker process (see `prepare_many`)."""

    limits: ParseLimits
    languages: tuple[str, ...]
    max_message_bytes: int


def prepare_many(
    job: PrepareJob,
    mails: Sequence[tuple[bytes, MailSource, str | None]],
    *,
    return_raw: bool = True,
) -> list[IncomingMail]:
    """Parse many mails (in a worker process of the sync engine's parse pool).

    `return_raw=False`: an item whose raw bytes are the ones given comes back with `raw`
    None (the caller has them; not pickled back); one cut to its header keeps its `raw`."""
    out = []
    for raw, src, omitted in mails:
        item = prepare_mail(raw, src, omitted, job.limits, job.languages, job.max_message_bytes)
        if not return_raw and item.raw is raw:
            item.raw = None  # type: ignore[assignment]
        out.append(item)
    return out


def parse_worker_init(parent: int, languages: Sequence[str]) -> None:
    """Start-up of a parse worker: die with the engine's process even when that is killed
    with SIGKILL (Linux PR_SET_PDEATHSIG; a crashed daemon leaves no workers behind), cut a
    parse over the time limit (SIGALRM), load the language model and charset detector now
    rather than in the first parse, then lower the worker's CPU priority."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the engine died before prctl took effect
        os._exit(1)
    global _alarm_installed
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _on_alarm)
        _alarm_installed = True
    warm_up(languages)
    # Workers parse ahead of the engine's write path (one thread, the bottleneck of a large
    # backlog): at a lower priority they take the CPU the writer leaves, not the writer's.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(PARSE_WORKER_NICE)


#: How much lower the parse workers' CPU priority is than the engine's (os.nice increment).
PARSE_WORKER_NICE = 10


_PR_SET_PDEATHSIG = 1
