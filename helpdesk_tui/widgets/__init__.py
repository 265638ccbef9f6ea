"""Reusable widgets: the virtual ticket list, the query bar, the views sidebar."""
