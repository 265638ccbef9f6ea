"""Real services (PostgreSQL, Dovecot IMAP, an SMTP sink) started on loopback for tests.

Load the fixtures with ``pytest_plugins = ["tests.services.plugin"]`` (see ``plugin.py``).

This module holds the small helpers the service modules share: free-port lookup,
waiting for a port, and process clean-up that survives an aborted test session.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

__all__ = [
    "ServerProcess",
    "ServiceError",
    "current_user",
    "free_port",
    "make_service_dir",
    "parent_death_signal",
    "register_cleanup",
    "running_as_root",
    "stop_process",
    "unregister_cleanup",
    "wait_for_port",
    "wait_port_closed",
]


class ServiceError(RuntimeError):
    """A test service could not be started or driven."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently free TCP port on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    alive: Callable[[], bool] | None = None,
    banner: bytes | None = None,
) -> None:
    """Wait until *host*:*port* accepts a TCP connection (and sends *banner*, if given).

    ``alive`` is polled between attempts; when it returns False the wait is aborted
    (the server process died), so a broken start fails at once instead of timing out.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ServiceError(f"server for {host}:{port} exited during start-up")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                if banner is None:
                    return
                sock.settimeout(2.0)
                data = sock.recv(256)
                if data.startswith(banner):
                    return
                last_error = ServiceError(f"unexpected greeting {data!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.02)
    raise ServiceError(f"{host}:{port} not accepting connections after {timeout}s: {last_error}")


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until nothing accepts connections on *host*:*port* any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.02)
    raise ServiceError(f"{host}:{port} still accepting connections after {timeout}s")


# --- process life-cycle -----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux/glibc
    _prctl = None


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive *sig* when the test process dies.

    This is what keeps server processes from outliving a pytest that was killed hard
    (SIGKILL, OOM), when neither fixtures' finalisers nor ``atexit`` get to run.
    """
    prctl = _prctl
    if prctl is None:
        return None

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)

    return _preexec


def stop_process(
    proc: subprocess.Popen[bytes],
    sig: int = signal.SIGTERM,
    timeout: float = 10.0,
    *,
    group: bool = False,
) -> None:
    """Send *sig* to *proc* (to its whole process group if *group*), escalate to
    SIGKILL, reap it, and SIGKILL whatever is left in its process group.

    *proc* must have been started with ``start_new_session=True``.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    # Children left in the group (the server's workers) must not survive the master.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


_cleanups: dict[int, Callable[[], None]] = {}


def register_cleanup(fn: Callable[[], None]) -> int:
    """Run *fn* at interpreter exit unless unregistered first; returns a handle."""
    handle = id(fn)
    _cleanups[handle] = fn
    return handle


def unregister_cleanup(handle: int) -> None:
    _cleanups.pop(handle, None)


@atexit.register
def _run_cleanups() -> None:
    for handle in list(_cleanups):
        fn = _cleanups.pop(handle, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                fn()


_OWNER_FILE = ".helpdesk-test-owner"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_service_dir(kind: str) -> Path:
    """A new temporary directory for one service, tagged with our pid.

    Directories left behind by test runs that were killed outright (their owner pid
    is gone) are deleted first, so they do not pile up in /tmp.
    """
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob("helpdesk-test-*"):
        try:
            owner = int((old / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _pid_alive(owner):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"helpdesk-test-{kind}-"))
    (path / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    return path


def running_as_root() -> bool:
    return os.geteuid() == 0


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


class ServerProcess:
    """What the PostgreSQL and Dovecot servers share: one process with its data and log in
    `root`, stopped (and `root` deleted) by `close()`, also when the session is aborted.

    Subclasses set `root` and `log_path`, call `_register()`, and implement `start()` and
    `_stop_proc()`.
    """

    root: Path
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = None

    def _register(self) -> None:
        self._cleanup_handle = register_cleanup(self.close)

    def start(self) -> None:
        raise NotImplementedError

    def _stop_proc(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server and delete its data."""
        try:
            self._stop_proc()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            unregister_cleanup(self._cleanup_handle)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
