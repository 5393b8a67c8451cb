"""Result caches: finished builds recorded under the digest of their request, in any backend.

They compose like the castore and PathInfo services, so a fleet of builders on
one shared store answers a request built by any of them.
"""
