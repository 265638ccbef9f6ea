"""Command palette providers: every action of a screen, found by name (one provider per domain).

The hook for screens: set ``COMMANDS = {ScreenCommands}`` on the screen class (or a subclass
of `ActionProvider` for a domain of your own). `ScreenCommands` lists every key binding of the
screen and its focused widgets that has an id, plus whatever the screen's optional
``palette_commands() -> Iterable[PaletteCommand]`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Matcher, Provider
from textual.content import Content
from textual.dom import DOMNode
from textual.screen import Screen

from store.sanitize import clean_line


@dataclass(frozen=True)
class PaletteCommand:
    """One palette entry: a name to search, a help line, and what to run."""

    name: str
    help: str
    run: Callable[[], Any]


@runtime_checkable
class HasPaletteCommands(Protocol):
    """A screen that adds commands of its own to `ScreenCommands`."""

    def palette_commands(self) -> Iterable[PaletteCommand]: ...


def _highlight(matcher: Matcher, candidate: str) -> Content:
    """Like `Matcher.highlight`, but the candidate is plain text, never markup."""
    content = Content(candidate)
    _score, offsets = matcher.fuzzy_search.match(matcher.query, candidate)
    for offset in offsets:
        if not candidate[offset].isspace():
            content = content.stylize(matcher.match_style, offset, offset + 1)
    return content


class ActionProvider(Provider):
    """Base provider: implement `commands()`; fuzzy search and discovery come with it.

    Command names may hold data (view names...): they are cleaned and never read as markup.
    """

    def commands(self) -> Iterable[PaletteCommand]:
        """The commands on offer right now."""
        return ()

    def _safe_commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand(clean_line(c.name), clean_line(c.help), c.run) for c in self.commands()
        ]

    async def discover(self) -> Hits:
        for command in self._safe_commands():
            yield DiscoveryHit(Content(command.name), command.run, command.name, command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._safe_commands():
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(
                    score,
                    _highlight(matcher, command.name),
                    command.run,
                    command.name,
                    command.help,
                )


def binding_commands(screen: Screen[Any], prefix: str = "") -> list[PaletteCommand]:
    """A command per active key binding (with an id) of a screen and its focused widgets.

    Keys shown are the effective ones, after the user's keymap.
    """
    app = screen.app
    commands: list[PaletteCommand] = []
    seen: set[str] = set()
    for active in screen.active_bindings.values():
        binding = active.binding
        if active.node is app or not binding.id or binding.id in seen or binding.system:
            continue
        seen.add(binding.id)
        description = binding.description or binding.action
        name = f"{prefix}: {description}" if prefix else description
        help_text = f"{binding.tooltip} ({app.get_key_display(binding)})".strip()
        commands.append(PaletteCommand(name, help_text, _runner(active.node, binding.action)))
    return commands


def _runner(node: DOMNode, action: str) -> Callable[[], Any]:
    async def run() -> None:
        await node.app.run_action(action, node)

    return run


class ScreenCommands(ActionProvider):
    """The calling screen's bindings and its `palette_commands()`, if it has that method."""

    #: Shown before each binding's description, e.g. "Ticket: Reply".
    prefix = ""

    def commands(self) -> Iterable[PaletteCommand]:
        screen = self.screen
        prefix = self.prefix or getattr(screen, "PALETTE_PREFIX", "")
        yield from binding_commands(screen, prefix)
        if isinstance(screen, HasPaletteCommands):
            yield from screen.palette_commands()


class HelpdeskCommands(ActionProvider):
    """App-wide commands: help, back, quit."""

    def commands(self) -> Iterable[PaletteCommand]:
        app = self.app
        yield PaletteCommand(
            "Help: keys of this screen",
            "Show the key bindings, query keys and orders",
            _runner(app, "help"),
        )
        yield PaletteCommand(
            "Back / quit", "Leave this screen (quit from the queue)", _runner(app, "go_back")
        )
        yield PaletteCommand(
            "Dashboard: team report",
            "Figures, charts, per queue and agent for a period (D)",
            _runner(app, "dashboard"),
        )
