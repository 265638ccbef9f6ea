"""pytest plugin: real PostgreSQL, Dovecot IMAP and SMTP servers on 127.0.0.1.

Enable with ``pytest_plugins = ["tests.services.plugin"]`` in the root conftest (the
repository root must be on ``sys.path``: ``pythonpath = ["."]`` in pyproject does it),
or ``pytest -p tests.services.plugin``.

Fixtures
--------
``pg_server`` (session)   :class:`~tests.services.postgres.PostgresServer` — ``.host``,
                          ``.port``, ``.create_database(name=None) -> url``,
                          ``.drop_database(name)``, ``.url(name)``, ``.dsn(name)``,
                          ``.psql(sql, database)``, ``.stop()``/``.start()``.
``pg_url`` (function)     URL ``postgresql+asyncpg://postgres@127.0.0.1:PORT/NAME`` of a
                          fresh empty database, dropped afterwards.
``dovecot`` (session)     :class:`~tests.services.dovecot.DovecotServer` — ``.host``,
                          ``.port``, ``.user`` (alice), ``.password`` (secret),
                          ``.append(folder, raw, flags=(), user=None)``,
                          ``.create_folder(name, user=None)``, ``.client(user=None)``,
                          ``.add_user()``, ``.stop()``/``.start()``,
                          ``.reset_uidvalidity(folder, user=None)``.
``imap_account`` (function) :class:`~tests.services.dovecot.ImapAccount` of a new user
                          with an empty mailbox: unpacks as ``host, port, user, password``
                          and has ``.append()``, ``.create_folder()``, ``.client()``,
                          ``.connect()``, ``.uidvalidity()``.
``smtp_server`` (function) :class:`~tests.services.smtp.SMTPServer` — ``.host``, ``.port``,
                          ``.messages``, ``.fail_with(code, stage="data"|"rcpt",
                          times=None)``, ``.wait_for(n)``, ``.stop()``/``.start()``.

A missing server binary makes the tests that need it FAIL (never skip) with a message
saying what to install. A test may ``stop()`` the session's ``dovecot``/``pg_server`` to
simulate an outage: an autouse fixture starts it again (same port, same data) after the
test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from . import ServiceError
from .dovecot import DovecotServer, ImapAccount
from .postgres import PostgresServer
from .smtp import SMTPServer

__all__ = ["dovecot", "imap_account", "pg_server", "pg_url", "smtp_server"]


_session_servers: list[PostgresServer | DovecotServer] = []
_Server = TypeVar("_Server", PostgresServer, DovecotServer)


def _start_or_fail(what: str, start: Callable[[], None]) -> None:
    try:
        start()
    except ServiceError as exc:
        pytest.fail(f"cannot start {what}: {exc}", pytrace=False)


def _session_server(what: str, make: Callable[[], _Server]) -> Iterator[_Server]:
    """Create and start a server for the whole session; stop and delete it at the end."""
    try:
        server = make()
    except ServiceError as exc:
        pytest.fail(f"cannot start {what}: {exc}", pytrace=False)
    try:
        _start_or_fail(what, server.start)
        _session_servers.append(server)
        yield server
    finally:
        with contextlib.suppress(ValueError):
            _session_servers.remove(server)
        server.close()


@pytest.fixture(autouse=True)
def _restart_stopped_services() -> Iterator[None]:
    """A test may stop() a session server to simulate an outage: bring it back after."""
    yield
    for server in _session_servers:
        if not server.running:
            server.start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session (see module docstring)."""
    yield from _session_server("PostgreSQL", PostgresServer)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database; yields its ``postgresql+asyncpg://`` URL."""
    _start_or_fail("PostgreSQL", pg_server.start)
    name = pg_server.unique_name()
    url = pg_server.create_database(name)
    yield url
    try:
        pg_server.start()
        pg_server.drop_database(name)
    except ServiceError:
        pass  # best effort: the whole cluster is deleted at session end anyway


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """A Dovecot IMAP server for the whole session (see module docstring)."""
    yield from _session_server("Dovecot", DovecotServer)


@pytest.fixture
def imap_account(dovecot: DovecotServer) -> ImapAccount:
    """A user no other test has used: an empty INBOX and no other folders."""
    _start_or_fail("Dovecot", dovecot.start)
    return dovecot.add_user()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A recording SMTP server for one test."""
    server = SMTPServer()
    _start_or_fail("SMTP server", server.start)
    try:
        yield server
    finally:
        server.close()
