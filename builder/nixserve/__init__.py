"""``builder-nix-serve``: Nix's remote-builder ("serve") protocol on top of the store and builds.

Nix runs this program on the far side of an ``ssh://`` builder and talks to
it on stdin/stdout; everything it learns (paths, NARs, derivations) is
treated as hostile input.
"""
