"""Nix interop: real derivations built through the build service, results handed back to Nix.

This package sits on ``builder.executor`` and ``builder.castore``; nothing below
imports it.
"""
