"""The `helpdesk` command: thin typer commands over the store, the mail engine and the console."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from store.config import Config, ConfigError, load_config, normalise_db_url, write_user_config
from store.engine import Database, StoreError, share_sqlite_store, sqlite_path
from store.sanitize import clean_line, clean_text
from store.service import Actor, ConflictError, NotFoundError, Service, ValidationError

T = TypeVar("T")

# Exit codes: each means one thing (documented in the README).
EXIT_ERROR = 1
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_INVALID = 5
EXIT_DATABASE = 6


class SafeGroup(TyperGroup):
    """Bad input found outside the store (a file, a number, a status name) is one line, not a traceback."""

    def invoke(self, ctx: Any) -> Any:
        import sqlite3

        try:
            return super().invoke(ctx)
        except ValueError as exc:
            fail(str(exc), EXIT_INVALID)
        except sqlite3.Error as exc:
            fail(str(exc), EXIT_DATABASE)
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_ERROR)


app = typer.Typer(
    help="A keyboard-first helpdesk in the terminal.",
    no_args_is_help=False,
    add_completion=False,
    cls=SafeGroup,
)
db_app = typer.Typer(help="Schema and database maintenance.", no_args_is_help=True)
agent_app = typer.Typer(help="Support agents (login = Unix user).", no_args_is_help=True)
queue_app = typer.Typer(help="Ticket queues.", no_args_is_help=True)
ticket_app = typer.Typer(help="Tickets from the command line.", no_args_is_help=True)
canned_app = typer.Typer(help="Canned responses.", no_args_is_help=True)
view_app = typer.Typer(help="Saved views (named queries).", no_args_is_help=True)
priority_app = typer.Typer(help="Priority policy: impact x urgency.", no_args_is_help=True)
status_app = typer.Typer(help="Status labels shown to agents and customers.", no_args_is_help=True)
org_app = typer.Typer(help="Customer organizations.", no_args_is_help=True)
sla_app = typer.Typer(
    help="SLA policies: targets per priority on a business calendar.", no_args_is_help=True
)
rule_app = typer.Typer(help="Rules (triggers): condition query -> actions.", no_args_is_help=True)
calendar_app = typer.Typer(
    help="Business calendars: hours, time zone, holidays.", no_args_is_help=True
)
for sub, name in [
    (db_app, "db"),
    (agent_app, "agent"),
    (queue_app, "queue"),
    (ticket_app, "ticket"),
    (canned_app, "canned"),
    (view_app, "view"),
    (priority_app, "priority"),
    (status_app, "status"),
    (org_app, "org"),
    (sla_app, "sla"),
    (calendar_app, "calendar"),
    (rule_app, "rule"),
]:
    app.add_typer(sub, name=name)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL (sqlite:///PATH or postgresql://...).",
        envvar="HELPDESK_DB",
        show_envvar=True,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Machine-readable output with stable field names.")
]
AsOpt = Annotated[
    str | None, typer.Option("--as", help="Act as this agent login (default: the Unix user).")
]

_state: dict[str, Any] = {"db": None, "as": None}


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One clear line on stderr and a meaningful exit code; never a traceback."""
    err.print(Text(f"helpdesk: {message}", style="red"))
    raise typer.Exit(code)


def config_for(db: str | None) -> Config:
    try:
        return load_config(db or _state["db"])
    except ConfigError as exc:
        fail(str(exc))


def open_db(db: str | None) -> Database:
    cfg = config_for(db)
    try:
        return Database(cfg.db_url)
    except StoreError as exc:
        fail(str(exc), EXIT_DATABASE)


def run(db: str | None, body: Callable[[Service], Awaitable[T]], *, need_schema: bool = True) -> T:
    """Open the store, check its schema, run `body`, translate errors to one line + exit code."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from store.migrate import current_revision, head_revision

    database = open_db(db)
    path = sqlite_path(database.url)
    if need_schema and path is not None and not path.exists():
        fail(
            f"no store at {path}; create one with `helpdesk init --db {path}` (or try `helpdesk demo`)",
            EXIT_DATABASE,
        )

    async def main() -> T:
        try:
            if need_schema:
                rev = await current_revision(database)
                if rev is None:
                    raise StoreError(
                        f"the store at {_display_url(database.url)} has no schema; run `helpdesk init`"
                    )
                if rev != head_revision():
                    raise StoreError(
                        f"the store schema is at {rev}, this helpdesk needs {head_revision()}; "
                        "run `helpdesk db upgrade`"
                    )
            return await body(Service(database))
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except NotFoundError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except ConflictError as exc:
        fail(str(exc), EXIT_CONFLICT)
    except (ValidationError, ValueError) as exc:
        fail(str(exc), EXIT_INVALID)
    except StoreError as exc:
        # plain StoreError is the engine's (URL, schema, filesystem); subclasses are bad input
        fail(str(exc), EXIT_DATABASE if type(exc) is StoreError else EXIT_INVALID)
    except (OperationalError, DBAPIError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        fail(f"cannot use the database {_display_url(database.url)}: {detail}", EXIT_DATABASE)


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(normalise_db_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "<database>"


def me_login(as_: str | None) -> str:
    return as_ or _state.get("as") or os.environ.get("HELPDESK_AGENT") or getpass.getuser()


async def actor_for(service: Service, login: str) -> Actor:
    agent = await service.agent(login)
    if not agent.active:
        raise ValidationError(f"agent {login!r} is disabled")
    return Actor("agent", agent.login, agent.id)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def rel_time(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    secs = int(((now or datetime.now(UTC)) - when).total_seconds())
    future = secs < 0
    secs = abs(secs)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            s = f"{secs // size}{unit}"
            break
    else:
        s = f"{secs}s"
    return f"in {s}" if future else s


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """`2d`, `3h`, `90min`, `1w`, `2026-12-01`, `2026-12-01T09:00` -> aware UTC datetime."""
    from store.timeparse import parse_moment

    return parse_moment(value, now or datetime.now(UTC))


def read_numbers(args: Iterable[str]) -> list[int]:
    """Ticket numbers from arguments; `-` reads them from stdin (one or more per line)."""
    nums: list[int] = []
    for a in args:
        if a == "-":
            for tok in sys.stdin.read().split():
                nums.append(_number(tok))
        else:
            nums.append(_number(a))
    return nums


def _number(tok: str) -> int:
    t = tok.strip().lstrip("#")
    if not t.isdigit():
        raise ValueError(f"not a ticket number: {tok!r}")
    return int(t)


# --------------------------------------------------------------------------- root
@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    db: DbOpt = None,
    as_: AsOpt = None,
) -> None:
    """Without a command, opens the agent console."""
    _state["db"] = db
    _state["as"] = as_
    if ctx.invoked_subcommand is None:
        tui(db=db, as_=as_)


@app.command()
def tui(db: DbOpt = None, as_: AsOpt = None) -> None:
    """Open the agent console as the current Unix user (or --as LOGIN)."""
    login = me_login(as_)

    async def check(service: Service) -> Any:
        try:
            await actor_for(service, login)
        except NotFoundError:
            raise NotFoundError(
                f"you ({login}) are not an agent of this helpdesk; an admin can add you with "
                f'`helpdesk agent add {login} --name "Your Name"`'
            ) from None
        return await service.agent(login)

    # One pass over the store checks the schema and the agent and loads "me" (cold start).
    launch_console(db, login, agent=run(db, check))


def launch_console(db: str | None, login: str, agent: Any = None) -> None:
    """The console on any store, after the checks (`helpdesk_tui.boot` has the fast start)."""
    from helpdesk_tui.app import HelpdeskApp
    from helpdesk_tui.boot import run_console

    cfg = config_for(db)
    database = Database(cfg.db_url, role="console")
    service = Service(database)
    me = agent if agent is not None else asyncio.run(_load_agent(service, login))
    run_console(HelpdeskApp(service, me, cfg))


async def _load_agent(service: Service, login: str) -> Any:
    agent = await service.agent(login)
    await service.db.engine.dispose()  # the console opens its own connections in its own loop
    return agent


@app.command()
def init(
    db: DbOpt = None,
    shared: Annotated[
        Path | None, typer.Option(help="Make a SQLite store in DIR shared by a Unix group.")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Unix group for --shared (default: the DIR's group).")
    ] = None,
    write_config: Annotated[
        bool, typer.Option(help="Remember the database URL in the user config.")
    ] = True,
) -> None:
    """Create or upgrade the schema, and write the config."""
    from store.migrate import upgrade

    url = db or _state["db"]
    if shared is not None:
        shared.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{shared.resolve() / 'helpdesk.db'}"
    cfg = config_for(url)

    async def body(service: Service) -> None:
        await upgrade(service.db)
        # touch the WAL files so they exist with the right permissions
        async with service.db.write() as s:
            from sqlalchemy import text

            await s.execute(text("SELECT 1"))

    run(cfg.db_url, body, need_schema=False)
    path = sqlite_path(cfg.db_url)
    if shared is not None and path is not None:
        import grp

        gname = group or grp.getgrgid(shared.stat().st_gid).gr_name
        try:
            share_sqlite_store(path, gname)
        except (StoreError, PermissionError) as exc:
            fail(f"could not share the store: {exc}")
        out.print(
            Text(f"Shared store for group {gname}: {path} (directory setgid, files group-writable)")
        )
    if write_config and (db or shared):
        where = write_user_config(cfg.db_url)
        out.print(Text(f"Config written: {where}"))
    out.print(Text(f"Store ready: {_display_url(cfg.db_url)}"))


# --------------------------------------------------------------------------- db
@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Apply pending schema migrations."""
    from store.migrate import upgrade

    async def body(service: Service) -> None:
        await upgrade(service.db)

    run(db, body, need_schema=False)
    out.print("Schema is up to date.")


@db_app.command("check")
def db_check(db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Check the connection and that the schema is current (exit 6 if not)."""
    from store.migrate import current_revision, head_revision

    cfg = config_for(db)
    path = sqlite_path(cfg.db_url)
    if path is not None and not path.exists():
        fail(f"no store at {path}; create one with `helpdesk init --db {path}`", EXIT_DATABASE)

    async def body(service: Service) -> dict[str, Any]:
        rev = await current_revision(service.db)
        return {
            "url": _display_url(service.db.url),
            "backend": service.db.dialect,
            "revision": rev,
            "head": head_revision(),
            "ok": rev == head_revision(),
        }

    info = run(db, body, need_schema=False)
    if json_:
        print_json(info)
    else:
        out.print(
            Text(
                f"{info['url']} ({info['backend']}): schema {info['revision'] or 'missing'}, "
                f"expected {info['head']}"
            )
        )
    if info["revision"] is None:
        fail("the store has no schema; run `helpdesk init`", EXIT_DATABASE)
    if not info["ok"]:
        fail("the schema is not current; run `helpdesk db upgrade`", EXIT_DATABASE)


@db_app.command("backup")
def db_backup(path: Path, db: DbOpt = None) -> None:
    """Back up the store: SQLite online backup API, or pg_dump for PostgreSQL."""
    import shutil
    import sqlite3
    import subprocess

    cfg = config_for(db)
    src = sqlite_path(cfg.db_url)
    if src is not None:
        if not src.exists():
            fail(f"no SQLite store at {src}", EXIT_DATABASE)
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as s, sqlite3.connect(path) as d:
            s.backup(d)
        out.print(Text(f"Backed up {src} -> {path}"))
        return
    if shutil.which("pg_dump") is None:
        fail("pg_dump is not installed; install the PostgreSQL client tools", EXIT_ERROR)
    from sqlalchemy.engine import make_url

    u = make_url(cfg.db_url).set(drivername="postgresql")
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    u = u.set(password=None)
    res = subprocess.run(
        [
            "pg_dump",
            "--format=custom",
            "--file",
            str(path),
            u.render_as_string(hide_password=False),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        fail(
            f"pg_dump failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
        )
    out.print(Text(f"Backed up to {path} (pg_dump custom format)"))


# --------------------------------------------------------------------------- agents & queues
@agent_app.command("add")
def agent_add(
    login: str,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    email: Annotated[str | None, typer.Option(help="Mail address.")] = None,
    admin: Annotated[bool, typer.Option(help="Give the admin role.")] = False,
    queue: Annotated[
        list[str] | None, typer.Option(help="A queue this agent works (repeatable).")
    ] = None,
    language: Annotated[
        list[str] | None, typer.Option(help="A language the agent speaks (repeatable).")
    ] = None,
    skill: Annotated[
        list[str] | None, typer.Option(help="A skill, matched against ticket tags (repeatable).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Add an agent."""
    a = run(
        db,
        lambda s: s.add_agent(
            login,
            name or login,
            email,
            admin=admin,
            queues=queue or [],
            languages=language or [],
            skills=skill or [],
        ),
    )
    out.print(Text(f"Agent {a.login} added."))


@agent_app.command("update")
def agent_update(
    login: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    email: Annotated[str | None, typer.Option(help='Mail address ("" clears it).')] = None,
    admin: Annotated[
        bool | None, typer.Option("--admin/--no-admin", help="Give or take the admin role.")
    ] = None,
    queue: Annotated[
        list[str] | None,
        typer.Option(help="A queue this agent works (repeatable; replaces the list)."),
    ] = None,
    language: Annotated[
        list[str] | None,
        typer.Option(help="A language the agent speaks (repeatable; replaces the list)."),
    ] = None,
    skill: Annotated[
        list[str] | None, typer.Option(help="A skill (repeatable; replaces the list).")
    ] = None,
    no_queues: Annotated[bool, typer.Option("--no-queues", help="Remove every queue.")] = False,
    no_languages: Annotated[
        bool, typer.Option("--no-languages", help="Remove every language.")
    ] = False,
    no_skills: Annotated[bool, typer.Option("--no-skills", help="Remove every skill.")] = False,
    db: DbOpt = None,
) -> None:
    """Change an agent: only the options given change; repeatable options replace the list."""
    if name is not None and not name.strip():
        fail("--name cannot be empty", EXIT_INVALID)
    a = run(
        db,
        lambda s: s.update_agent(
            login,
            name=name,
            email=email,
            admin=admin,
            queues=[] if no_queues else queue,
            languages=[] if no_languages else language,
            skills=[] if no_skills else skill,
        ),
    )
    out.print(
        Text(
            f"Agent {a.login}: {clean_line(a.name)}, {a.role}, "
            f"queues {', '.join(q.name for q in a.queues) or '-'}, "
            f"languages {', '.join(a.languages or []) or '-'}, "
            f"skills {', '.join(a.skills or []) or '-'}."
        )
    )


@agent_app.command("list")
def agent_list(db: DbOpt = None, json_: JsonOpt = False) -> None:
    """List agents."""
    agents = run(db, lambda s: s.list_agents())
    if json_:
        print_json(
            [
                {
                    "login": a.login,
                    "name": a.name,
                    "email": a.email,
                    "role": a.role,
                    "active": a.active,
                    "queues": [q.name for q in a.queues],
                    "languages": a.languages,
                    "skills": a.skills,
                }
                for a in agents
            ]
        )
        return
    table = Table("login", "name", "email", "role", "active", "queues", "languages", "skills")
    for a in agents:
        table.add_row(
            Text(a.login),
            Text(clean_line(a.name)),
            Text(a.email or ""),
            Text(a.role),
            Text("yes" if a.active else "no"),
            Text(", ".join(q.name for q in a.queues)),
            Text(clean_line(", ".join(a.languages or []))),
            Text(clean_line(", ".join(a.skills or []))),
        )
    out.print(table)


@agent_app.command("disable")
def agent_disable(login: str, db: DbOpt = None) -> None:
    """Disable an agent (history is kept)."""
    run(db, lambda s: s.set_agent_active(login, False))
    out.print(Text(f"Agent {login} disabled."))


@agent_app.command("enable")
def agent_enable(login: str, db: DbOpt = None) -> None:
    """Re-enable an agent."""
    run(db, lambda s: s.set_agent_active(login, True))
    out.print(Text(f"Agent {login} enabled."))


@queue_app.command("add")
def queue_add(
    name: str,
    address: Annotated[
        list[str] | None, typer.Option(help="Inbound mail address (repeatable).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Add a queue."""
    run(db, lambda s: s.add_queue(name, address or []))
    out.print(Text(f"Queue {name} added."))


@queue_app.command("update")
def queue_update(
    name: str,
    ack: Annotated[
        str | None,
        typer.Option(help="Acknowledge new mail tickets with this shared canned response."),
    ] = None,
    no_ack: Annotated[bool, typer.Option("--no-ack", help="Stop acknowledging.")] = False,
    ack_limit: Annotated[
        int | None,
        typer.Option(min=0, help="Acknowledgements per address per hour (default 3)."),
    ] = None,
    address: Annotated[
        list[str] | None,
        typer.Option(help="Inbound mail address (repeatable; replaces the list)."),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Change a queue's addresses and acknowledgement (only the options given change)."""
    if ack is not None and no_ack:
        fail("give either --ack TEMPLATE or --no-ack, not both", EXIT_INVALID)

    async def body(s: Service) -> tuple[str, dict[str, Any], list[str], list[str]]:
        q, changes = await s.update_queue(
            name, ack=ack, no_ack=no_ack, ack_limit=ack_limit, addresses=address
        )
        return q.name, dict(q.settings or {}), list(q.addresses or []), changes

    qname, settings, addresses, changes = run(db, body)
    if not changes:
        out.print(Text(f"Queue {qname}: nothing changed."))
        return
    ack_text = (
        f"acknowledgement {settings['ack']!r}, at most "
        f"{settings.get('ack_limit_per_hour', 3)} per address per hour"
        if settings.get("ack")
        else "no acknowledgement"
    )
    out.print(Text(f"Queue {qname} updated: {ack_text}; addresses {', '.join(addresses) or '-'}."))


@queue_app.command("show")
def queue_show(name: str, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """One queue: addresses, acknowledgement and assignment settings."""

    async def body(s: Service) -> Any:
        for q in await s.list_queues():
            if q.name.lower() == name.lower():
                return q
        raise NotFoundError(f"no queue {name!r}; `helpdesk queue list` shows them")

    q = run(db, body)
    settings = dict(q.settings or {})
    data = {
        "name": q.name,
        "addresses": list(q.addresses or []),
        "ack": settings.get("ack"),
        "ack_limit_per_hour": settings.get("ack_limit_per_hour", 3),
        "assign": settings.get("assign", "manual"),
        "require_presence": bool(settings.get("require_presence", False)),
        "lead": settings.get("lead"),
    }
    if json_:
        print_json(data)
        return
    out.print(Text(f"Queue {q.name}"))
    out.print(Text(f"  addresses: {', '.join(data['addresses']) or '-'}"))
    out.print(
        Text(
            f"  acknowledgement: {clean_line(str(data['ack']))}, at most "
            f"{data['ack_limit_per_hour']} per address per hour"
            if data["ack"]
            else "  acknowledgement: none"
        )
    )
    out.print(
        Text(
            f"  assignment: {data['assign']}"
            + (", only agents with the console open" if data["require_presence"] else "")
            + (f"; lead {data['lead']}" if data["lead"] else "")
        )
    )


@queue_app.command("list")
def queue_list(db: DbOpt = None, json_: JsonOpt = False) -> None:
    """List queues."""
    queues = run(db, lambda s: s.list_queues())
    if json_:
        print_json([{"name": q.name, "addresses": q.addresses} for q in queues])
        return
    table = Table("queue", "addresses", "acknowledgement")
    for q in queues:
        ack = (q.settings or {}).get("ack")
        table.add_row(
            Text(q.name),
            Text(", ".join(q.addresses)),
            Text(
                f"{ack} (max {(q.settings or {}).get('ack_limit_per_hour', 3)}/h)" if ack else "-"
            ),
        )
    out.print(table)


@org_app.command("add")
def org_add(
    name: str,
    domain: Annotated[list[str] | None, typer.Option(help="Mail domain (repeatable).")] = None,
    tier: Annotated[str | None, typer.Option(help="Tier such as vip.")] = None,
    db: DbOpt = None,
) -> None:
    """Add a customer organization."""
    run(db, lambda s: s.add_organization(name, domain or [], tier))
    out.print(Text(f"Organization {name} added."))


# --------------------------------------------------------------------------- tickets
def ticket_dict(t: Any, labels: dict[str, str] | None = None) -> dict[str, Any]:
    from store.models import Level, Priority

    return {
        "number": t.number,
        "subject": t.subject,
        "status": t.status,
        "status_label": (labels or {}).get(t.status, t.status),
        "priority": Priority(t.priority).label,
        "priority_overridden_by": t.priority_override_by,
        "impact": Level(t.impact).label,
        "urgency": Level(t.urgency).label,
        "queue": t.queue.name if t.queue else None,
        "assignee": t.assignee.login if t.assignee else None,
        "customer": t.customer.email if t.customer else None,
        "customer_name": t.customer.name if t.customer else None,
        "organization": t.organization.name if t.organization else None,
        "tags": [x.name for x in t.tags],
        "language": t.language,
        "channel": t.channel,
        "created_at": t.created_at.isoformat(),
        "updated_at": t.updated_at.isoformat(),
        "first_response_at": t.first_response_at.isoformat() if t.first_response_at else None,
        "solved_at": t.solved_at.isoformat() if t.solved_at else None,
        "closed_at": t.closed_at.isoformat() if t.closed_at else None,
        "postponed_until": t.postponed_until.isoformat() if t.postponed_until else None,
        "version": t.version,
    }


@ticket_app.command("list")
def ticket_list(
    query: Annotated[
        list[str] | None, typer.Argument(help='A query, e.g. status:open assignee:me "printer jam"')
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many tickets.")] = 50,
    order: Annotated[str, typer.Option(help="updated | created | number | next")] = "updated",
    ids: Annotated[
        bool, typer.Option("--ids", help="Print ticket numbers only (for pipes).")
    ] = False,
    as_: AsOpt = None,
    db: DbOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List tickets matching a query (the console's query language)."""
    from store import listing
    from store.query import QueryContext, compile_where, describe, parse

    text_query = " ".join(query or [])
    login = me_login(as_)

    async def body(service: Service) -> tuple[list[Any], list[str], dict[str, str]]:
        from store.query import QueryError

        me_id = None
        with contextlib.suppress(NotFoundError):
            me_id = (await service.agent(login)).id
        try:
            q = parse(text_query)
        except QueryError as exc:
            raise ValidationError(_query_error(text_query, exc)) from None
        if order not in listing.ORDERS:
            raise ValidationError(
                f"unknown order {order!r}; use one of: {', '.join(listing.ORDERS)}"
            )
        ctx = QueryContext(me_agent_id=me_id, now=datetime.now(UTC), dialect=service.db.dialect)
        where = compile_where(q, ctx)
        rows: list[Any] = []
        cursor = None
        async with service.db.read() as session:
            while len(rows) < limit:
                page = await listing.list_page(
                    session, where, order=order, after=cursor, limit=min(200, limit - len(rows))
                )
                rows.extend(page.rows)
                cursor = page.next_cursor
                if not cursor or not page.rows:
                    break
        return rows, describe(q, ctx), await service.status_labels()

    rows, ranges, labels = run(db, body)
    if ids:
        for r in rows:
            sys.stdout.write(f"{r.number}\n")
        return
    if json_:
        from store.models import Priority

        print_json(
            [
                {
                    "number": r.number,
                    "subject": r.subject,
                    "status": r.status,
                    "priority": Priority(r.priority).label,
                    "assignee": r.assignee_login,
                    "customer": r.customer_email,
                    "queue": r.queue_name,
                    "updated_at": r.updated_at.isoformat(),
                }
                for r in rows
            ]
        )
        return
    from store.models import Priority

    for line in ranges:
        err.print(Text(line, style="dim"))
    table = Table("#", "pri", "status", "subject", "customer", "assignee", "updated")
    now = datetime.now(UTC)
    for r in rows:
        table.add_row(
            Text(f"#{r.number}"),
            Text(Priority(r.priority).label),
            Text(labels.get(r.status, r.status)),
            Text(clean_line(r.subject)),
            Text(clean_line(r.customer_name or r.customer_email or "")),
            Text(r.assignee_login or "-"),
            Text(rel_time(r.updated_at, now)),
        )
    out.print(table)


def _query_error(text_query: str, exc: Any) -> str:
    pos = getattr(exc, "position", None)
    if pos:
        return f"bad query: {exc}\n  {text_query}\n  {' ' * (pos - 1)}^"
    return f"bad query: {exc}"


@ticket_app.command("show")
def ticket_show(number: str, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Show a ticket with its thread."""
    n = _number(number)

    async def body(service: Service) -> tuple[Any, dict[str, str]]:
        return await service.ticket_detail(n), await service.status_labels()

    detail, labels = run(db, body)
    t = detail.ticket
    if json_:
        data = ticket_dict(t, labels)
        data["articles"] = [
            {
                "id": a.id,
                "kind": a.kind,
                "internal": a.internal,
                "from": a.from_addr,
                "to": a.to_addrs,
                "subject": a.subject,
                "message_id": a.message_id,
                "body": a.body_text,
                "created_at": a.created_at.isoformat(),
                "delivery_status": a.delivery_status,
                "attachments": [
                    {"filename": x.filename, "mime_type": x.mime_type, "size": x.size}
                    for x in a.attachments
                ],
            }
            for a in detail.articles
        ]
        data["links"] = [{"kind": k, "number": n2} for k, n2 in detail.links]
        data["merged_into"] = detail.merged_into_number
        print_json(data)
        return
    d = ticket_dict(t, labels)
    out.print(Text(f"#{t.number} {clean_line(t.subject)}", style="bold"))
    prio = d["priority"] + (
        f" (set by {d['priority_overridden_by']})"
        if d["priority_overridden_by"]
        else f" (impact {d['impact']} x urgency {d['urgency']})"
    )
    fields = [
        ("status", d["status_label"]),
        ("priority", prio),
        ("queue", d["queue"] or "-"),
        ("assignee", d["assignee"] or "unassigned"),
        ("customer", f"{clean_line(d['customer_name'] or '')} <{d['customer']}>"),
        ("organization", d["organization"] or "-"),
        ("tags", ", ".join(d["tags"]) or "-"),
    ]
    if t.postponed_until:
        fields.append(("postponed until", t.postponed_until.isoformat(timespec="minutes")))
    if detail.merged_into_number:
        fields.append(("merged into", f"#{detail.merged_into_number}"))
    for k, n2 in detail.links:
        fields.append((k, f"#{n2}"))
    for k, v in fields:
        out.print(Text(f"  {k:>15}: {clean_line(str(v))}"))
    for a in detail.articles:
        label = {
            "email_in": "customer",
            "email_out": "reply",
            "note": "INTERNAL NOTE",
            "system": "system",
            "phone": "phone",
        }.get(a.kind, a.kind)
        style = {"note": "yellow", "email_out": "green", "system": "dim"}.get(a.kind, "cyan")
        status = f" [{a.delivery_status}]" if a.delivery_status else ""
        author = a.author_agent.name if a.author_agent is not None else a.from_addr
        out.print(
            Text(
                f"\n── {label}{status} · {a.created_at:%Y-%m-%d %H:%M} · {clean_line(author)}",
                style=style,
            )
        )
        out.print(Text(clean_text(a.body_text)))
        for x in a.attachments:
            out.print(Text(f"  📎 {clean_line(x.filename)} ({x.size} bytes)", style="dim"))


@ticket_app.command("create")
def ticket_create(
    subject: Annotated[str, typer.Option(help="Subject line.")],
    from_: Annotated[str, typer.Option("--from", help="Customer mail address.")],
    name: Annotated[str, typer.Option(help="Customer name.")] = "",
    body: Annotated[
        str | None, typer.Option(help="Message text (else --body-file, else stdin).")
    ] = None,
    body_file: Annotated[
        Path | None, typer.Option(help="Read the message text from a file.")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue name.")] = None,
    priority: Annotated[
        str | None, typer.Option(help="low | normal | high | urgent (overrides the matrix).")
    ] = None,
    impact: Annotated[str, typer.Option(help="low | medium | high")] = "medium",
    urgency: Annotated[str, typer.Option(help="low | medium | high")] = "medium",
    tag: Annotated[list[str] | None, typer.Option(help="Tag (repeatable).")] = None,
    channel: Annotated[str, typer.Option(help="email | phone | web ...")] = "phone",
    as_: AsOpt = None,
    db: DbOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Open a ticket on behalf of a customer."""
    from store import lifecycle
    from store.models import ArticleKind
    from store.service import ArticleInput

    if body is None and body_file is not None:
        body = body_file.read_text()
    if body is None and not sys.stdin.isatty():
        body = sys.stdin.read()
    text_body = body or ""

    async def run_body(service: Service) -> Any:
        actor = await actor_for(service, me_login(as_))
        kind = ArticleKind.PHONE if channel == "phone" else ArticleKind.EMAIL_IN
        return await service.create_ticket(
            actor,
            subject=subject,
            customer_email=from_,
            customer_name=name,
            article=ArticleInput(kind=kind, body=text_body, from_addr=from_, subject=subject),
            queue=queue,
            priority=lifecycle.parse_priority(priority) if priority else None,
            impact=lifecycle.parse_level(impact, "impact"),
            urgency=lifecycle.parse_level(urgency, "urgency"),
            tags=tag or [],
            channel=channel,
        )

    t = run(db, run_body)
    if json_:
        print_json(ticket_dict(t))
    else:
        out.print(Text(f"Created #{t.number}"))


@ticket_app.command("update")
def ticket_update(
    numbers: Annotated[
        list[str], typer.Argument(help="Ticket numbers; '-' reads them from stdin.")
    ],
    status: Annotated[str | None, typer.Option(help="new status")] = None,
    priority: Annotated[
        str | None, typer.Option(help="low|normal|high|urgent, or auto (from the matrix)")
    ] = None,
    impact: Annotated[str | None, typer.Option(help="low | medium | high")] = None,
    urgency: Annotated[str | None, typer.Option(help="low | medium | high")] = None,
    assign: Annotated[
        str | None, typer.Option(help="Agent login; '-' or 'none' unassigns.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="+name adds, -name removes (repeatable).")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Move to this queue.")] = None,
    postpone: Annotated[
        str | None, typer.Option(help="Snooze until: 2d, 3h, 2026-12-01T09:00.")
    ] = None,
    if_version: Annotated[
        int | None, typer.Option(help="Refuse if the ticket changed since this version.")
    ] = None,
    as_: AsOpt = None,
    db: DbOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change tickets; with several numbers, reports which failed and why."""
    from store import lifecycle

    nums = read_numbers(numbers)
    adds = [t[1:] if t.startswith("+") else t for t in (tag or []) if not t.startswith("-")]
    removes = [t[1:] for t in (tag or []) if t.startswith("-")]
    kwargs: dict[str, Any] = {"tags_add": adds, "tags_remove": removes}
    try:
        if status:
            kwargs["status"] = lifecycle.parse_status(status)
        if priority:
            kwargs["priority"] = (
                "auto" if priority.lower() == "auto" else lifecycle.parse_priority(priority)
            )
        if impact:
            kwargs["impact"] = lifecycle.parse_level(impact, "impact")
        if urgency:
            kwargs["urgency"] = lifecycle.parse_level(urgency, "urgency")
        if postpone:
            from store.timeparse import parse_future

            kwargs["postpone_until"] = parse_future(postpone, datetime.now(UTC))
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)
    if assign is not None:
        kwargs["assignee"] = None if assign in ("-", "none", "") else assign
    if queue is not None:
        kwargs["queue"] = queue or None

    async def body(service: Service) -> list[tuple[int, str | None, Any]]:
        actor = await actor_for(service, me_login(as_))
        results: list[tuple[int, str | None, Any]] = []
        for n in nums:
            try:
                t = await service.update_ticket(actor, n, expected_version=if_version, **kwargs)
                results.append((n, None, t))
            except (StoreError, ValueError) as exc:
                codes[n] = (
                    EXIT_CONFLICT
                    if isinstance(exc, ConflictError)
                    else EXIT_NOT_FOUND
                    if isinstance(exc, NotFoundError)
                    else EXIT_INVALID
                )
                results.append((n, str(exc).removeprefix(f"#{n}: "), None))
        return results

    codes: dict[int, int] = {}

    results = run(db, body)
    failed = [(n, e) for n, e, _ in results if e]
    if json_:
        print_json([{"number": n, "ok": e is None, "error": e} for n, e, _ in results])
    else:
        for n, e, t in results:
            if e is None:
                out.print(Text(f"#{n} updated (status {t.status}, version {t.version})"))
        for n, e in failed:
            err.print(Text(f"helpdesk: #{n} failed: {e}", style="red"))
    if failed:
        kinds = set(codes.values())
        raise typer.Exit(kinds.pop() if len(kinds) == 1 else EXIT_ERROR)


def _read_body(body: str | None, body_file: Path | None) -> str:
    if body is not None:
        return body
    if body_file is not None:
        return body_file.read_text()
    if not sys.stdin.isatty():
        return sys.stdin.read()
    fail("give the text with --body, --body-file or on stdin", EXIT_INVALID)


@ticket_app.command("note")
def ticket_note(
    number: str,
    body: Annotated[
        str | None, typer.Option(help="Note text (else --body-file, else stdin).")
    ] = None,
    body_file: Annotated[Path | None, typer.Option(help="Read the note from a file.")] = None,
    as_: AsOpt = None,
    db: DbOpt = None,
) -> None:
    """Add an internal note (never sent to the customer)."""
    n, text_body = _number(number), _read_body(body, body_file)

    async def run_body(service: Service) -> Any:
        return await service.add_note(await actor_for(service, me_login(as_)), n, text_body)

    run(db, run_body)
    out.print(Text(f"Internal note added to #{n}."))


@ticket_app.command("reply")
def ticket_reply(
    number: str,
    body: Annotated[
        str | None, typer.Option(help="Reply text (else --body-file, else stdin).")
    ] = None,
    body_file: Annotated[Path | None, typer.Option(help="Read the reply from a file.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Status after the reply (default: answered).")
    ] = None,
    as_: AsOpt = None,
    db: DbOpt = None,
) -> None:
    """Reply to the customer: stored and queued for delivery by the mail sender."""
    from store import lifecycle

    n, text_body = _number(number), _read_body(body, body_file)
    st = lifecycle.parse_status(status) if status else None

    async def run_body(service: Service) -> Any:
        return await service.add_reply(
            await actor_for(service, me_login(as_)), n, text_body, status=st
        )

    a = run(db, run_body)
    out.print(Text(f"Reply to #{n} queued for delivery to {a.to_addrs}."))


@ticket_app.command("merge")
def ticket_merge(
    number: str,
    into: Annotated[str, typer.Option("--into", help="The ticket that keeps the history.")],
    as_: AsOpt = None,
    db: DbOpt = None,
) -> None:
    """Merge a ticket into another (its history moves; it stays as 'merged' with a pointer)."""
    src, dst = _number(number), _number(into)

    async def body(service: Service) -> Any:
        return await service.merge(await actor_for(service, me_login(as_)), src, dst)

    run(db, body)
    out.print(Text(f"#{src} merged into #{dst}."))


@app.command()
def tick(db: DbOpt = None, json_: JsonOpt = False) -> None:
    """Time-based lifecycle once (for cron): wake postponed tickets, auto-close solved ones."""
    res = run(db, lambda s: s.tick())
    if json_:
        print_json(res)
    else:
        out.print(Text(f"woken: {len(res['woken'])}, closed: {len(res['closed'])}"))


# --------------------------------------------------------------------------- canned & views
@canned_app.command("add")
def canned_add(
    name: str,
    body: Annotated[str | None, typer.Option(help="Template text with {{variables}}.")] = None,
    body_file: Annotated[Path | None, typer.Option(help="Read the template from a file.")] = None,
    owner: Annotated[
        str | None, typer.Option(help="Personal to this agent (default: shared).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Add (or replace) a canned response."""
    text_body = _read_body(body, body_file)
    run(db, lambda s: s.add_canned(name, text_body, owner))
    out.print(Text(f"Canned response {name!r} saved."))


@canned_app.command("list")
def canned_list(db: DbOpt = None, json_: JsonOpt = False) -> None:
    """List canned responses."""
    items = run(db, lambda s: s.list_canned())
    if json_:
        print_json([{"name": c.name, "body": c.body, "shared": c.owner_id is None} for c in items])
        return
    table = Table("name", "shared", "body")
    for c in items:
        table.add_row(
            Text(c.name), Text("yes" if c.owner_id is None else "no"), Text(clean_line(c.body)[:60])
        )
    out.print(table)


@view_app.command("add")
def view_add(
    name: str,
    query: str,
    shared: Annotated[bool, typer.Option(help="Visible to the whole team.")] = False,
    as_: AsOpt = None,
    db: DbOpt = None,
) -> None:
    """Save a query as a view (personal unless --shared)."""
    from store.query import QueryError

    async def body(service: Service) -> Any:
        try:
            return await service.add_view(name, query, None if shared else me_login(as_))
        except QueryError as exc:
            raise ValidationError(_query_error(query, exc)) from None

    run(db, body)
    out.print(Text(f"View {name!r} saved."))


@view_app.command("list")
def view_list(db: DbOpt = None, json_: JsonOpt = False) -> None:
    """List saved views."""
    items = run(db, lambda s: s.list_views())
    if json_:
        print_json(
            [{"name": v.name, "query": v.query, "shared": v.owner_id is None} for v in items]
        )
        return
    table = Table("name", "query", "shared")
    for v in items:
        table.add_row(Text(v.name), Text(v.query), Text("yes" if v.owner_id is None else "no"))
    out.print(table)


# --------------------------------------------------------------------------- priority & status labels
@priority_app.command("matrix")
def priority_matrix(
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="IMPACT/URGENCY=PRIORITY, e.g. high/low=high")
    ] = None,
    db: DbOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show or change the impact x urgency -> priority matrix."""
    from store import lifecycle
    from store.models import Level

    async def body(service: Service) -> Any:
        matrix = await service.priority_matrix()
        if set_:
            for item in set_:
                key, _, prio = item.partition("=")
                imp, _, urg = key.partition("/")
                if not prio or not urg:
                    raise ValidationError(f"cannot read {item!r}; use IMPACT/URGENCY=PRIORITY")
                matrix[
                    (lifecycle.parse_level(imp, "impact"), lifecycle.parse_level(urg, "urgency"))
                ] = lifecycle.parse_priority(prio)
            await service.set_priority_matrix(matrix)
        return matrix

    matrix = run(db, body)
    if json_:
        print_json(lifecycle.matrix_to_setting(matrix))
        return
    table = Table("impact \\ urgency", *[u.label for u in Level])
    for imp in reversed(Level):
        table.add_row(imp.label, *[matrix[(imp, u)].label for u in Level])
    out.print(table)


@status_app.command("label")
def status_label(
    status: str,
    label: Annotated[
        str | None, typer.Argument(help="New display label (omit to show all).")
    ] = None,
    language: Annotated[
        str | None, typer.Option("--lang", help="Label for customer-facing text in this language.")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Rename a status for display (its meaning for SLA, reports and rules stays)."""
    from store import lifecycle

    st = lifecycle.parse_status(status)

    async def body(service: Service) -> dict[str, str]:
        if label:
            await service.set_status_label(st, label, language)
        return await service.status_labels(language)

    labels = run(db, body)
    out.print(Text(f"{st.value}: {labels[st.value]}"))


@status_app.command("list")
def status_list(
    language: Annotated[str | None, typer.Option("--lang")] = None, db: DbOpt = None
) -> None:
    """Statuses and their display labels."""
    labels = run(db, lambda s: s.status_labels(language))
    table = Table("status", "label")
    for k, v in labels.items():
        table.add_row(Text(k), Text(v))
    out.print(table)


# --------------------------------------------------------------------------- SLA
@calendar_app.command("add")
def calendar_add(
    name: str,
    timezone: Annotated[str, typer.Option(help="IANA time zone, e.g. Europe/Riga.")] = "UTC",
    hours: Annotated[
        str, typer.Option(help='Working hours, e.g. "mon-fri 09:00-17:00; sat 10:00-14:00".')
    ] = ("mon-fri 09:00-17:00"),
    country: Annotated[
        str | None, typer.Option(help="Public holidays of this country (e.g. LV).")
    ] = None,
    subdivision: Annotated[str | None, typer.Option(help="Region for public holidays.")] = None,
    holiday: Annotated[
        list[str] | None, typer.Option(help="An extra holiday YYYY-MM-DD (repeatable).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Add a business calendar."""
    from store import sla

    run(
        db,
        lambda s: sla.add_calendar(
            s.db,
            name,
            timezone=timezone,
            hours=hours,
            country=country,
            subdivision=subdivision,
            holidays=holiday or [],
        ),
    )
    out.print(Text(f"Calendar {name} added."))


@calendar_app.command("list")
def calendar_list(db: DbOpt = None) -> None:
    """List calendars."""
    from store import sla

    rows = run(db, lambda s: sla.list_calendars(s.db))
    for row in rows:
        out.print(Text(f"{row.name}: {sla.calendar_of(row).describe()}"))


@calendar_app.command("show")
def calendar_show(name: str, db: DbOpt = None, json_: JsonOpt = False) -> None:
    """One calendar: time zone, hours, added dates and the public holidays of this year and next."""
    from store import businesstime as bt
    from store import sla

    this_year = datetime.now(UTC).year

    async def body(s: Service) -> tuple[Any, bt.Calendar, list[tuple[str, str]]]:
        for row in await sla.list_calendars(s.db):
            if row.name.lower() == name.lower():
                cal = sla.calendar_of(row)  # a broken row is one clear line, inside run()
                public: list[tuple[str, str]] = []
                if cal.country:
                    for year in (this_year, this_year + 1):
                        for day in sorted(bt.public_holidays(cal.country, cal.subdivision, year)):
                            public.append(
                                (day.isoformat(), clean_line(cal.holiday_name(day) or ""))
                            )
                return row, cal, public
        raise NotFoundError(f"no calendar {name!r}; `helpdesk calendar list` shows them")

    row, cal, public = run(db, body)
    added = sorted(d.isoformat() for d in cal.extra_holidays)
    if json_:
        print_json(
            {
                "name": row.name,
                "timezone": cal.timezone,
                "hours": bt.format_hours(cal.hours),
                "country": cal.country,
                "subdivision": cal.subdivision,
                "added_holidays": added,
                "public_holidays": [{"date": d, "name": n} for d, n in public],
            }
        )
        return
    out.print(Text(f"Calendar {row.name}"))
    out.print(Text(f"  time zone: {cal.timezone}"))
    out.print(Text(f"  hours: {bt.format_hours(cal.hours)}"))
    region = (cal.country or "") + (f"-{cal.subdivision}" if cal.subdivision else "")
    out.print(Text(f"  public holidays: {region or 'none (no country)'}"))
    out.print(Text(f"  added dates ({len(added)}): {', '.join(added) or '-'}"))
    if public:
        out.print(Text(f"  public holidays {this_year}-{this_year + 1}:"))
        for d, n in public:
            out.print(Text(f"    {d}  {n}"))


@calendar_app.command("holiday")
def calendar_holiday(
    name: str,
    dates: Annotated[list[str], typer.Argument(help="Dates YYYY-MM-DD.")],
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove these hand-added/imported dates instead.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Add holidays (YYYY-MM-DD) to a calendar, or remove them with --remove."""
    from store import sla

    if remove:

        async def drop(s: Service) -> tuple[list[str], Any]:
            rows = {r.name.lower(): r for r in await sla.list_calendars(s.db)}
            before = set(rows[name.lower()].extra_holidays or []) if name.lower() in rows else set()
            row = await sla.remove_holidays(s.db, name, dates)
            return sorted(before - set(row.extra_holidays or [])), row

        from store import businesstime as bt

        gone, row = run(db, drop)
        missing = sorted({d.isoformat() for d in bt.dates_from(dates)} - set(gone))
        out.print(Text(f"{len(gone)} date(s) removed from {row.name}: {', '.join(gone) or '-'}."))
        if missing:
            out.print(
                Text(f"Not added dates of {row.name}, nothing to remove: {', '.join(missing)}")
            )
        return
    row = run(db, lambda s: sla.add_holidays(s.db, name, dates))
    out.print(Text(f"{len(dates)} holiday(s) added to {row.name}."))


@calendar_app.command("import-ics")
def calendar_import_ics(name: str, path: Path, db: DbOpt = None) -> None:
    """Import all-day holidays from an iCalendar file."""
    from store import sla

    res = run(db, lambda s: sla.import_ics(s.db, name, path))
    dates = sorted(d.isoformat() for d in res.dates)
    out.print(Text(f"Imported into {name}: {len(dates)} date(s) from {res.events} event(s) read."))
    if dates:
        out.print(Text(f"Dates: {', '.join(dates)}"))
    for reason in res.skipped:
        out.print(Text(f"Skipped: {clean_line(reason)}"))


@calendar_app.command("remove")
def calendar_remove(name: str, db: DbOpt = None) -> None:
    """Remove a calendar no policy uses."""
    from store import sla

    run(db, lambda s: sla.remove_calendar(s.db, name))
    out.print(Text(f"Calendar {name} removed."))


@sla_app.command("add")
def sla_add(
    name: str,
    calendar: Annotated[str, typer.Option(help="Business calendar name.")],
    condition: Annotated[str, typer.Option(help="Query the ticket must match (empty: all).")] = "",
    first_response: Annotated[
        str | None, typer.Option(help='e.g. "urgent=30min,high=1h,normal=4h,low=8h" or "4h"')
    ] = None,
    next_response: Annotated[
        str | None, typer.Option(help="Targets after each customer reply.")
    ] = None,
    resolution: Annotated[str | None, typer.Option(help="Targets for solving.")] = None,
    pause_on_hold: Annotated[bool, typer.Option(help="Pause the clocks while on-hold.")] = False,
    position: Annotated[
        int | None, typer.Option(help="Order (first match applies); default last.")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Add an SLA policy and recompute every active ticket's due times."""
    from store import sla

    async def body(s: Service) -> Any:
        await sla.add_policy(
            s.db,
            name,
            calendar=calendar,
            condition=condition,
            position=position,
            pause_on_hold=pause_on_hold,
            targets=sla.parse_targets(first_response, next_response, resolution),
        )
        return await sla.recompute_all(s.db, datetime.now(UTC))

    stats = run(db, body)
    out.print(Text(f"Policy {name} added; {stats.tickets} active tickets recomputed."))


@sla_app.command("list")
def sla_list(db: DbOpt = None) -> None:
    """List SLA policies in the order they are tried."""
    from store import sla

    rows = run(db, lambda s: sla.list_policies(s.db))
    table = Table("#", "policy", "condition", "calendar", "targets")
    for pol, cal in rows:
        table.add_row(
            str(pol.position),
            Text(pol.name),
            Text(pol.condition or "(all)"),
            Text(cal),
            Text("; ".join(sla.format_targets(pol.targets))),
        )
    out.print(table)


@sla_app.command("show")
def sla_show(name: str, db: DbOpt = None) -> None:
    """Show one policy."""
    from store import sla

    pol, cal = run(db, lambda s: sla.get_policy(s.db, name))
    out.print(
        Text(f"{pol.name} (position {pol.position}) when: {pol.condition or '(all tickets)'}")
    )
    out.print(Text(f"calendar {cal.name}: {sla.calendar_of(cal).describe()}"))
    out.print(
        Text(f"on-hold pauses: {'yes' if pol.pause_on_hold else 'no'}; pending always pauses")
    )
    for line in sla.format_targets(pol.targets):
        out.print(Text(f"  {line}"))


@sla_app.command("remove")
def sla_remove(name: str, db: DbOpt = None) -> None:
    """Remove a policy and recompute."""
    from store import sla

    async def body(s: Service) -> Any:
        await sla.remove_policy(s.db, name)
        return await sla.recompute_all(s.db, datetime.now(UTC))

    run(db, body)
    out.print(Text(f"Policy {name} removed."))


@sla_app.command("explain")
def sla_explain(ticket: str, db: DbOpt = None) -> None:
    """Which policy applies to a ticket and how each due time was computed."""
    from store import sla

    n = _number(ticket)
    for line in run(db, lambda s: sla.explain(s.db, n, datetime.now(UTC))):
        out.print(Text(line))


@sla_app.command("recompute")
def sla_recompute(db: DbOpt = None) -> None:
    """Recompute all active tickets' SLA due times (after editing policies or calendars)."""
    from store import sla

    stats = run(db, lambda s: sla.recompute_all(s.db, datetime.now(UTC)))
    out.print(
        Text(
            f"{stats.tickets} tickets, {stats.changed} changed, {len(stats.newly_breached)} newly breached, "
            f"{stats.seconds:.1f}s"
        )
    )


# --------------------------------------------------------------------------- rules & reports
@rule_app.command("add")
def rule_add(
    name: str,
    on: Annotated[str, typer.Option("--on", help="created | customer_replied | updated | time")],
    then: Annotated[
        list[str],
        typer.Option(
            "--then",
            help="ACTION=VALUE, e.g. queue=Baltics, tag+=vip, "
            "assign=auto, canned=Greeting, notify=lead",
        ),
    ],
    if_: Annotated[str, typer.Option("--if", help="Condition query (empty: every ticket).")] = "",
    position: Annotated[int | None, typer.Option(help="Order among the event's rules.")] = None,
    db: DbOpt = None,
) -> None:
    """Add a rule."""
    from store import rules

    run(
        db,
        lambda s: rules.add_rule(s, name, event=on, condition=if_, actions=then, position=position),
    )
    out.print(Text(f"Rule {name} added."))


@rule_app.command("list")
def rule_list(on: Annotated[str | None, typer.Option("--on")] = None, db: DbOpt = None) -> None:
    """List rules by event and order."""
    from store import rules

    items = run(db, lambda s: rules.list_rules(s, on))
    table = Table("#", "rule", "on", "enabled", "if", "then")
    for r in items:
        table.add_row(
            str(r.position),
            Text(r.name),
            Text(r.event),
            "yes" if r.enabled else "no",
            Text(r.condition or "(all)"),
            Text("; ".join(rules.describe_action(a) for a in r.actions)),
        )
    out.print(table)


@rule_app.command("test")
def rule_test(
    target: Annotated[str, typer.Argument(help="A ticket (#1234), a rule name, or a query.")],
    rule: Annotated[str | None, typer.Option(help="Only this rule.")] = None,
    db: DbOpt = None,
) -> None:
    """Dry run: which rules would fire on which tickets, and what they would change."""
    from store import rules

    results = run(db, lambda s: rules.test_rule(s, target, rule=rule))
    if not results:
        out.print("No ticket matches.")
    for r in results:
        what = "; ".join(r.changes) if r.changes else "no change"
        out.print(
            Text(
                f"#{r.ticket}: "
                + (f"{r.rule} ({r.event}) -> {what}" if r.rule else "no rule fires")
            )
        )


@rule_app.command("disable")
def rule_disable(name: str, db: DbOpt = None) -> None:
    """Disable a rule."""
    from store import rules

    run(db, lambda s: rules.disable_rule(s, name))
    out.print(Text(f"Rule {name} disabled."))


@rule_app.command("enable")
def rule_enable(name: str, db: DbOpt = None) -> None:
    """Enable a rule."""
    from store import rules

    run(db, lambda s: rules.enable_rule(s, name))
    out.print(Text(f"Rule {name} enabled."))


@queue_app.command("assign")
def queue_assign(
    queue: str,
    strategy: Annotated[
        str | None, typer.Option(help="manual | round_robin | least_loaded")
    ] = None,
    require_presence: Annotated[
        bool | None, typer.Option(help="Only agents with the console open.")
    ] = None,
    lead: Annotated[str | None, typer.Option(help="Queue lead (notified by escalations).")] = None,
    db: DbOpt = None,
) -> None:
    """Set a queue's assignment strategy."""
    from store import rules

    run(
        db,
        lambda s: rules.set_assignment(
            s, queue, strategy=strategy, require_presence=require_presence, lead=lead
        ),
    )
    out.print(Text(f"Assignment for {queue} updated."))


@app.command()
def report(
    since: Annotated[
        str | None, typer.Option(help="Start date YYYY-MM-DD or 30d (default: 30 days ago).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End date YYYY-MM-DD (default: now).")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's tickets.")] = None,
    calendar: Annotated[
        str | None, typer.Option(help="Business calendar for response times.")
    ] = None,
    db: DbOpt = None,
    json_: JsonOpt = False,
    csv_: Annotated[bool, typer.Option("--csv", help="CSV output.")] = False,
) -> None:
    """Team figures: volumes, backlog, response and resolution times, FCR, SLA, reopens, CSAT."""
    from store import reports

    now = datetime.now(UTC)

    def when(v: str | None) -> datetime | None:
        if v is None:
            return None
        if v[-1:].isalpha():
            return now - (parse_when(v, now) - now)
        return parse_when(v, now)

    flt = reports.ReportFilter(since=when(since), until=when(until), queue=queue, agent=agent)

    async def body(s: Service) -> Any:
        cal = None
        if calendar:
            from store import sla

            rows = {r.name: r for r in await sla.list_calendars(s.db)}
            if calendar not in rows:
                raise NotFoundError(f"no calendar {calendar!r}")
            cal = sla.calendar_of(rows[calendar])
        return await reports.build_report(s.db, flt, now=now, calendar=cal)

    rep = run(db, body)
    if json_:
        sys.stdout.write(rep.to_json() + "\n")
    elif csv_:
        import csv

        csv.writer(sys.stdout).writerows(rep.to_csv_rows())
    else:
        out.print(reports.render_text(rep))


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    tickets: Annotated[int, typer.Option(help="How many tickets to generate.")] = 500,
    db: DbOpt = None,
    open_: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the console when done.")
    ] = True,
    reset: Annotated[bool, typer.Option(help="Delete an existing demo store first.")] = False,
) -> None:
    """Build a realistic demo store (queues, agents incl. you, multilingual threads) and open the console."""
    import platformdirs
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from store.demo import seed_demo
    from store.migrate import current_revision, upgrade

    url = db or _state["db"]
    if url is None:
        path = Path(platformdirs.user_data_dir("helpdesk")) / "demo.db"
        if reset:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    login = me_login(None)

    async def body(service: Service) -> int:
        if await current_revision(service.db) is not None:
            count = len(await service.list_queues())
            if count:
                return -1
        await upgrade(service.db)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        ) as progress:
            task = progress.add_task("Generating tickets", total=tickets)
            n = await seed_demo(
                service,
                tickets=tickets,
                me=login,
                progress=lambda done, total: progress.update(task, completed=done),
            )
        if service.db.is_sqlite:
            from sqlalchemy import text

            async with service.db.engine.connect() as conn:
                await conn.execute(text("ANALYZE"))
        return n

    n = run(url, body, need_schema=False)
    if n < 0:
        err.print(
            Text(f"Using the existing demo store at {_display_url(url)} (--reset to rebuild).")
        )
    else:
        err.print(
            Text(f"Demo store with {n} tickets at {_display_url(url)}; you are agent {login!r}.")
        )
    if open_ and sys.stdin.isatty() and sys.stdout.isatty():
        launch_console(url, login)


def _register_mail() -> None:
    try:
        from mail_sync.cli import register
    except ImportError:
        return

    def get_db() -> Database:
        return open_db(None)

    register(app, get_db)


_register_mail()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
