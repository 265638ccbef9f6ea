"""The helpdesk SQL store: models, engine, service layer, query language."""
