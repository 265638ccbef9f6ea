"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests.

Uses the Debian server binaries (``/usr/lib/postgresql/<ver>/bin``); set
``HELPDESK_TEST_PG_BIN`` to a directory holding ``initdb``/``postgres``/``psql`` to use
others. When running as root the cluster runs as the ``postgres`` OS user (PostgreSQL
refuses root). The cluster trusts every loopback connection, so URLs carry no
password; the superuser role is always ``postgres``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import (
    ServerProcess,
    ServiceError,
    free_port,
    make_service_dir,
    parent_death_signal,
    running_as_root,
    stop_process,
)

__all__ = ["PostgresServer", "find_pg_bin_dir"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_REQUIRED = ("initdb", "postgres", "psql")


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts) or (0,)


def find_pg_bin_dir() -> Path:
    """Directory with the PostgreSQL server binaries; raises ServiceError if none."""
    candidates: list[Path] = []
    env = os.environ.get("HELPDESK_TEST_PG_BIN")
    if env:
        candidates.append(Path(env))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for cand in candidates:
        if all((cand / name).is_file() and os.access(cand / name, os.X_OK) for name in _REQUIRED):
            return cand
    raise ServiceError(
        "PostgreSQL server binaries (initdb, postgres, psql) not found in "
        "/usr/lib/postgresql/*/bin or on PATH. Install them with "
        "`apt-get install postgresql` (scripts/test.sh does this) or point "
        "HELPDESK_TEST_PG_BIN at their directory."
    )


class PostgresServer(ServerProcess):
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only.

    ``start()`` runs initdb the first time; ``stop()``/``start()`` can be used to
    simulate a database outage (data is kept). ``close()`` stops it and deletes it all.
    """

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_pg_bin_dir()
        self.port = 0
        self.root = make_service_dir("pg")
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self._initialised = False
        self._counter = itertools.count(1)
        self._register()
        self._run_as: str | None = None
        self._version_num: int | None = None
        if running_as_root():
            self._run_as = "postgres"
            try:
                pw = pwd.getpwnam(self._run_as)
            except KeyError as exc:
                raise ServiceError(
                    "running as root but there is no `postgres` OS user to run PostgreSQL as "
                    "(the Debian postgresql package creates it)"
                ) from exc
            # initdb creates data/ inside root; the server writes its socket and log.
            os.chmod(self.root, 0o755)
            self.socket_dir.mkdir()
            self.log_path.touch()
            for path in (self.root, self.socket_dir, self.log_path):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        else:
            self.socket_dir.mkdir()

    # -- life-cycle --------------------------------------------------------------------

    def _popen(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        extra: dict[str, object] = {}
        if self._run_as is not None:
            extra.update(user=self._run_as, group=self._run_as, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "LANG"}
        env.update(LC_ALL="C.UTF-8", TZ="UTC")
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            args, cwd=self.root, env=env, **extra, **kwargs
        )

    def _initdb(self) -> None:
        with open(self.log_path, "ab") as log:
            proc = self._popen(
                [
                    str(self.bin_dir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    self.user,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                    "--no-sync",
                    "--no-instructions",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            if proc.wait(timeout=120) != 0:
                raise ServiceError(f"initdb failed:\n{self.log_tail()}")
        self._initialised = True

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if not self._initialised:
            self._initdb()
        attempts = 3 if not self.port else 1
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port(self.host)
            try:
                self._start_once()
                return
            except ServiceError:
                if attempt == attempts - 1:
                    raise

    def _start_once(self) -> None:
        args = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
        ]
        settings = {
            "listen_addresses": self.host,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "timezone": "UTC",
        }
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self._proc = self._popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGQUIT),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise ServiceError(f"postgres exited during start-up:\n{self.log_tail()}")
            probe = self._psql_run("SELECT 1", "postgres", timeout=5)
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        self._stop_proc()
        raise ServiceError(f"postgres did not become ready:\n{self.log_tail()}")

    def _stop_proc(self) -> None:
        if self._proc is not None:
            # SIGINT = "fast" shutdown: disconnect clients, no waiting for them.
            stop_process(self._proc, signal.SIGINT, timeout=15)
            self._proc = None

    def stop(self) -> None:
        """Stop the server but keep its data (``start()`` brings it back on the same port)."""
        self._stop_proc()

    # -- helpers ----------------------------------------------------------------------

    def _psql_run(
        self, sql: str, database: str, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "5"
        return subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    def psql(self, sql: str, database: str = "postgres", timeout: float = 60) -> str:
        """Run one SQL command as the superuser with psql; returns its unaligned output."""
        res = self._psql_run(sql, database, timeout)
        if res.returncode != 0:
            raise ServiceError(f"psql failed ({sql!r}): {res.stderr.strip()}")
        return res.stdout

    def url(self, name: str, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URL of database *name* (``driver="postgresql"`` gives a libpq DSN)."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{name}"

    def dsn(self, name: str) -> str:
        """Plain ``postgresql://`` DSN for asyncpg.connect()/psql."""
        return self.url(name, driver="postgresql")

    def unique_name(self, prefix: str = "test") -> str:
        return f"{prefix}_{os.getpid()}_{next(self._counter)}"

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE *name* (a unique name when None); returns its asyncpg URL."""
        name = name or self.unique_name()
        if not _NAME_RE.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        if self._version_num is None:
            self._version_num = int(self.psql("SHOW server_version_num").strip())
        # FILE_COPY (PostgreSQL 15+) is several times faster for small template DBs.
        strategy = " STRATEGY FILE_COPY" if self._version_num >= 150000 else ""
        self.psql(f'CREATE DATABASE "{name}"{strategy}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE *name*, disconnecting whoever is still using it."""
        if not _NAME_RE.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
