"""The default status labels: a module of its own with no imports, so the console's fast
start (`store.firstpage`) can read them without loading the ORM (`store.lifecycle`)."""

DEFAULT_LABELS: dict[str, str] = {
    "new": "New",
    "open": "Open",
    "answered": "Answered",
    "pending": "Pending",
    "on-hold": "On hold",
    "postponed": "Postponed",
    "solved": "Solved",
    "closed": "Closed",
    "merged": "Merged",
}
