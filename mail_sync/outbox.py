"""The SMTP side: deliver committed outbox rows, retry temporary failures, never send twice knowingly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mail_sync import accounts as acc
from store.engine import Database
from store.models import Article, Blob, Event, Outbox, Setting, Ticket, utcnow
from store.msgid import outgoing_message_id

log = logging.getLogger("helpdesk.outbox")

#: The Setting key holding the SMTP configuration (never a secret, only where to get it).
SETTING_KEY = "smtp"
#: The keyring "service" under which the SMTP password is kept (user name: the SMTP login).
KEYRING_SERVICE = "helpdesk-smtp"
#: A row left in `sending` by a crash is retried only after this long: the server may have
#: accepted it. Within this window a crash never causes a second delivery; after it the
#: delivery is at-least-once (the same Message-ID lets mail clients drop the duplicate).
UNCERTAIN_AFTER = timedelta(minutes=30)
MAX_BACKOFF = timedelta(hours=2)
MAX_ATTEMPTS = 12
#: Copies to the Sent folder are retried for this long after the send, then given up.
SENT_COPY_RETRY_FOR = timedelta(days=1)
#: `last_error` of a *sent* row whose copy to the Sent folder is still owed starts with this.
SENT_COPY_PENDING = "Sent copy pending"
#: Placeholder domain the store uses when the caller did not know ours.
PLACEHOLDER_DOMAIN = "helpdesk.invalid"
#: Outbox states an admin sees; `cancelled` rows are never sent.
STATUSES = ("queued", "sending", "failed", "sent", "cancelled")

_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<?([^<>\s]*)>?", re.IGNORECASE | re.MULTILINE)


def header_safe(value: str | None) -> str:
    """Fold CR/LF and other controls into spaces: a header value can never start a new header."""
    return _CTRL.sub(" ", value or "").strip()


def is_safe_address(addr: str) -> bool:
    """A bare address that can go into a header or an SMTP envelope as it is."""
    return (
        bool(addr)
        and "@" in addr
        and not _CTRL.search(addr)
        and not any(c in addr for c in '<>,;"\\ ')
    )


def parse_recipients(value: str) -> list[tuple[str, str]]:
    """Addresses from a To/Cc string; control characters are refused, not passed on."""
    if _CTRL.search(value or ""):
        raise ValueError(f"refusing recipients with control characters: {header_safe(value)!r}")
    result = []
    for name, addr in getaddresses([value or ""]):
        addr = addr.strip()
        if not addr:
            continue
        if not is_safe_address(addr):
            raise ValueError(f"refusing unsafe recipient address {addr!r}")
        result.append((header_safe(name), addr))
    return result


class SmtpTemporary(Exception):
    """A failure worth retrying (4xx, network down, a password command that failed)."""


class SmtpPermanent(Exception):
    """A failure that retrying will not fix (5xx, bad recipient)."""


class SmtpConfigError(Exception):
    """The SMTP configuration cannot work as given (nothing was sent)."""


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
    #: Show the replying agent's name in From ("Alice via Support").
    agent_names: bool = True
    timeout: float = 30.0
    subject_tag: str = "[#{number}]"
    #: IMAP folder to APPEND a copy of every sent mail to (None: no copies) ...
    sent_folder: str | None = None
    #: ... over the connection of this mail account (`helpdesk mail account add`).
    sent_account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_setting(cls, value: dict[str, Any] | None) -> SmtpConfig:
        known = {k: v for k, v in (value or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_setting(self) -> dict[str, Any]:
        """The JSON kept in Setting 'smtp' (names of secrets, never secrets)."""
        data = asdict(self)
        if not data["extra"]:
            data.pop("extra")
        return data

    @property
    def secret_source(self) -> str:
        """Where the secret comes from, for display (never the secret)."""
        if self.oauth2_token_command:
            return f"oauth2 token command {self.oauth2_token_command!r}"
        if self.password_env:
            state = "set" if os.environ.get(self.password_env) else "NOT set here"
            return f"environment variable {self.password_env} ({state})"
        if self.password_command:
            return f"command {self.password_command!r}"
        if self.use_keyring:
            return f"system keyring ({KEYRING_SERVICE}/{self.username or ''})"
        return "none (no login)" if not self.username else "none"

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2] or PLACEHOLDER_DOMAIN


def config_fields() -> list[str]:
    return [f.name for f in fields(SmtpConfig)]


async def load_config(session: AsyncSession) -> SmtpConfig | None:
    """The stored SMTP configuration, or None when none was set."""
    row = await session.get(Setting, SETTING_KEY)
    if row is None or not isinstance(row.value, dict) or not row.value.get("host"):
        return None
    return SmtpConfig.from_setting(row.value)


def _secret(cfg: SmtpConfig) -> str | None:
    """The SMTP password (env, command or keyring); errors never contain the secret."""
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if not value:
            raise SmtpConfigError(f"the SMTP password variable {cfg.password_env} is not set")
        return value
    if cfg.password_command:
        try:
            return acc.run_secret_command(cfg.password_command, "SMTP password")
        except acc.SecretError as exc:
            raise SmtpConfigError(str(exc)) from None
    if cfg.use_keyring:
        try:
            import keyring
        except ImportError:
            raise SmtpConfigError(
                "keyring is not installed (pip install 'helpdesk[keyring]')"
            ) from None
        try:
            value = keyring.get_password(KEYRING_SERVICE, cfg.username or "")
        except Exception as exc:  # noqa: BLE001 - keyring backends raise anything
            raise SmtpConfigError(f"the system keyring failed: {type(exc).__name__}") from None
        if not value:
            raise SmtpConfigError(
                f"no SMTP password for {cfg.username!r} in the system keyring ({KEYRING_SERVICE})"
            )
        return str(value)
    return None


def keyring_set(username: str, password: str) -> None:
    """Keep the SMTP password in the system keyring."""
    try:
        import keyring

        keyring.set_password(KEYRING_SERVICE, username, password)
    except ImportError:
        raise SmtpConfigError(
            "keyring is not installed (pip install 'helpdesk[keyring]')"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise SmtpConfigError(
            f"cannot store the password in the keyring: {type(exc).__name__}"
        ) from None


def tagged_subject(subject: str, number: int, tag_format: str = "[#{number}]") -> str:
    """The subject with the ticket tag exactly once (`Re: [#12] x` keeps its tag)."""
    tag = tag_format.format(number=number)
    subject = header_safe(subject)
    return subject if tag in subject else f"{subject} {tag}".strip()


def queue_address(ticket: Ticket, cfg: SmtpConfig) -> str:
    """The address mail about this ticket comes from: its queue's, else the configured one."""
    if ticket.queue and ticket.queue.addresses:
        addr = header_safe(ticket.queue.addresses[0])
        if is_safe_address(addr):
            return addr
    return cfg.from_address


def auto_submitted_for(kind: str) -> str | None:
    """RFC 3834 mark by outbox kind: humans none, acknowledgements auto-replied, rest generated."""
    if kind == "reply":
        return None
    return "auto-replied" if kind == "ack" else "auto-generated"


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
    queue_settings = (ticket.queue.settings or {}) if ticket.queue else {}
    team = header_safe(str(queue_settings.get("from_name") or cfg.from_name))
    agent = header_safe(agent_name) if agent_name and cfg.agent_names and not auto else ""
    sender_name = f"{agent} via {team}" if agent else team
    addr = queue_address(ticket, cfg)
    msg["From"] = formataddr((sender_name, addr))
    msg["Reply-To"] = addr
    to = parse_recipients(article.to_addrs)
    if not to:
        raise SmtpPermanent("the mail has no recipient")
    msg["To"] = ", ".join(formataddr(x) for x in to)
    cc = parse_recipients(article.cc_addrs)
    if cc:
        msg["Cc"] = ", ".join(formataddr(x) for x in cc)
    msg["Subject"] = tagged_subject(
        article.subject or ticket.subject, ticket.number, cfg.subject_tag
    )
    msg["Message-ID"] = f"<{header_safe(outbox.message_id).strip('<>')}>"
    msg["Date"] = format_datetime(now or utcnow())
    if article.in_reply_to:
        msg["In-Reply-To"] = f"<{header_safe(article.in_reply_to).strip('<>')}>"
    if article.references:
        msg["References"] = header_safe(article.references)
    if auto:
        msg["Auto-Submitted"] = auto
        msg["X-Auto-Response-Suppress"] = "All"
        if auto == "auto-replied":
            msg["Precedence"] = "auto_reply"
    msg["X-Helpdesk-Ticket"] = str(ticket.number)
    msg.set_content(article.body_text or "", charset="utf-8")
    for filename, mime_type, data in attachments or []:
        maintype, _, subtype = (mime_type or "application/octet-stream").partition("/")
        msg.add_attachment(
            data,
            maintype=header_safe(maintype) or "application",
            subtype=header_safe(subtype) or "octet-stream",
            filename=header_safe(filename) or "attachment",
        )
    return msg.as_bytes()


def backoff(attempts: int) -> timedelta:
    base = timedelta(seconds=30) * (2 ** max(0, min(attempts, 20) - 1))
    jitter = random.uniform(0.8, 1.2)
    return min(MAX_BACKOFF, base) * jitter


def return_path_of(raw: bytes | None) -> str | None:
    """The Return-Path of a raw mail ('' for `<>`), None when it has none."""
    if not raw:
        return None
    head = raw[: raw.find(b"\r\n\r\n") if b"\r\n\r\n" in raw else 256 * 1024]
    m = _RETURN_PATH.search(head)
    return m.group(1).decode("ascii", "replace").strip().lower() if m else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(
            f"{rcpt} refused: SMTP {code}"
            + (f" {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}" if msg else "")
            for rcpt, (code, msg) in exc.recipients.items()
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        msg = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        return f"SMTP {exc.smtp_code}: {msg}"
    return str(exc) or type(exc).__name__


def connect(cfg: SmtpConfig) -> smtplib.SMTP:
    """Connect, EHLO, STARTTLS/TLS and log in (blocking; run it in a thread)."""
    try:
        if cfg.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                cfg.host, cfg.port, timeout=cfg.timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        raise SmtpTemporary(f"cannot reach the SMTP server {cfg.host}:{cfg.port}: {exc}") from exc
    try:
        smtp.ehlo()
        if cfg.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if cfg.oauth2_token_command:
            try:
                token = acc.run_secret_command(cfg.oauth2_token_command, "OAuth2 token")
            except acc.SecretError as exc:
                raise SmtpConfigError(str(exc)) from None
            blob = f"user={cfg.username or ''}\x01auth=Bearer {token}\x01\x01"

            def xoauth2(challenge: bytes | None = None) -> str:
                # On failure the server sends a JSON challenge; an empty answer ends it.
                return blob if challenge is None else ""

            smtp.auth("XOAUTH2", xoauth2)  # type: ignore[arg-type]
        elif cfg.username:
            smtp.login(cfg.username, _secret(cfg) or "")
        return smtp
    except BaseException as exc:
        with contextlib.suppress(Exception):
            smtp.close()
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            raise SmtpConfigError(f"SMTP authentication failed: {_describe(exc)}") from None
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            raise SmtpConfigError(
                f"the SMTP server {cfg.host} does not offer that: {exc}"
            ) from None
        if isinstance(exc, ssl.SSLError):
            raise SmtpConfigError(f"TLS with {cfg.host}:{cfg.port} failed: {exc}") from None
        if isinstance(exc, OSError | smtplib.SMTPException):
            raise SmtpTemporary(f"SMTP server {cfg.host}:{cfg.port}: {_describe(exc)}") from exc
        raise


def probe(cfg: SmtpConfig) -> dict[str, Any]:
    """Connect and log in, then quit: what `helpdesk mail smtp test` reports (blocking)."""
    smtp = connect(cfg)
    try:
        features = sorted(k.upper() for k in (smtp.esmtp_features or {}))
        return {
            "host": cfg.host,
            "port": cfg.port,
            "security": cfg.security,
            "authenticated": bool(cfg.username or cfg.oauth2_token_command),
            "user": cfg.username,
            "features": features,
        }
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()


# --------------------------------------------------------------------------- Sent folder
def _imap_append(account: acc.AccountInfo, folder: str, raw: bytes, when: datetime) -> None:
    """APPEND one mail to a folder (created when missing), flagged \\Seen (blocking)."""
    from imapclient import IMAPClient
    from imapclient.exceptions import IMAPClientError

    context = ssl.create_default_context()
    client = IMAPClient(
        account.host,
        port=account.port,
        use_uid=True,
        ssl=account.security == "tls",
        ssl_context=context if account.security == "tls" else None,
        timeout=30,
    )
    try:
        if account.security == "starttls":
            client.starttls(context)
        if account.oauth2_token_command:
            client.oauth2_login(account.username, acc.get_oauth2_token(account))
        else:
            client.login(account.username, acc.get_password(account))
        try:
            client.append(folder, raw, flags=(rb"\Seen",), msg_time=when)
        except IMAPClientError as exc:
            if "TRYCREATE" not in str(exc).upper() and client.folder_exists(folder):
                raise
            client.create_folder(folder)
            client.append(folder, raw, flags=(rb"\Seen",), msg_time=when)
        with contextlib.suppress(Exception):
            client.logout()
    finally:
        with contextlib.suppress(Exception):
            client.shutdown()


class OutboxSender:
    """Delivers due outbox rows over SMTP, one transaction before and one after each send."""

    def __init__(
        self,
        db: Database,
        cfg: SmtpConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.cfg = cfg
        self.clock = clock
        #: (outbox id, sent|retry|failed, error) of the last `send_due`, for the CLI.
        self.results: list[tuple[int, str, str | None]] = []

    @classmethod
    async def from_store(cls, db: Database, clock: Callable[[], datetime] = utcnow) -> OutboxSender:
        async with db.read() as s:
            cfg = await load_config(s)
        if cfg is None:
            raise SmtpConfigError(
                "no SMTP server is configured; set one with `helpdesk mail smtp set --host ...`"
            )
        return cls(db, cfg, clock=clock)

    def _connect(self) -> smtplib.SMTP:
        return connect(self.cfg)

    async def _claim(self) -> list[int]:
        now = self.clock()
        async with self.db.write() as s:
            stmt = (
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
            if self.db.dialect == "postgresql":
                # A second sender (`mail send-queued` next to the daemon) skips claimed rows.
                stmt = stmt.with_for_update(skip_locked=True)
            rows = (await s.execute(stmt)).scalars().all()
            for r in rows:
                if r.status == "sending":
                    log.warning(
                        "outbox=%s state=uncertain action=retry message_id=%s", r.id, r.message_id
                    )
                r.status = "sending"
                r.attempts += 1
                r.next_attempt_at = now
            return [r.id for r in rows]

    async def _fix_message_id(
        self, s: AsyncSession, ob: Outbox, article: Article, ticket: Ticket
    ) -> None:
        """Give a placeholder or missing Message-ID our real domain before it goes out.

        The HMAC does not cover the domain, so replies still verify; the article keeps the
        ID that went out, so the customer's answer threads by it too.
        """
        domain = queue_address(ticket, self.cfg).rpartition("@")[2] or self.cfg.domain
        if domain == PLACEHOLDER_DOMAIN:
            return
        # Earlier replies of the thread went out under the same rule: name them as sent.
        placeholder = "@" + PLACEHOLDER_DOMAIN + ">"
        if article.in_reply_to and article.in_reply_to.strip("<>").endswith(
            "@" + PLACEHOLDER_DOMAIN
        ):
            article.in_reply_to = article.in_reply_to.strip("<>").rpartition("@")[0] + "@" + domain
        if article.references and placeholder in article.references:
            article.references = article.references.replace(placeholder, f"@{domain}>")
        mid = (ob.message_id or "").strip("<>")
        if mid and not mid.endswith("@" + PLACEHOLDER_DOMAIN):
            return
        if mid:
            new = mid.rpartition("@")[0] + "@" + domain
        else:
            new = await outbox_message_id(s, domain, ticket.number)
        ob.message_id = new
        article.message_id = new

    async def _render(self, outbox_id: int) -> tuple[bytes, str, list[str]]:
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
                await self._fix_message_id(s, ob, article, ticket)
                files = []
                for att in article.attachments:
                    if att.inline:
                        continue
                    blob = await s.get(Blob, att.sha256)
                    if blob is not None:
                        files.append((att.filename, att.mime_type, blob.data))
                agent_name = article.author_agent.name if article.author_agent else None
                ob.raw = build_message(
                    self.cfg,
                    ticket,
                    article,
                    ob,
                    agent_name,
                    auto_submitted_for(ob.kind),
                    self.clock(),
                    files,
                )
                ob.mail_from = queue_address(ticket, self.cfg)
                if ob.kind == "reply":
                    # The envelope is exactly the checked To + Cc of the article.
                    ob.rcpt_to = [
                        a for _, a in parse_recipients(article.to_addrs)
                        + parse_recipients(article.cc_addrs)
                    ]  # fmt: skip
            rcpts = [a for _, a in parse_recipients(", ".join(ob.rcpt_to or []))]
            if not rcpts:
                raise SmtpPermanent("the mail has no recipient")
            return ob.raw, ob.mail_from or self.cfg.from_address, rcpts

    async def _finish(self, outbox_id: int, status: str, error: str | None = None) -> str:
        """Record the outcome (sent | retry | failed); returns the row's new status."""
        now = self.clock()
        async with self.db.write() as s:
            ob = await s.get(Outbox, outbox_id)
            assert ob is not None
            article = await s.get(Article, ob.article_id) if ob.article_id else None
            if status == "sent":
                ob.status, ob.sent_at, ob.last_error = "sent", now, error
                if self.cfg.sent_folder:
                    ob.last_error = SENT_COPY_PENDING + (f"; {error}" if error else "")
                    ob.next_attempt_at = now
            elif status == "retry" and ob.attempts < MAX_ATTEMPTS:
                ob.status, ob.last_error = "queued", error
                ob.next_attempt_at = now + backoff(ob.attempts)
            else:
                ob.status, ob.last_error = "failed", error
            if article is not None:
                article.delivery_status = ob.status
                article.delivery_error = ob.last_error if ob.status != "sent" else error
            s.add(
                Event(ticket_id=ob.ticket_id, kind="delivery", actor="mail:outbox", created_at=now)
            )
            return ob.status

    async def send_due(self) -> dict[str, int]:
        """Send everything due now; returns counts of sent / retry / failed."""
        counts = {"sent": 0, "retry": 0, "failed": 0}
        self.results = []
        ids = await self._claim()
        smtp: smtplib.SMTP | None = None

        async def outcome(oid: int, kind: str, error: str | None = None) -> None:
            status = await self._finish(oid, kind, error)
            key = {"sent": "sent", "queued": "retry"}.get(status, "failed")
            counts[key] += 1
            self.results.append((oid, key, error))
            level = logging.INFO if key == "sent" else logging.WARNING
            log.log(level, "outbox=%s state=%s error=%r", oid, status, error or "")

        try:
            for i, oid in enumerate(ids):
                try:
                    raw, mail_from, rcpts = await self._render(oid)
                except (SmtpPermanent, ValueError) as exc:
                    await outcome(oid, "failed", _describe(exc))
                    continue
                if smtp is None:
                    try:
                        smtp = await asyncio.to_thread(self._connect)
                    except (SmtpTemporary, SmtpConfigError) as exc:
                        # Nothing was sent: this row and the rest go back to the queue.
                        for rest in ids[i:]:
                            await outcome(rest, "retry", _describe(exc))
                        break
                try:
                    refused = await asyncio.to_thread(smtp.sendmail, mail_from, rcpts, raw)
                except smtplib.SMTPRecipientsRefused as exc:
                    codes = [code for code, _ in exc.recipients.values()]
                    kind = "failed" if all(500 <= c < 600 for c in codes) else "retry"
                    await outcome(oid, kind, _describe(exc))
                except smtplib.SMTPResponseException as exc:
                    kind = "failed" if 500 <= exc.smtp_code < 600 else "retry"
                    await outcome(oid, kind, _describe(exc))
                    if isinstance(exc, smtplib.SMTPServerDisconnected):
                        smtp = None
                except (OSError, smtplib.SMTPException) as exc:
                    # Disconnected mid-transaction: the server may or may not have it; the
                    # retry is at-least-once (same Message-ID).
                    await outcome(oid, "retry", _describe(exc))
                    with contextlib.suppress(Exception):
                        smtp.close()
                    smtp = None
                else:
                    note = None
                    if refused:
                        note = "partly delivered: " + "; ".join(
                            f"{r} refused (SMTP {c})" for r, (c, _m) in refused.items()
                        )
                    await outcome(oid, "sent", note)
        finally:
            if smtp is not None:
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    await asyncio.to_thread(smtp.quit)
        if self.cfg.sent_folder:
            await self.copy_to_sent()
        return counts

    # ------------------------------------------------------------------ Sent folder
    async def copy_to_sent(self) -> int:
        """APPEND sent mail still owed to the Sent folder; failures are retried later and
        never cause a second delivery. Returns how many copies were saved."""
        cfg = self.cfg
        if not cfg.sent_folder:
            return 0
        now = self.clock()
        async with self.db.read() as s:
            rows = (
                await s.execute(
                    select(Outbox.id, Outbox.raw, Outbox.sent_at)
                    .where(
                        Outbox.status == "sent",
                        Outbox.last_error.like(SENT_COPY_PENDING + "%"),
                        Outbox.next_attempt_at <= now,
                        Outbox.sent_at >= now - SENT_COPY_RETRY_FOR,
                    )
                    .order_by(Outbox.id)
                    .limit(100)
                )
            ).all()
        if not rows:
            return 0
        try:
            account = await self._sent_account()
        except acc.AccountError as exc:
            await self._copy_failed([r.id for r in rows], str(exc))
            return 0
        saved = 0
        for oid, raw, sent_at in rows:
            try:
                await asyncio.to_thread(
                    _imap_append, account, cfg.sent_folder, raw or b"", sent_at or now
                )
            except Exception as exc:  # noqa: BLE001 - any IMAP failure: retried later
                await self._copy_failed([oid], _describe(exc))
                continue
            async with self.db.write() as s:
                ob = await s.get(Outbox, oid)
                pending = (ob.last_error or "") if ob is not None else ""
                if ob is not None and pending.startswith(SENT_COPY_PENDING):
                    rest = pending[len(SENT_COPY_PENDING) :].lstrip("; ")
                    ob.last_error = None if not rest or rest.startswith("copy to") else rest
            saved += 1
            log.info("outbox=%s sent-copy=saved folder=%r", oid, cfg.sent_folder)
        return saved

    async def _sent_account(self) -> acc.AccountInfo:
        if self.cfg.sent_account:
            return await acc.get_account(self.db, self.cfg.sent_account)
        accounts = await acc.list_accounts(self.db)
        if len(accounts) != 1:
            raise acc.AccountError(
                "say which mail account's IMAP connection keeps the Sent folder (--sent-account)"
            )
        return accounts[0]

    async def _copy_failed(self, ids: list[int], error: str) -> None:
        now = self.clock()
        async with self.db.write() as s:
            for oid in ids:
                ob = await s.get(Outbox, oid)
                if ob is None:
                    continue
                tries = int(ob.attempts or 1)
                ob.last_error = (
                    f"{SENT_COPY_PENDING}; copy to {self.cfg.sent_folder} failed: {error}"
                )
                ob.next_attempt_at = now + backoff(tries + 1)
        log.warning("outbox=%s sent-copy=failed error=%r", ",".join(map(str, ids)), error)


# --------------------------------------------------------------------------- admin
async def list_outbox(
    db: Database, statuses: tuple[str, ...] = ("queued", "sending", "failed"), limit: int = 200
) -> list[dict[str, Any]]:
    """Outbox rows for `helpdesk mail outbox list`, newest first, with ticket and subject."""
    async with db.read() as s:
        rows = (
            await s.execute(
                select(Outbox, Ticket.number, Article.subject, Article.to_addrs, Article.cc_addrs)
                .outerjoin(Ticket, Ticket.id == Outbox.ticket_id)
                .outerjoin(Article, Article.id == Outbox.article_id)
                .where(Outbox.status.in_(statuses))
                .order_by(Outbox.id.desc())
                .limit(limit)
            )
        ).all()
    result = []
    for ob, number, subject, to_addrs, cc_addrs in rows:
        rcpts = ob.rcpt_to or [a for a in (to_addrs, cc_addrs) if a]
        result.append(
            {
                "id": ob.id,
                "ticket": number,
                "kind": ob.kind,
                "status": ob.status,
                "to": list(rcpts),
                "subject": subject or "",
                "attempts": ob.attempts,
                "next_attempt": ob.next_attempt_at if ob.status == "queued" else None,
                "last_error": ob.last_error,
                "message_id": ob.message_id,
                "created": ob.created_at,
                "sent": ob.sent_at,
            }
        )
    return result


class OutboxStateError(Exception):
    """The row is not in a state that allows this (e.g. cancelling a sent mail)."""


async def _set_state(
    ob: Outbox, s: AsyncSession, status: str, error: str | None, now: datetime
) -> None:
    ob.status = status
    ob.last_error = error
    if status == "queued":
        ob.attempts = 0
        ob.next_attempt_at = now
    article = await s.get(Article, ob.article_id) if ob.article_id else None
    if article is not None:
        article.delivery_status = status
        article.delivery_error = error
    s.add(Event(ticket_id=ob.ticket_id, kind="delivery", actor="mail:outbox", created_at=now))


async def retry_outbox(
    db: Database, ids: list[int] | None, *, clock: Callable[[], datetime] = utcnow
) -> list[int]:
    """Queue failed rows again (all failed ones when `ids` is None); returns their ids."""
    now = clock()
    async with db.write() as s:
        stmt = select(Outbox).where(Outbox.status == "failed")
        if ids is not None:
            for oid in ids:
                ob = await s.get(Outbox, oid)
                if ob is None:
                    raise LookupError(f"no outbox entry {oid}")
                if ob.status != "failed":
                    raise OutboxStateError(
                        f"outbox entry {oid} is {ob.status}; only failed mail can be retried"
                    )
            stmt = stmt.where(Outbox.id.in_(ids))
        rows = (await s.execute(stmt.order_by(Outbox.id))).scalars().all()
        for ob in rows:
            await _set_state(ob, s, "queued", None, now)
        return [ob.id for ob in rows]


async def cancel_outbox(
    db: Database, oid: int, *, who: str = "admin", clock: Callable[[], datetime] = utcnow
) -> Outbox:
    """Cancel a queued or failed mail: it is never sent, and its article says cancelled."""
    now = clock()
    async with db.write() as s:
        ob = await s.get(Outbox, oid)
        if ob is None:
            raise LookupError(f"no outbox entry {oid}")
        if ob.status == "sending":
            raise OutboxStateError(
                f"outbox entry {oid} is being sent right now; it cannot be cancelled"
            )
        if ob.status not in ("queued", "failed"):
            raise OutboxStateError(f"outbox entry {oid} is {ob.status}; it cannot be cancelled")
        await _set_state(ob, s, "cancelled", f"cancelled by {who}", now)
        return ob


async def outbox_message_id(
    session: AsyncSession, domain: str, ticket_number: int | None = None
) -> str:
    """A Message-ID for outbound mail: HMAC-verifiable when the ticket is known."""
    if ticket_number is not None:
        return await outgoing_message_id(session, domain, ticket_number)
    return make_msgid(domain=domain).strip("<>")
