"""Building on a remote server: inputs uploaded where it lacks them, the build
streamed, outputs fetched back into the local store.

This is the client side of ``builder serve``; it talks gRPC, which is why it
lives beside the build layer rather than in it.
"""
