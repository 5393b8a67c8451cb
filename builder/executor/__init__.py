"""The build service as plain Python: validation, scheduling, running, ingesting."""
