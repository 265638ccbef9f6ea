"""`helpdesk sync`: one process per store running every account's engine, the minute tick and
the outbox; clean shutdown on SIGTERM/SIGINT; key=value log lines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from mail_sync.accounts import AccountInfo, get_account, list_accounts
from mail_sync.engine import Progress, SyncEngine, SyncSettings, describe
from mail_sync.parse import warm_up
from store.config import Config
from store.engine import Database, StoreError
from store.models import utcnow
from store.service import Service

log = logging.getLogger("helpdesk.mail.daemon")

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
#: On shutdown, the tick and outbox passes under way get this long to finish.
HELPER_GRACE = 30.0


def configure_logging(level: int = logging.INFO) -> None:
    """Structured (key=value) log lines on stderr, for journald or a file."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("helpdesk")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # imapclient logs commands at DEBUG (LOGIN included): keep it quiet whatever the level.
    logging.getLogger("imapclient").setLevel(logging.WARNING)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set `stop` (a second signal exits at once)."""
    loop = asyncio.get_running_loop()

    def _on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("event=forced-exit signal=%s", signame)
            os._exit(130)
        log.info("event=stopping signal=%s", signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, sig.name)


@dataclass
class _Running:
    engine: SyncEngine
    stop: asyncio.Event
    task: asyncio.Task[None]


def _log_progress(p: Progress) -> None:
    if p.event == "batch" and p.summary is not None:
        s = p.summary
        log.info(
            "event=batch account=%s folder=%r created=%d threaded=%d duplicates=%d "
            "quarantined=%d backlog=%d",
            p.account,
            p.folder,
            s.created,
            s.threaded,
            s.duplicates,
            s.quarantined,
            p.backlog,
        )
    elif p.event in ("stopped", "error"):
        pass  # the engine logs these itself, with more context
    elif p.event in ("connected", "locked"):
        log.debug("event=%s account=%s folder=%r", p.event, p.account, p.folder)


async def _tick_loop(service: Service, stop: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        try:
            result = await service.tick()
            from store import rules

            fired = await rules.run_time_rules(service, service.clock())
            if fired:
                log.info("event=time-rules fired=%d", len(fired))
            from mail_sync import csat

            queued = await csat.queue_surveys(service.db, service.clock())
            if queued:
                log.info("event=csat-surveys queued=%d", queued)
            if result["woken"] or result["closed"]:
                log.info(
                    "event=tick woken=%d closed=%d", len(result["woken"]), len(result["closed"])
                )
        except (SQLAlchemyError, StoreError, OSError) as exc:
            log.warning("event=tick-failed error=%r", describe(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def _outbox_loop(
    db: Database, stop: asyncio.Event, interval: float, clock: Callable[[], datetime] = utcnow
) -> None:
    """Deliver queued mail (and owed Sent-folder copies) when an SMTP server is configured
    (Setting 'smtp', `helpdesk mail smtp set`); the configuration is re-read every pass."""
    from mail_sync.outbox import OutboxSender, load_config

    warned = False
    while not stop.is_set():
        try:
            async with db.read() as session:
                cfg = await load_config(session)
            if cfg is None:
                if not warned:
                    log.info("event=outbox-off hint=%r", "helpdesk mail smtp set --host ...")
                    warned = True
            else:
                warned = False
                counts = await OutboxSender(db, cfg, clock=clock).send_due()
                if any(counts.values()):
                    log.info(
                        "event=outbox sent=%d retry=%d failed=%d",
                        counts["sent"],
                        counts["retry"],
                        counts["failed"],
                    )
        except Exception as exc:  # noqa: BLE001 - the outbox must never stop the daemon
            log.warning("event=outbox-failed error=%r", describe(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def run_daemon(
    db: Database,
    accounts: Sequence[AccountInfo | str] | None,
    stop_event: asyncio.Event,
    *,
    config: Config | None = None,
    settings: SyncSettings | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    tick_interval: float = 60.0,
    refresh_interval: float = 60.0,
    outbox_interval: float = 15.0,
    send_outbox: bool = True,
) -> None:
    """Run until `stop_event` is set.

    `accounts=None` runs every enabled account and picks up added, removed or disabled ones
    every `refresh_interval` seconds; otherwise exactly the given accounts (names are
    resolved once; an unknown name raises before anything starts).
    """
    service = Service(db)
    cfg = config or Config()
    fixed: list[AccountInfo] | None = None
    if accounts is not None:
        fixed = [a if isinstance(a, AccountInfo) else await get_account(db, a) for a in accounts]
    progress = on_progress or _log_progress
    running: dict[str, _Running] = {}
    started = time.monotonic()
    log.info(
        "event=daemon-start pid=%d accounts=%s",
        os.getpid(),
        ",".join(a.name for a in fixed) if fixed is not None else "all-enabled",
    )
    # Load the language model now, not when the first mail arrives in IDLE (small batches
    # are parsed in this process; the model takes a second or more to load).
    warm = asyncio.create_task(asyncio.to_thread(warm_up, cfg.languages), name="warm-up")
    helpers = [asyncio.create_task(_tick_loop(service, stop_event, tick_interval), name="tick")]
    helpers.append(warm)
    if send_outbox:
        helpers.append(
            asyncio.create_task(
                _outbox_loop(db, stop_event, outbox_interval, service.clock), name="outbox"
            )
        )

    def start(acct: AccountInfo) -> None:
        engine = SyncEngine(db, acct, cfg, progress, settings=settings, service=service)
        stop = asyncio.Event()
        task = asyncio.create_task(engine.run(stop), name=f"account:{acct.name}")
        running[acct.name] = _Running(engine, stop, task)
        log.info(
            "event=account-start account=%s host=%s folders=%d",
            acct.name,
            acct.host,
            len(acct.folders),
        )

    async def stop_one(name: str) -> None:
        r = running.pop(name)
        r.stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await r.task
        log.info("event=account-stop account=%s", name)

    try:
        while not stop_event.is_set():
            try:
                wanted = fixed if fixed is not None else await list_accounts(db, enabled_only=True)
            except (SQLAlchemyError, StoreError, OSError) as exc:
                log.warning("event=accounts-unreadable error=%r", describe(exc))
                wanted = [r.engine.account for r in running.values()]
            by_name = {a.name: a for a in wanted}
            for name in list(running):
                r = running[name]
                if name not in by_name or by_name[name] != r.engine.account:
                    await stop_one(name)  # removed, disabled or changed: restart below
                elif r.task.done():
                    err = r.task.exception() if not r.task.cancelled() else None
                    log.error(
                        "event=account-ended account=%s error=%r action=restart",
                        name,
                        describe(err) if err else "",
                    )
                    running.pop(name)
            for name, acct in by_name.items():
                if name not in running:
                    start(acct)
            if not by_name and fixed is None and time.monotonic() - started < refresh_interval:
                log.warning("event=no-accounts hint=%r", "helpdesk mail account add ...")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=refresh_interval)
    finally:
        for name in list(running):
            running[name].stop.set()
        await asyncio.gather(*(r.task for r in running.values()), return_exceptions=True)
        running.clear()
        # Let a pass in progress finish (a mail being sent is recorded as sent, not left
        # "sending" for the uncertainty window); stop waiting after HELPER_GRACE seconds.
        await asyncio.wait(helpers, timeout=HELPER_GRACE)
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        log.info("event=daemon-stop pid=%d", os.getpid())
