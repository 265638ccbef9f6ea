"""A parse that never ends is cut by the time limit in the sync's parse workers."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
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
        job = PrepareJob(ParseLimits(time_limit_s=0.5), ("en",), 50 * MB)
        mails = [
            (_mail(s), MailSource(kind="test", label=s), None) for s in ("first", "HANG", "last")
        ]
        started = time.monotonic()
        items = pool.submit(prepare_many, job, mails).result(timeout=60)
        elapsed = time.monotonic() - started
        # the worker is still usable afterwards (the alarm is off again)
        (again,) = pool.submit(prepare_many, job, mails[:1]).result(timeout=60)
    finally:
        pool.shutdown(cancel_futures=True)
    assert [i.error for i in items] == [None, "parse error: time limit of 0.5s exceeded", None]
    assert [i.parsed.subject if i.parsed else None for i in items] == ["first", None, "last"]
    assert items[1].raw == mails[1][0], "the raw mail is kept for the quarantine"
    assert elapsed < 20
    assert again.error is None and again.parsed is not None
