"""Content-addressed store: model, blob and directory services, filesystem bridge."""
