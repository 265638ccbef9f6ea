"""The agent console: a keyboard-first Textual app over the helpdesk store."""
