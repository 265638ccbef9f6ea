"""Messages the app posts to screens (the change feed) and screens post to each other."""

from __future__ import annotations

from textual.message import Message


class StoreChanged(Message):
    """The store changed (this console, another agent, the mail daemon): refresh what you show.

    Posted by the app to the active screen for each batch of change-feed events.
    `ticket_ids` holds the tickets concerned (None for admin data such as views or agents);
    `kinds` the event kinds ("created", "updated", "article", "merged", "presence", ...).
    """

    def __init__(self, ticket_ids: frozenset[int | None], kinds: frozenset[str]) -> None:
        super().__init__()
        self.ticket_ids = ticket_ids
        self.kinds = kinds

    def touches(self, ticket_id: int | None) -> bool:
        """Whether the change concerns this ticket (or, for None, admin data)."""
        return ticket_id in self.ticket_ids

    @property
    def only_presence(self) -> bool:
        """Only who-is-looking-where changed: ticket data did not."""
        return self.kinds <= {"presence"}
