"""`helpdesk mail csat enable|disable|show`: configure the satisfaction survey (Setting 'csat')."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy import func, select

from mail_sync import csat
from store.engine import Database, StoreError
from store.models import CannedResponse, Queue
from store.sanitize import clean_line
from store.service import Service

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_NOT_FOUND = 3
EXIT_INVALID = 5
EXIT_DATABASE = 6

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class _NotFound(Exception):
    """A named template or queue does not exist (exit 3)."""


def _fail(message: str, code: int) -> NoReturn:
    err.print(Text(f"helpdesk: {clean_line(message)}", style="red"))
    raise typer.Exit(code)


def _runner(get_db: Callable[[], Database]) -> Callable[[Callable[[Database], Awaitable[T]]], T]:
    def run(body: Callable[[Database], Awaitable[T]]) -> T:
        from sqlalchemy.exc import DBAPIError, OperationalError

        from store.migrate import current_revision

        try:
            database = get_db()
        except StoreError as exc:
            _fail(str(exc), EXIT_DATABASE)

        async def main() -> T:
            try:
                if await current_revision(database) is None:
                    raise StoreError("the store has no schema; run `helpdesk init`")
                return await body(database)
            finally:
                await database.dispose()

        try:
            return asyncio.run(main())
        except _NotFound as exc:
            _fail(str(exc), EXIT_NOT_FOUND)
        except ValueError as exc:
            _fail(str(exc), EXIT_INVALID)
        except StoreError as exc:
            _fail(str(exc), EXIT_DATABASE)
        except (OperationalError, DBAPIError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            _fail(f"cannot use the database: {detail}", EXIT_DATABASE)
        except Exception as exc:
            if os.environ.get("HELPDESK_DEBUG"):
                raise
            _fail(f"unexpected error: {exc} (HELPDESK_DEBUG=1 shows where)", EXIT_ERROR)

    return run


async def _queue_names(db: Database, wanted: list[str]) -> list[str]:
    """The stored spelling of each queue name (case-insensitive); _NotFound for unknown ones."""
    async with db.read() as s:
        by_lower = {n.lower(): n for n in (await s.execute(select(Queue.name))).scalars()}
    names = []
    for name in wanted:
        if name.lower() not in by_lower:
            raise _NotFound(f"no queue {name!r}; `helpdesk queue list` shows them")
        names.append(by_lower[name.lower()])
    return names


async def _check_template(db: Database, name: str) -> None:
    async with db.read() as s:
        found = (
            await s.execute(
                select(func.count())
                .select_from(CannedResponse)
                .where(CannedResponse.name == name, CannedResponse.owner_id.is_(None))
            )
        ).scalar_one()
    if not found:
        raise _NotFound(
            f"no shared canned response {name!r}; add one with `helpdesk canned add {name!r}`"
        )


async def _load(db: Database) -> csat.CsatSettings:
    async with db.read() as s:
        return await csat.load_settings(s)


async def _save(db: Database, cfg: csat.CsatSettings) -> None:
    await Service(db).set_setting(csat.SETTING_KEY, cfg.to_value())


def describe(cfg: csat.CsatSettings) -> str:
    """One line saying what the survey does now."""
    if not cfg.enabled:
        return "Satisfaction surveys are off."
    text = "the default text" if not cfg.template else f"the canned response {cfg.template!r}"
    line = (
        f"Satisfaction surveys are on: sent {csat.describe_delay(cfg.delay)} after a ticket "
        f"is solved, with {text}"
    )
    if cfg.skip_queues:
        line += f"; not for queue(s) {', '.join(cfg.skip_queues)}"
    return line + "."


def register_csat(mail_app: typer.Typer, get_db: Callable[[], Database]) -> None:
    """Mount `csat enable|disable|show` on the `mail` sub-app; `get_db` opens the store."""
    csat_app = typer.Typer(
        help="Satisfaction survey mailed after a ticket is solved (replies 1-5 become ratings).",
        no_args_is_help=True,
    )
    mail_app.add_typer(csat_app, name="csat")
    run = _runner(get_db)

    @csat_app.command("enable")
    def enable(
        template: Annotated[
            str | None,
            typer.Option(
                help="Shared canned response to send as the survey (default text if none)."
            ),
        ] = None,
        delay: Annotated[
            str | None, typer.Option(help="How long after the solve: 30min, 1h (default), 2d.")
        ] = None,
        default_text: Annotated[
            bool, typer.Option("--default-text", help="Go back to the built-in survey text.")
        ] = False,
        queue: Annotated[
            list[str] | None,
            typer.Option("--queue", help="Only turn surveys back on for this queue (repeatable)."),
        ] = None,
    ) -> None:
        """Turn the survey on (for every queue not opted out), or back on for --queue Q."""
        try:
            delay_value = csat.parse_delay(delay) if delay is not None else None
        except ValueError as exc:
            _fail(str(exc), EXIT_INVALID)

        async def body(db: Database) -> csat.CsatSettings:
            cfg = await _load(db)
            if queue:
                names = {n.lower() for n in await _queue_names(db, queue)}
                cfg.skip_queues = [q for q in cfg.skip_queues if q.lower() not in names]
            else:
                if template:
                    await _check_template(db, template)
                    cfg.template = template
                elif default_text:
                    cfg.template = None
                if delay_value is not None:
                    cfg.delay_seconds = int(delay_value.total_seconds())
                if not cfg.enabled:
                    cfg.enabled = True
                    # Only tickets solved from now on: enabling never mails old tickets.
                    cfg.enabled_at = datetime.now(UTC).isoformat(timespec="seconds")
            await _save(db, cfg)
            return cfg

        cfg = run(body)
        out.print(Text(describe(cfg)), soft_wrap=True)

    @csat_app.command("disable")
    def disable(
        queue: Annotated[
            list[str] | None,
            typer.Option("--queue", help="Only opt this queue out (repeatable)."),
        ] = None,
    ) -> None:
        """Turn the survey off, or opt one queue out with --queue Q."""

        async def body(db: Database) -> csat.CsatSettings:
            cfg = await _load(db)
            if queue:
                have = {q.lower() for q in cfg.skip_queues}
                for name in await _queue_names(db, queue):
                    if name.lower() not in have:
                        cfg.skip_queues.append(name)
                        have.add(name.lower())
            else:
                cfg.enabled = False
            await _save(db, cfg)
            return cfg

        out.print(Text(describe(run(body))), soft_wrap=True)

    @csat_app.command("show")
    def show(
        json_: Annotated[
            bool, typer.Option("--json", help="Machine-readable output with stable field names.")
        ] = False,
    ) -> None:
        """Show the survey settings."""
        cfg = run(_load)
        if json_:
            data: dict[str, Any] = {
                "enabled": cfg.enabled,
                "template": cfg.template,
                "delay": csat.describe_delay(cfg.delay),
                "delay_seconds": cfg.delay_seconds,
                "skip_queues": cfg.skip_queues,
                "enabled_at": cfg.enabled_at,
            }
            sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
            return
        out.print(Text(describe(cfg)), soft_wrap=True)
