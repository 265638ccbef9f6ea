"""Continue writing in the agent's own editor: HELPDESK_EDITOR, then VISUAL, then EDITOR."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.app import SuspendNotSupported

#: Tried in order; the first one set (and not blank) wins.
EDITOR_VARIABLES = ("HELPDESK_EDITOR", "VISUAL", "EDITOR")
#: When none is set: the editors Debian and friends ship.
FALLBACK_EDITORS = ("sensible-editor", "editor", "nano", "vi")


class EditorError(Exception):
    """The editor could not be started or failed; the message is one line."""


@dataclass(frozen=True)
class EditResult:
    """What came back from the editor: the text, and whether it changed."""

    text: str
    changed: bool


def editor_command(environ: Mapping[str, str] | None = None) -> list[str]:
    """The editor to run as an argument list (`code -w` stays two words).

    The value is split like a shell would split it, but never run through a shell.
    """
    env = os.environ if environ is None else environ
    for name in EDITOR_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise EditorError(f"${name} cannot be read ({exc}): {value!r}") from None
            if argv:
                return argv
    for candidate in FALLBACK_EDITORS:
        if shutil.which(candidate):
            return [candidate]
    raise EditorError("no editor found: set $VISUAL or $EDITOR (or HELPDESK_EDITOR)")


def run_editor(path: Path, environ: Mapping[str, str] | None = None) -> int:
    """Run the editor on `path` in the foreground and return its exit status."""
    argv = [*editor_command(environ), str(path)]
    try:
        return subprocess.call(argv)
    except OSError as exc:
        raise EditorError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None


def edit_text(app: Any, text: str, *, suffix: str = ".txt") -> EditResult:
    """Write `text` to a private temp file, edit it with the console suspended, read it back.

    The console gives the terminal to the editor and takes it back afterwards
    (`App.suspend`). Where suspending is impossible (a headless test run) the editor still
    runs, so scripts used as editors work there too. Raises `EditorError`.
    """
    fd, name = tempfile.mkstemp(prefix="helpdesk-", suffix=suffix)
    path = Path(name)
    try:
        # A text file ends with a newline (`echo line >> file` in an editor script must not
        # join the last line); the one added here is taken off again afterwards.
        written = text if not text or text.endswith("\n") else text + "\n"
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(written)
        try:
            with app.suspend():
                status = run_editor(path)
        except SuspendNotSupported:
            if not getattr(app, "is_headless", False):
                raise EditorError("this terminal cannot hand over to an editor") from None
            status = run_editor(path)
        if status != 0:
            raise EditorError(f"the editor exited with status {status}; the text is unchanged")
        new = path.read_text(encoding="utf-8", errors="replace")
        if written is not text and new.endswith("\n"):
            new = new[:-1]
        return EditResult(new, new != text)
    finally:
        path.unlink(missing_ok=True)
