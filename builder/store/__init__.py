"""The Nix store on top of the castore: store paths, their PathInfo records and NAR ingest.

This layer sits on ``builder.castore`` only; the build service, Nix interop
and the servers use it, and nothing here knows of them.
"""
