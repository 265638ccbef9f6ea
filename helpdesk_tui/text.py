"""The display side of the sanitising boundary: untrusted strings become Text, never markup."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import App
from textual.content import Content
from textual.widget import Widget

from store.sanitize import clean_line, clean_text


def safe_line(value: object, style: str = "") -> Text:
    """One display line from untrusted text: controls and escapes gone, never parsed as markup."""
    return Text(clean_line(None if value is None else str(value)), style=style, end="")


def safe_block(value: object, style: str = "") -> Text:
    """Multi-line untrusted text (mail bodies): newlines and tabs kept, everything else cleaned."""
    return Text(clean_text("" if value is None else str(value)), style=style, end="")


def safe_content(value: object) -> Content:
    """`safe_line` as a Textual `Content` (for widgets that take Content, e.g. Label, Static)."""
    return Content(clean_line(None if value is None else str(value)))


def safe_block_content(value: object) -> Content:
    """`safe_block` as a Textual `Content`."""
    return Content(clean_text("" if value is None else str(value)))


def notify_safe(node: Widget | App[Any], message: str, *, title: str = "", **kwargs: Any) -> None:
    """`node.notify` for messages that may hold data (errors naming tickets, agents...).

    A toast renders its text as given: control sequences in it would reach the terminal.
    """
    node.notify(clean_text(message), title=clean_line(title), markup=False, **kwargs)


def relative_time(moment: datetime | None, now: datetime) -> str:
    """A short age or wait: '40s', '5min', '3h', '2d', '3w', '4mo', '1y'; 'in 3h' when ahead.

    Units are the query language's (min, mo), so '5min' can be typed back as `updated:<5min`.
    """
    if moment is None:
        return ""
    seconds = (now - moment).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{int(seconds)}s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}min"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)}h"
    elif seconds < 86400 * 14:
        text = f"{int(seconds // 86400)}d"
    elif seconds < 86400 * 60:
        text = f"{int(seconds // (86400 * 7))}w"
    elif seconds < 86400 * 365:
        text = f"{int(seconds // (86400 * 30))}mo"
    else:
        text = f"{int(seconds // (86400 * 365))}y"
    return f"in {text}" if ahead else text
