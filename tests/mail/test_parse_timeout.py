"""A parse that never ends is cut by the time limit in the sync's parse workers."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from mail_sync import prepare
from mail_sync.parse import ParseLimits
from mail_sync.prepare import MB, MailSource, PrepareJob, prepare_many


def _worker_with_a_hanging_parser(parent: int, languages: Sequence[str]) -> None:
    """The real worker start-up, then a parser that loops forever on one mail (as a
    pathological input for a MIME, HTML or quote stage would)."""
    prepare.parse_worker_init(parent, languages)
    real = prepare.parse_mail

    def parse(raw: bytes, **kw: Any) -> Any:
        while b"HANG" in raw:
            pass
        return real(raw, **kw)

    prepare.parse_mail = parse  # type: ignore[assignment]


def _mail(subject: str) -> bytes:
    return f"From: a@example.com\nSubject: {subject}\nMessage-ID: <{subject}@x>\n\nHello\n".encode()


def test_a_parse_that_never_ends_is_cut_and_the_rest_of_the_batch_parsed() -> None:
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_with_a_hanging_parser,
        initargs=(os.getpid(), ("en",)),
    )
    try:
        _a_hanging_mail_is_cut_in(pool)  # the worker is usable afterwards: the alarm is off
    finally:
        pool.shutdown(cancel_futures=True)


def _a_hanging_mail_is_cut_in(pool: Executor) -> None:
    """first, HANG, last parsed on `pool`: the hanging mail is cut with the time limit's
    error and keeps its raw bytes, the others are parsed, and the pool parses again after."""
    job = PrepareJob(ParseLimits(time_limit_s=0.5), ("en",), 50 * MB)
    mails = [(_mail(s), MailSource(kind="test", label=s), None) for s in ("first", "HANG", "last")]
    started = time.monotonic()
    items = pool.submit(prepare_many, job, mails).result(timeout=60)
    elapsed = time.monotonic() - started
    (again,) = pool.submit(prepare_many, job, mails[:1]).result(timeout=60)
    assert [i.error for i in items] == [None, "parse error: time limit of 0.5s exceeded", None]
    assert [i.parsed.subject if i.parsed else None for i in items] == ["first", None, "last"]
    assert items[1].raw == mails[1][0], "the raw mail is kept for the quarantine"
    assert elapsed < 20
    assert again.error is None and again.parsed is not None


def _busy_parse(real: Any) -> Any:
    """A parser that loops forever on a mail holding HANG and spins 8 ms times N on one
    holding SPIN<N>."""

    def parse(raw: bytes, **kw: Any) -> Any:
        while b"HANG" in raw:
            pass
        if b"SPIN" in raw:
            ms = 8 * int(raw.split(b"SPIN", 1)[1][:1])
            end = time.perf_counter() + ms / 1000
            while time.perf_counter() < end:
                pass
        return real(raw, **kw)

    return parse


def test_a_parse_in_a_thread_that_never_ends_is_cut_too(monkeypatch: Any) -> None:
    """Small batches of the sync and `helpdesk import` parse in a thread, where SIGALRM cannot
    reach: the watchdog cuts them, and the thread goes on with the rest of the batch."""
    monkeypatch.setattr(prepare, "parse_mail", _busy_parse(prepare.parse_mail))
    with ThreadPoolExecutor(1) as pool:
        _a_hanging_mail_is_cut_in(pool)


def test_deadlines_that_fall_as_parses_end_never_escape_the_batch(monkeypatch: Any) -> None:
    """Parses that take about as long as the limit: each mail is either parsed or cut, the
    batch always comes back whole, and no late ParseTimeout hits the thread afterwards."""
    monkeypatch.setattr(prepare, "parse_mail", _busy_parse(prepare.parse_mail))
    job = PrepareJob(ParseLimits(time_limit_s=0.008), ("en",), 50 * MB)
    mails = [
        (_mail(f"SPIN{i % 4} n{i}"), MailSource(kind="test", label=str(i)), None)
        for i in range(200)
    ]

    def batch_then_more_work() -> list[Any]:
        items = prepare_many(job, mails)
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:  # a stray timeout would land here
            sum(range(100))
        return items

    with ThreadPoolExecutor(1) as pool:
        items = pool.submit(batch_then_more_work).result(timeout=120)
    assert len(items) == len(mails)
    cut = [i for i in items if i.error]
    assert {i.error for i in cut} <= {"parse error: time limit of 0.008s exceeded"}
    assert all(i.parsed is None for i in cut)
    assert all(i.parsed is not None for i in items if not i.error)
    # the mails that spin 24 ms were all cut (the watchdog waits for the GIL at most one
    # switch interval, 5 ms), the ones that do not spin mostly parsed
    assert all(i.error for i, m in zip(items, mails, strict=True) if b"SPIN3" in m[0])
    assert sum(1 for i, m in zip(items, mails, strict=True) if b"SPIN0" in m[0] and i.parsed) > 25
