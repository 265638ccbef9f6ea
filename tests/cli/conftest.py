"""Fixtures for the `helpdesk` command: an isolated environment, two ways to run it, a store.

* ``hd(*args, input=None)`` runs the real command in a subprocess (``python -m cli``) —
  for end-to-end checks of exit codes, stderr and pipes.
* ``cli(*args, input=None)`` runs ``cli.app`` in-process with typer's CliRunner — fast.

Both return a :class:`Result`. Every test runs with HOME, the XDG directories and
HELPDESK_CONFIG pointing into its tmp_path, so the user's own config and stores are never
read or written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from store.service import Service

REPO = Path(__file__).resolve().parents[2]
AGENT = "anna"


@dataclass
class Result:
    """What a user sees: exit code, stdout, stderr."""

    code: int
    out: str
    err: str
    args: tuple[str, ...] = ()

    @property
    def err_text(self) -> str:
        """stderr with terminal wrapping undone (whitespace runs collapsed)."""
        return " ".join(self.err.split())

    @property
    def out_text(self) -> str:
        return " ".join(self.out.split())

    def json(self) -> Any:
        return json.loads(self.out)

    def ok(self) -> Result:
        assert self.code == 0, (
            f"helpdesk {' '.join(self.args)} -> {self.code}\n{self.out}\n{self.err}"
        )
        assert "Traceback" not in self.err + self.out
        return self

    def failed(self, code: int) -> Result:
        """Assert the command failed with `code`, a `helpdesk:` message and no traceback."""
        assert self.code == code, (
            f"helpdesk {' '.join(self.args)}: expected exit {code}, got {self.code}\n"
            f"stdout: {self.out}\nstderr: {self.err}"
        )
        assert "Traceback" not in self.err + self.out
        assert "helpdesk:" in self.err or "failed:" in self.err, self.err
        return self


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, XDG dirs and the helpdesk config file all live in tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in [
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_STATE_HOME", ".local/state"),
    ]:
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HELPDESK_CONFIG", str(tmp_path / "config.toml"))
    for var in ("HELPDESK_DB", "HELPDESK_AGENT", "FORCE_COLOR", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    import store.config

    monkeypatch.setattr(store.config, "SYSTEM_CONFIG", tmp_path / "no-system-config.toml")
    return home


@pytest.fixture
def hd() -> Callable[..., Result]:
    """Run `python -m cli ARGS` as a user would (a real process, real exit code)."""

    def run(*args: str, input: str | None = None, timeout: float = 120) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=REPO,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ),
        )
        return Result(proc.returncode, proc.stdout, proc.stderr, args)

    return run


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `cli.app` in-process (typer CliRunner); an escaping exception fails the test."""
    import cli as cli_module

    runner = CliRunner()
    # tables are rendered for a wide terminal so cells are not wrapped mid-word
    monkeypatch.setattr(cli_module.out, "_width", 200)

    def run(*args: str, input: str | None = None) -> Result:
        res = runner.invoke(cli_module.app, list(args), input=input)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            import traceback

            tb = "".join(traceback.format_exception(res.exception))
            pytest.fail(f"helpdesk {' '.join(args)} raised (a user would see a traceback):\n{tb}")
        return Result(res.exit_code, res.stdout, res.stderr, args)

    return run


@dataclass
class Store:
    """An initialised SQLite store with agent `anna` (the acting agent) and two queues."""

    url: str
    path: Path

    def sqlite(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import sqlite3

        with sqlite3.connect(self.path) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def store(
    tmp_path: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """`helpdesk init` on a fresh SQLite file; HELPDESK_DB and HELPDESK_AGENT point at it."""
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}"
    cli("init", "--db", url).ok()
    monkeypatch.setenv("HELPDESK_DB", url)
    monkeypatch.setenv("HELPDESK_AGENT", AGENT)
    cli("queue", "add", "Support", "--address", "Help@Example.com").ok()
    cli("queue", "add", "Billing").ok()
    cli(
        "agent", "add", AGENT, "--name", "Anna Admin", "--email", "anna@example.com", "--admin"
    ).ok()
    yield Store(url, path)


@pytest.fixture
def new_ticket(cli: Callable[..., Result]) -> Callable[..., int]:
    """Create a ticket through the CLI (as the store's agent) and return its number."""

    def create(subject: str = "Printer jam", *extra: str) -> int:
        res = cli(
            "ticket",
            "create",
            "--subject",
            subject,
            "--from",
            "bob@acme.com",
            "--body",
            "It is broken.",
            "--json",
            *extra,
        ).ok()
        return int(res.json()["number"])

    return create


@pytest.fixture
def show(cli: Callable[..., Result]) -> Callable[[int], dict[str, Any]]:
    """`helpdesk ticket show N --json`, parsed."""

    def get(number: int) -> dict[str, Any]:
        data: dict[str, Any] = cli("ticket", "show", str(number), "--json").ok().json()
        return data

    return get


def with_service(url: str, body: Callable[[Service], Awaitable[Any]], now: datetime) -> Any:
    """Run `body` on the store with the service clock at `now` (to make tickets in the past)."""
    import asyncio

    from store.engine import Database

    async def go() -> Any:
        db = Database(url)
        try:
            return await body(Service(db, clock=lambda: now))
        finally:
            await db.dispose()

    return asyncio.run(go())
