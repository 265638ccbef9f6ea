"""The SMTP side: deliver committed outbox rows, retry temporary failures, never send twice knowingly."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from typing import Any

from sqlalchemy import or_, select

from store.engine import Database
from store.models import Article, Outbox, Setting, Ticket, utcnow

log = logging.getLogger("helpdesk.outbox")

#: A row left in `sending` by a crash is retried only after this long: the server may have
#: accepted it. Within this window a crash never causes a second delivery; after it the
#: delivery is at-least-once (the same Message-ID lets mail clients drop the duplicate).
UNCERTAIN_AFTER = timedelta(minutes=30)
MAX_BACKOFF = timedelta(hours=2)
MAX_ATTEMPTS = 12

_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def header_safe(value: str) -> str:
    """Fold CR/LF and other controls into spaces: a header value can never start a new header."""
    return _CTRL.sub(" ", value or "").strip()


def parse_recipients(value: str) -> list[tuple[str, str]]:
    """Addresses from a To/Cc string; control characters are refused, not passed on."""
    result = []
    for name, addr in getaddresses([value or ""]):
        addr = addr.strip()
        if not addr:
            continue
        if _CTRL.search(addr) or "@" not in addr or any(c in addr for c in '<>,;"\\ '):
            raise ValueError(f"refusing unsafe recipient address {addr!r}")
        result.append((header_safe(name), addr))
    return result


@dataclass
class SmtpConfig:
    """How to reach the SMTP server; the password is fetched at send time, never stored."""

    host: str = "localhost"
    port: int = 25
    security: str = "plain"  # plain | starttls | tls
    username: str | None = None
    password_env: str | None = None
    password_command: str | None = None
    use_keyring: bool = False
    oauth2_token_command: str | None = None
    from_address: str = "support@localhost"
    from_name: str = "Support"
    timeout: float = 30.0
    subject_tag: str = "[#{number}]"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_setting(cls, value: dict[str, Any] | None) -> SmtpConfig:
        known = {k: v for k, v in (value or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _secret(cfg: SmtpConfig) -> str | None:
    import os
    import shlex
    import subprocess

    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise SmtpPermanent(f"the SMTP password variable {cfg.password_env} is not set")
        return value
    if cfg.password_command:
        res = subprocess.run(
            shlex.split(cfg.password_command), capture_output=True, text=True, timeout=30
        )
        if res.returncode != 0:
            raise SmtpTemporary(f"the SMTP password command failed with exit code {res.returncode}")
        return res.stdout.rstrip("\n")
    if cfg.use_keyring:
        try:
            import keyring
        except ImportError as exc:
            raise SmtpPermanent(
                "keyring is not installed (pip install 'helpdesk[keyring]')"
            ) from exc
        return keyring.get_password("helpdesk-smtp", cfg.username or "")
    return None


class SmtpTemporary(Exception):
    """A failure worth retrying (4xx, network down)."""


class SmtpPermanent(Exception):
    """A failure that retrying will not fix (5xx, bad recipient)."""


def tagged_subject(subject: str, number: int, tag_format: str = "[#{number}]") -> str:
    tag = tag_format.format(number=number)
    subject = header_safe(subject)
    return subject if tag in subject else f"{subject} {tag}".strip()


def build_message(
    cfg: SmtpConfig,
    ticket: Ticket,
    article: Article,
    outbox: Outbox,
    agent_name: str | None = None,
    auto: str | None = None,
    now: datetime | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
) -> bytes:
    """The MIME bytes of one outbound mail: UTF-8 text, threading headers, RFC 3834 marks."""
    msg = EmailMessage()
    sender_name = f"{header_safe(agent_name)} via {cfg.from_name}" if agent_name else cfg.from_name
    queue_addr = (
        ticket.queue.addresses[0] if ticket.queue and ticket.queue.addresses else cfg.from_address
    )
    msg["From"] = formataddr((header_safe(sender_name), queue_addr))
    msg["Reply-To"] = queue_addr
    to = parse_recipients(article.to_addrs)
    if not to:
        raise SmtpPermanent("the reply has no recipient")
    msg["To"] = ", ".join(formataddr(x) for x in to)
    cc = parse_recipients(article.cc_addrs)
    if cc:
        msg["Cc"] = ", ".join(formataddr(x) for x in cc)
    msg["Subject"] = tagged_subject(
        article.subject or ticket.subject, ticket.number, cfg.subject_tag
    )
    msg["Message-ID"] = f"<{outbox.message_id}>"
    msg["Date"] = format_datetime(now or utcnow())
    if article.in_reply_to:
        msg["In-Reply-To"] = f"<{header_safe(article.in_reply_to).strip('<>')}>"
    if article.references:
        msg["References"] = header_safe(article.references)
    if auto:
        msg["Auto-Submitted"] = auto
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Helpdesk-Ticket"] = str(ticket.number)
    msg.set_content(article.body_text or "", charset="utf-8")
    for filename, mime_type, data in attachments or []:
        maintype, _, subtype = (mime_type or "application/octet-stream").partition("/")
        msg.add_attachment(
            data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=header_safe(filename),
        )
    return msg.as_bytes()


def backoff(attempts: int) -> timedelta:
    base = timedelta(seconds=30) * (2 ** max(0, attempts - 1))
    jitter = random.uniform(0.8, 1.2)
    return min(MAX_BACKOFF, base) * jitter


class OutboxSender:
    """Delivers due outbox rows over SMTP, one transaction before and one after each send."""

    def __init__(self, db: Database, cfg: SmtpConfig, clock: Any = utcnow) -> None:
        self.db = db
        self.cfg = cfg
        self.clock = clock

    @classmethod
    async def from_store(cls, db: Database) -> OutboxSender:
        async with db.read() as s:
            row = await s.get(Setting, "smtp")
        return cls(db, SmtpConfig.from_setting(row.value if row else None))

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        try:
            if cfg.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
                if cfg.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
            if cfg.oauth2_token_command:
                import base64
                import shlex
                import subprocess

                tok = subprocess.run(
                    shlex.split(cfg.oauth2_token_command),
                    capture_output=True,
                    text=True,
                    timeout=30,
                ).stdout.strip()
                auth = f"user={cfg.username}\x01auth=Bearer {tok}\x01\x01"
                smtp.docmd("AUTH", "XOAUTH2 " + base64.b64encode(auth.encode()).decode())
            elif cfg.username:
                smtp.login(cfg.username, _secret(self.cfg) or "")
            return smtp
        except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as exc:
            raise SmtpTemporary(
                f"cannot reach the SMTP server {cfg.host}:{cfg.port}: {exc}"
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise SmtpPermanent(f"SMTP authentication failed: {exc.smtp_code}") from exc

    async def _claim(self) -> list[int]:
        now = self.clock()
        async with self.db.write() as s:
            rows = (
                (
                    await s.execute(
                        select(Outbox)
                        .where(
                            or_(
                                (Outbox.status == "queued") & (Outbox.next_attempt_at <= now),
                                (Outbox.status == "sending")
                                & (Outbox.next_attempt_at <= now - UNCERTAIN_AFTER),
                            )
                        )
                        .order_by(Outbox.id)
                        .limit(100)
                    )
                )
                .scalars()
                .all()
            )
            for r in rows:
                if r.status == "sending":
                    log.warning(
                        "outbox=%s state=uncertain action=retry message_id=%s", r.id, r.message_id
                    )
                r.status = "sending"
                r.attempts += 1
                r.next_attempt_at = now
            return [r.id for r in rows]

    async def _render(self, outbox_id: int) -> tuple[bytes, str, list[str]]:
        from store.models import Blob

        async with self.db.write() as s:
            ob = await s.get(Outbox, outbox_id)
            assert ob is not None
            if ob.raw is None:
                article = await s.get(Article, ob.article_id) if ob.article_id else None
                if article is None:
                    raise SmtpPermanent("the article of this mail is gone")
                ticket = (
                    (await s.execute(select(Ticket).where(Ticket.id == article.ticket_id)))
                    .unique()
                    .scalar_one()
                )
                files = []
                for att in article.attachments:
                    blob = await s.get(Blob, att.sha256)
                    if blob is not None:
                        files.append((att.filename, att.mime_type, blob.data))
                agent_name = article.author_agent.name if article.author_agent else None
                auto = {"ack": "auto-replied", "notification": "auto-generated"}.get(ob.kind)
                ob.raw = build_message(
                    self.cfg, ticket, article, ob, agent_name, auto, self.clock(), files
                )
                ob.mail_from = (
                    ticket.queue.addresses[0]
                    if ticket.queue and ticket.queue.addresses
                    else self.cfg.from_address
                )
            return ob.raw, ob.mail_from or self.cfg.from_address, list(ob.rcpt_to)

    async def _finish(self, outbox_id: int, status: str, error: str | None = None) -> None:
        now = self.clock()
        async with self.db.write() as s:
            ob = await s.get(Outbox, outbox_id)
            assert ob is not None
            article = await s.get(Article, ob.article_id) if ob.article_id else None
            if status == "sent":
                ob.status, ob.sent_at, ob.last_error = "sent", now, None
            elif status == "retry" and ob.attempts < MAX_ATTEMPTS:
                ob.status, ob.last_error = "queued", error
                ob.next_attempt_at = now + backoff(ob.attempts)
            else:
                ob.status, ob.last_error = "failed", error
            if article is not None:
                article.delivery_status = ob.status
                article.delivery_error = ob.last_error
            from store.models import Event

            s.add(
                Event(ticket_id=ob.ticket_id, kind="delivery", actor="mail:outbox", created_at=now)
            )

    async def send_due(self) -> dict[str, int]:
        """Send everything due now; returns counts of sent / retry / failed."""
        import asyncio

        counts = {"sent": 0, "retry": 0, "failed": 0}
        ids = await self._claim()
        if not ids:
            return counts
        smtp: smtplib.SMTP | None = None
        for oid in ids:
            try:
                raw, mail_from, rcpts = await self._render(oid)
                if smtp is None:
                    smtp = await asyncio.to_thread(self._connect)
                refused = await asyncio.to_thread(smtp.sendmail, mail_from, rcpts, raw)
                if refused and len(refused) == len(rcpts):
                    raise SmtpPermanent(f"all recipients refused: {refused}")
                await self._finish(oid, "sent")
                counts["sent"] += 1
                log.info("outbox=%s state=sent rcpts=%d", oid, len(rcpts))
            except (SmtpPermanent, ValueError, smtplib.SMTPRecipientsRefused) as exc:
                await self._finish(oid, "failed", _describe(exc))
                counts["failed"] += 1
                log.error("outbox=%s state=failed error=%s", oid, _describe(exc))
            except smtplib.SMTPResponseException as exc:
                kind = "failed" if 500 <= exc.smtp_code < 600 else "retry"
                await self._finish(oid, kind, _describe(exc))
                counts[kind] += 1
                if kind == "retry":
                    smtp = None
            except (SmtpTemporary, OSError, smtplib.SMTPException) as exc:
                await self._finish(oid, "retry", _describe(exc))
                counts["retry"] += 1
                smtp = None
                log.warning("outbox=%s state=retry error=%s", oid, _describe(exc))
        if smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                await asyncio.to_thread(smtp.quit)
        return counts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        msg = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return f"SMTP {exc.smtp_code}: {msg}"
    return str(exc) or type(exc).__name__


def outbox_message_id(domain: str) -> str:
    return make_msgid(domain=domain).strip("<>")
