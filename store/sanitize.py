"""The one boundary between untrusted text and a terminal: strip controls, escapes, bidi overrides."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls (incl. U+009B CSI, U+009D OSC).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Whole escape sequences first, so their parameters do not survive as visible junk.
_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL/ST (clipboard, title, hyperlinks)
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS / PM / APC / SOS strings
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b[@-Z\\-_]"  # two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # C1 CSI
    r"|\x9d[^\x07\x9c]*(?:\x07|\x9c)?"  # C1 OSC
)
# Bidi embedding/override/isolate controls can reorder what an agent reads.
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def clean_text(text: str, *, keep_newlines: bool = True) -> str:
    """Text safe to show in a terminal: no escape sequences, controls or bidi overrides."""
    if not text:
        return ""
    text = _ESCAPES.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    text = _BIDI.sub("", text)
    if not keep_newlines:
        text = " ".join(text.split())
    return text


def clean_line(text: str | None) -> str:
    """A single display line (subjects, names): controls gone, whitespace collapsed."""
    return clean_text(text or "", keep_newlines=False)
