"""`helpdesk import mbox|maildir|eml`: existing mail through the same ingest pipeline as IMAP."""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from mail_sync.ingest import IncomingMail, Ingestor, IngestResult, IngestSummary, MailSource
from store.config import Config
from store.engine import Database
from store.models import Queue, Status
from store.service import Actor, NotFoundError, Service

#: Who changes the status of imported tickets (`--status`), in their history.
IMPORT = Actor("system", "import")

#: Mails per write transaction.
DEFAULT_BATCH = 500


class MailboxNotFound(NotFoundError):
    """The thing to import does not exist or is not a mailbox."""


@dataclass(frozen=True)
class RawMail:
    """One mail to import: where it is from, and its bytes (read lazily)."""

    label: str
    read: Callable[[], bytes]


def mbox_messages(path: Path) -> list[RawMail]:
    """The messages of an mbox file, in file order."""
    if not path.is_file():
        raise MailboxNotFound(f"no mbox file at {path}")
    box = mailbox.mbox(str(path), create=False)
    keys = list(box.keys())
    return [RawMail(f"mbox {path} #{i + 1}", _reader(box, k)) for i, k in enumerate(keys)]


def maildir_messages(path: Path) -> list[RawMail]:
    """The messages of a Maildir (new/ and cur/), oldest file name first."""
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        raise MailboxNotFound(f"{path} is not a Maildir (no cur/ or new/ inside)")
    box = mailbox.Maildir(str(path), factory=None, create=False)
    keys = sorted(box.keys())
    return [RawMail(f"maildir {path} {k}", _reader(box, k)) for k in keys]


def eml_messages(files: Sequence[Path]) -> list[RawMail]:
    """Single-message files (.eml), as given."""
    out = []
    for f in files:
        if not f.is_file():
            raise MailboxNotFound(f"no file {f}")
        out.append(RawMail(f"eml {f}", f.read_bytes))
    return out


def _reader(box: mailbox.Mailbox, key: str) -> Callable[[], bytes]:  # type: ignore[type-arg]
    return lambda: box.get_bytes(key)


def _batches(items: Sequence[RawMail], size: int) -> Iterator[Sequence[RawMail]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def import_mail(
    db: Database,
    mails: Sequence[RawMail],
    *,
    kind: str,
    queue: str | None = None,
    config: Config | None = None,
    service: Service | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_result: Callable[[IngestResult], None] | None = None,
    keep_results: bool = False,
    own_addresses: Iterable[str] = (),
    status: Status | None = None,
) -> IngestSummary:
    """Ingest mails in batches; returns counts (created, threaded, duplicates, quarantined).

    Re-importing the same mail is harmless: it is recognised by Message-ID (or content).
    `status` (solved or closed): the tickets this import created end in that status once
    every mail is in (an archive of finished conversations; `summary.set_status` counts them).
    """
    service = service or Service(db)
    cfg = config or Config()
    if queue:
        async with db.read() as session:
            q = (
                await session.execute(select(Queue).where(func.lower(Queue.name) == queue.lower()))
            ).scalar_one_or_none()
        if q is None:
            raise NotFoundError(f"no queue {queue!r}; add one with `helpdesk queue add {queue!r}`")
        queue = q.name
    ingestor = Ingestor(
        service,
        languages=cfg.languages,
        default_queue=queue,
        own_addresses=list(own_addresses),
        imported=True,
    )
    if status is not None and status not in (Status.SOLVED, Status.CLOSED):
        raise ValueError(f"imported tickets can end solved or closed, not {status.value}")
    summary = IngestSummary()
    created: list[int] = []
    for batch in _batches(mails, max(1, batch_size)):

        def _prepare(batch: Sequence[RawMail] = batch) -> list[IncomingMail]:
            out: list[IncomingMail] = []
            for m in batch:
                try:
                    raw = m.read()
                except OSError as exc:
                    raw = b""
                    item = ingestor.prepare(raw, MailSource(kind, m.label))
                    item.parsed, item.error = None, f"cannot read: {exc.strerror or exc}"
                    out.append(item)
                    continue
                out.append(ingestor.prepare(raw, MailSource(kind, m.label)))
            return out

        items = await asyncio.to_thread(_prepare)
        remaining = items
        while remaining:
            results = await ingestor.ingest_batch(remaining, max_seconds=1.0)
            for r in results:
                summary.add(r, keep=keep_results)
                if r.outcome == "created" and r.ticket_number is not None:
                    created.append(r.ticket_number)
                if on_result is not None:
                    on_result(r)
            remaining = remaining[len(results) :]
    if status is not None:
        for number in created:
            ticket = await service.get_ticket(number)
            if ticket.status in (Status.NEW.value, Status.OPEN.value):  # not merged meanwhile
                await service.update_ticket(IMPORT, number, status=status)
                summary.set_status += 1
    return summary
