"""An SMTP sink on 127.0.0.1 (aiosmtpd) that records what it receives.

It can be told to answer RCPT or DATA with a 4xx/5xx reply (``fail_with``), and be
stopped and started again on the same port to simulate the relay being down. AUTH
PLAIN/LOGIN is offered without TLS; any credentials are accepted unless
``user``/``password`` are set, and successful logins are recorded in ``auth_logins``.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from . import ServiceError, free_port, register_cleanup, unregister_cleanup, wait_port_closed

__all__ = ["ReceivedMessage", "SMTPServer"]

Stage = Literal["rcpt", "data"]


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message: the envelope and the raw bytes after DATA."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_login: str | None = None
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


def _reply_for(code: int, text: str | None) -> str:
    if not 400 <= code <= 599:
        raise ValueError(f"fail_with() wants a 4xx or 5xx code, not {code}")
    enhanced = f"{code // 100}.0.0"
    default = "Temporary failure (test)" if code < 500 else "Permanent failure (test)"
    return f"{code} {enhanced} {text or default}"


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.server._take_failure("rcpt")
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        reply = self.server._take_failure("data")
        if reply is not None:
            return reply
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.server._record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(raw),
                auth_login=login.decode("utf-8", "replace") if login is not None else None,
            )
        )
        return "250 2.0.0 Message accepted for delivery"


class SMTPServer:
    """Recording SMTP server; ``start()``/``stop()`` may be called repeatedly."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port(self.host)
        self.messages: list[ReceivedMessage] = []
        self.auth_logins: list[str] = []
        self.user: str | None = None
        self.password: str | None = None
        self._lock = threading.Condition()
        self._failure: tuple[Stage, str] | None = None
        self._failures_left: int | None = None
        self._controller: Controller | None = None
        self._cleanup_handle = register_cleanup(self.stop)

    # -- control -------------------------------------------------------------------------

    def fail_with(
        self,
        code: int | None,
        *,
        stage: Stage = "data",
        message: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer *stage* (``"rcpt"`` or ``"data"``) with *code* (4xx temporary, 5xx
        permanent) from now on, or only for the next *times* attempts; None restores
        normal delivery."""
        with self._lock:
            if code is None:
                self._failure = None
                self._failures_left = None
                return
            if stage not in ("rcpt", "data"):
                raise ValueError(f"stage must be 'rcpt' or 'data', not {stage!r}")
            self._failure = (stage, _reply_for(code, message))
            self._failures_left = times

    def _take_failure(self, stage: Stage) -> str | None:
        with self._lock:
            if self._failure is None or self._failure[0] != stage:
                return None
            reply = self._failure[1]
            if self._failures_left is not None:
                self._failures_left -= 1
                if self._failures_left <= 0:
                    self._failure = None
                    self._failures_left = None
            return reply

    def _record(self, msg: ReceivedMessage) -> None:
        with self._lock:
            self.messages.append(msg)
            self._lock.notify_all()

    def _authenticate(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        if self.password is not None and (login, password) != (self.user, self.password):
            return AuthResult(success=False, handled=False)
        with self._lock:
            self.auth_logins.append(login)
        return AuthResult(success=True, auth_data=auth_data)

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until at least *count* messages arrived; returns ``messages``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {count} message(s) within {timeout}s, got {len(self.messages)}"
                    )
                self._lock.wait(left)
            return list(self.messages)

    # -- life-cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (on the same port as before, after a ``stop()``)."""
        if self._controller is not None:
            return
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            ready_timeout=5.0,
            server_hostname="smtp.test",
            decode_data=False,
            enable_SMTPUTF8=True,
            auth_require_tls=False,
            authenticator=self._authenticate,
        )
        try:
            controller.start()
        except Exception as exc:
            raise ServiceError(
                f"SMTP server did not start on {self.host}:{self.port}: {exc}"
            ) from exc
        self._controller = controller

    def stop(self) -> None:
        """Stop listening: new connections are refused until ``start()``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
            wait_port_closed(self.host, self.port, timeout=5)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            unregister_cleanup(self._cleanup_handle)

    def __enter__(self) -> SMTPServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
