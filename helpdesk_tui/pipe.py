"""Data leaving the console: pipe a ticket or attachment through a shell command; save files."""

# Ticket fields reach a command only as environment variables and as JSON on stdin; they are
# never spliced into the command string, so a subject such as `"; rm -rf ~ $(id)` is inert.

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.sanitize import clean_line

#: Longest a piped command may run.
PIPE_TIMEOUT = 60.0
#: Most output kept from a piped command (the rest is cut, and said so).
MAX_OUTPUT = 256 * 1024
#: Longest saved file name.
MAX_FILENAME = 200

_UNSAFE = re.compile(r'[/\\:*?"<>|]')
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn", "Co"})
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)


class PipeError(Exception):
    """The command could not run; the message is one line."""


class SaveError(Exception):
    """The attachment could not be saved; the message is one line."""


@dataclass(frozen=True)
class PipeResult:
    """What a piped command did."""

    command: str
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --------------------------------------------------------------------------- ticket data
def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def ticket_fields(detail: Any, status_label: str = "") -> dict[str, Any]:
    """The ticket as plain data (numbers, strings, lists): what commands get to see."""
    t = detail.ticket
    customer = t.customer
    org = t.organization or (customer.organization if customer else None)
    return {
        "number": t.number,
        "subject": t.subject,
        "status": t.status,
        "status_label": status_label or t.status,
        "priority": t.priority_label,
        "queue": t.queue.name if t.queue else "",
        "assignee": t.assignee.login if t.assignee else "",
        "customer_name": customer.name if customer else "",
        "customer_email": customer.email if customer else "",
        "organization": org.name if org else "",
        "tags": [tag.name for tag in t.tags],
        "created_at": _iso(t.created_at),
        "updated_at": _iso(t.updated_at),
        "postponed_until": _iso(t.postponed_until),
        "merged_into": detail.merged_into_number,
    }


def ticket_json(detail: Any, status_label: str = "") -> str:
    """The ticket and its thread as JSON (stdin of a piped command)."""
    data = ticket_fields(detail, status_label)
    data["articles"] = [
        {
            "id": a.id,
            "kind": a.kind,
            "internal": a.kind == "note",
            "from": a.from_addr,
            "to": a.to_addrs,
            "cc": a.cc_addrs,
            "author": a.author_agent.login if a.author_agent else "",
            "subject": a.subject,
            "created_at": _iso(a.created_at),
            "body": a.body_text,
            "quoted": a.quoted_text,
            "delivery_status": a.delivery_status,
            "attachments": [
                {"filename": f.filename, "mime_type": f.mime_type, "size": f.size}
                for f in a.attachments
            ],
        }
        for a in detail.articles
    ]
    return json.dumps(data, ensure_ascii=False, indent=2)


def _env_value(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    # Environment values cannot hold NUL; keep one line so `$VAR` in a script stays sane.
    return clean_line("" if value is None else str(value))


def ticket_env(detail: Any, status_label: str = "") -> dict[str, str]:
    """HELPDESK_TICKET_* variables for a piped command."""
    return {
        f"HELPDESK_TICKET_{key.upper()}": _env_value(value)
        for key, value in ticket_fields(detail, status_label).items()
    }


def attachment_env(attachment: Any) -> dict[str, str]:
    """HELPDESK_ATTACHMENT_* variables when an attachment is piped."""
    return {
        "HELPDESK_ATTACHMENT_NAME": safe_filename(attachment.filename),
        "HELPDESK_ATTACHMENT_MIME_TYPE": _env_value(attachment.mime_type),
        "HELPDESK_ATTACHMENT_SIZE": str(attachment.size),
    }


def command_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a piped command: the console's own, plus `extra`."""
    env = dict(os.environ if base is None else base)
    env.update(extra)
    return env


async def run_pipe(
    command: str,
    stdin: bytes,
    env: Mapping[str, str],
    *,
    timeout: float = PIPE_TIMEOUT,
    cwd: str | None = None,
) -> PipeResult:
    """Run `command` with `/bin/sh -c` (the agent typed it), data on stdin, fields in `env`.

    Runs as an asyncio subprocess: the console keeps drawing while it works.
    """
    if not command.strip():
        raise PipeError("no command given")
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise PipeError(f"cannot run the command: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise PipeError(
            f"the command did not finish within {timeout:.0f} s and was stopped"
        ) from None
    truncated = len(out) > MAX_OUTPUT
    return PipeResult(
        command=command,
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out[:MAX_OUTPUT].decode("utf-8", errors="replace"),
        stderr=err[:MAX_OUTPUT].decode("utf-8", errors="replace"),
        truncated=truncated,
    )


def output_note(result: PipeResult, what: str) -> str:
    """The body of the internal note that keeps a command's output."""
    lines = [f"Output of `{result.command}` (piped {what}):", ""]
    lines.append(result.stdout.rstrip("\n") or "(no output)")
    if result.truncated:
        lines.append(f"[output cut at {MAX_OUTPUT // 1024} KiB]")
    if result.returncode != 0:
        lines.append(f"[exit status {result.returncode}]")
    return "\n".join(lines)


# --------------------------------------------------------------------------- saving files
def safe_filename(name: str | None, fallback: str = "attachment") -> str:
    """A file name that stays inside the folder it is saved to.

    Path parts (`../`, `/etc/`, `C:\\`) are dropped, as are controls, bidi overrides and
    characters file systems refuse; leading dots go (no hidden files); Windows device names
    get a prefix; the length is capped with the extension kept.
    """
    raw = (name or "").replace("\\", "/").split("/")[-1]
    chars: list[str] = []
    for ch in unicodedata.normalize("NFC", raw):
        if ch.isascii():
            chars.append(ch if ch.isprintable() else " ")
        elif unicodedata.category(ch) not in _DROP_CATEGORIES:
            chars.append(ch)
    cleaned = _UNSAFE.sub("_", "".join(chars))
    cleaned = " ".join(cleaned.split()).strip(" .")
    cleaned = cleaned.lstrip(".")
    if not cleaned:
        cleaned = fallback
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    if stem.lower() in _RESERVED:
        cleaned = f"_{cleaned}"
    if len(cleaned) > MAX_FILENAME:
        ext = f".{ext[:20]}" if dot else ""
        cleaned = cleaned[: MAX_FILENAME - len(ext)].rstrip(" .") + ext
    return cleaned


def save_target(folder: str | Path, filename: str | None) -> Path:
    """Where an attachment would be saved: always directly inside `folder`.

    Raises `SaveError` if the folder does not exist or the name would leave it.
    """
    base = Path(folder).expanduser()
    if not base.is_dir():
        raise SaveError(f"{base} is not a folder")
    base = base.resolve()
    target = base / safe_filename(filename)
    if target.parent != base or target.name in ("", ".", ".."):
        raise SaveError(f"refusing to save {filename!r} outside {base}")
    return target


def save_attachment(
    folder: str | Path, filename: str | None, data: bytes, *, overwrite: bool = False
) -> Path:
    """Write `data` as `filename` inside `folder`; never outside it, never through a symlink.

    Without `overwrite` an existing file is left alone (`FileExistsError`).
    """
    target = save_target(folder, filename)
    if target.is_symlink():
        raise SaveError(
            f"{target.name} in {target.parent} is a symbolic link; not writing through it"
        )
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise
    except OSError as exc:
        raise SaveError(f"cannot write {target}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return target
