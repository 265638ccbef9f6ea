"""UI-free mail layer: parsing incoming mail and syncing it from IMAP."""
