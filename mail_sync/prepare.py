"""Parsing raw mail into `IncomingMail`, with no store: what the sync engine's parse worker
processes run. Kept apart from `mail_sync.ingest` (which needs the store and SQLAlchemy) so a
worker starts with the parser's imports only."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
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
    # In a worker process's main thread SIGALRM cuts the parse; anywhere else (a thread of
    # the engine or of `import`) the watchdog thread does.
    by_alarm = _alarm_installed and threading.current_thread() is threading.main_thread()
    timer: _Alarm | _WatchdogTimer | None = None
    if limit > 0:
        timer = _Alarm() if by_alarm else _WatchdogTimer()
    try:
        try:
            if timer is not None:
                timer.arm(limit)
            item.parsed = parse_mail(raw, limits=limits, languages=languages)
        finally:
            if timer is not None:
                timer.disarm()
        # A ParseTimeout sent just as the parse ended arrives by here, inside this `try`;
        # after disarm() none is sent.
        _settle()
    except ParseTimeout:
        item.parsed = None
        item.error = f"parse error: time limit of {limit:g}s exceeded"
    except ParseError as exc:
        item.error = f"parse error: {exc}"
    except RecursionError:
        item.error = "parse error: MIME structure too deeply nested"
    except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the mail
        item.error = f"parser crashed: {type(exc).__name__}: {exc}"
    return item


class ParseTimeout(BaseException):  # noqa: N818 - not an Exception: nothing may swallow it
    """Raised in a parse that takes longer than the time limit: by SIGALRM in a worker
    process, by the watchdog thread in a thread (the engine's small batches, `import`).

    `parse_mail` itself checks its deadline between stages; a stage that never ends (a
    pathological input for the MIME, HTML or quote parser) is cut here, so the worker
    returns the rest of the batch and the mail goes to quarantine."""


#: SIGALRM cuts a parse (`parse_worker_init` installs it: worker processes run mail in their
#: main thread, where signals arrive; a parse in another thread has `_WATCHDOG`).
_alarm_installed = False
_armed = False


def _on_alarm(_signum: int, _frame: object) -> None:
    if _armed:
        raise ParseTimeout


def _settle() -> None:
    """A call: the interpreter delivers a pending asynchronous exception at a call."""


class _Alarm:
    """SIGALRM (in a worker process's main thread)."""

    def arm(self, seconds: float) -> None:
        global _armed
        _armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        global _armed
        _armed = False  # a signal already on its way is ignored by _on_alarm
        signal.setitimer(signal.ITIMER_REAL, 0)


class _WatchdogTimer:
    """One parse's deadline, watched by `_WATCHDOG` (threads, where SIGALRM cannot reach)."""

    __slots__ = ("active", "due", "ident")

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.active = False
        self.due = 0.0

    def arm(self, seconds: float) -> None:
        self.due = time.monotonic() + seconds
        self.active = True
        _WATCHDOG.add(self)

    def disarm(self) -> None:
        # No lock is taken here: an exception delivered while holding one would leave it
        # held. Once `active` is False the watchdog sends nothing more; if it is sending
        # right now, wait for it (the exception then arrives in this loop).
        self.active = False
        while _WATCHDOG.sending is self:
            time.sleep(0)
        _WATCHDOG.discard(self)


class _Watchdog:
    """Cuts parses that run in threads: once a timer's deadline has passed, ParseTimeout is
    raised in its thread (`PyThreadState_SetAsyncExc`: at the thread's next bytecode, as the
    alarm handler's exception is in a worker). One daemon thread per process sleeps until
    the nearest deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._timers: set[_WatchdogTimer] = set()
        self._thread: threading.Thread | None = None
        #: The timer whose thread is being sent ParseTimeout (see _WatchdogTimer.disarm).
        self.sending: _WatchdogTimer | None = None

    def add(self, timer: _WatchdogTimer) -> None:
        with self._cond:
            self._timers.add(timer)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="parse-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def discard(self, timer: _WatchdogTimer) -> None:
        with self._cond:
            self._timers.discard(timer)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for timer in [t for t in self._timers if t.due <= now]:
                    self._timers.discard(timer)
                    self.sending = timer
                    if timer.active:  # read after `sending` is set: disarm() waits for us
                        timer.active = False
                        _raise_in_thread(timer.ident, ParseTimeout)
                    self.sending = None
                nearest = min((t.due for t in self._timers), default=now + 60.0)
                self._cond.wait(timeout=max(0.001, nearest - now))


def _raise_in_thread(ident: int, exc: type[BaseException]) -> None:
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    if set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc)) > 1:
        set_async_exc(ctypes.c_ulong(ident), None)  # never more than the one thread


_WATCHDOG = _Watchdog()


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
