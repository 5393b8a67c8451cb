"""PathInfo service backends, each declaring its ``BACKEND`` for the store registry."""
