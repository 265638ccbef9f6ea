"""Make attachment file names from incoming mail safe to show and to store on disk."""

from __future__ import annotations

import mimetypes
import re
import unicodedata

__all__ = ["MAX_FILENAME_CHARS", "extension_for", "sanitize_filename"]

MAX_FILENAME_CHARS = 200

# Characters that are unsafe in file names on common file systems (plus the path separators).
_UNSAFE_CHARS = re.compile(r'[/\\:*?"<>|]')
_WHITESPACE_RUN = re.compile(r"\s+")
# Names Windows refuses for files regardless of the extension.
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)
# Unicode categories removed outright: controls, format characters (bidi overrides such as
# U+202E that make "exe.txt" look like "txt.exe"), line/paragraph separators, surrogates,
# unassigned and private-use code points.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn", "Co"})

# A few common types first: mimetypes' answers differ between systems (".jpe" for image/jpeg).
_COMMON_EXTENSIONS: dict[str, str] = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "text/rfc822-headers": ".txt",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/octet-stream": ".bin",
    "application/ms-tnef": ".dat",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pgp-signature": ".asc",
    "message/rfc822": ".eml",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
}


def extension_for(content_type: str) -> str:
    """A file extension (with the dot) for a media type; ".bin" when nothing fits."""
    ctype = content_type.strip().lower()
    ext = _COMMON_EXTENSIONS.get(ctype)
    if ext is not None:
        return ext
    try:
        guessed = mimetypes.guess_extension(ctype, strict=False)
    except Exception:  # noqa: BLE001 - a broken mime.types file must not break parsing
        guessed = None
    if guessed and re.fullmatch(r"\.[A-Za-z0-9]{1,10}", guessed):
        return guessed
    return ".bin"


def _clean_chars(name: str) -> str:
    out: list[str] = []
    for ch in name:
        if ch.isascii():
            if ch.isprintable():
                out.append(ch)
            elif ch in "\t\n\r\v\f":
                out.append(" ")
            continue
        if unicodedata.category(ch) in _DROP_CATEGORIES:
            continue
        out.append(ch)
    return "".join(out)


def _truncate(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 16:
        keep = limit - len(ext) - 1
        return stem[:keep].rstrip(" .") + "." + ext
    return name[:limit].rstrip(" .")


def sanitize_filename(
    name: str | None, *, index: int = 1, content_type: str = "application/octet-stream"
) -> str:
    """Return a safe, non-empty file name for an attachment.

    The result has no path separators or directory part, no control/format characters, no
    leading dots, no characters Windows forbids, is not a reserved device name and has at most
    MAX_FILENAME_CHARS characters. An unusable name becomes ``attachment-<index><ext>`` with the
    extension guessed from ``content_type``.
    """
    cleaned = ""
    if name:
        text = unicodedata.normalize("NFC", name.replace("\x00", ""))
        # Keep only the last path component, whichever separator style the sender used.
        parts = [p for p in re.split(r"[/\\]", text) if p.strip()]
        text = parts[-1] if parts else ""
        text = _clean_chars(text)
        text = _UNSAFE_CHARS.sub("_", text)
        text = _WHITESPACE_RUN.sub(" ", text).strip()
        text = text.lstrip(". ").rstrip(". ")
        if text:
            stem = text.split(".", 1)[0].strip().lower()
            if stem in _WINDOWS_RESERVED:
                text = "_" + text
        cleaned = _truncate(text, MAX_FILENAME_CHARS)
        if not cleaned.strip("_ "):
            cleaned = ""
    if not cleaned:
        cleaned = f"attachment-{index}{extension_for(content_type)}"
    return cleaned
