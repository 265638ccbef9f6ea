"""One module per screen: queue, ticket, help, and small dialogs."""
