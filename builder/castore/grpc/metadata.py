"""gRPC metadata keys of our own, shared by the servers that send them and the clients."""

from __future__ import annotations

NODE_KEY = "builder-node"
"""Initial metadata of every build call: the serving builder's name, for clients' logs.

Sent before the builder admits the call, so that a refusal names it too.
"""
