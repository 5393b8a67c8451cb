"""The local Nix store, reached through Nix's own commands.

Going through ``nix-store`` rather than reading Nix's database keeps us out of
its locking and schema; ``--dump-db`` answers for many paths in one call,
which matters because each call costs tens of milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from builder.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from builder.store.store_path import StorePath

# Without a daemon and build users, and with no binary cache to wait for.
DEFAULT_NIX_CONFIG = "build-users-group =\nsubstituters =\nsandbox = true"


@dataclass(frozen=True)
class NixPathFacts:
    path: StorePath
    nar_sha256: bytes
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None


def nix_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("NIX_CONFIG", DEFAULT_NIX_CONFIG)
    return env


class NixStore:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = nix_environment(env)

    def _run(self, args: list[str]) -> bytes:
        try:
            done = subprocess.run(
                ["nix-store", *args], capture_output=True, env=self._env, check=False
            )
        except FileNotFoundError:
            raise UnavailableError("nix-store is not installed") from None
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip()
            raise FailedPreconditionError(f"nix-store {args[0]} failed: {message}")
        return done.stdout

    def valid(self, paths: Iterable[StorePath]) -> set[StorePath]:
        """The paths Nix holds as valid.

        A path that is not on disk cannot be used even if Nix's database
        names it, so only paths that exist are asked about: a fresh
        derivation's outputs, the usual question, then cost no ``nix-store`` call.
        """
        wanted = sorted(p for p in set(paths) if os.path.lexists(str(p)))
        if not wanted:
            return set()
        output = self._run(["--check-validity", "--print-invalid", *map(str, wanted)])
        invalid = {StorePath.parse(line) for line in output.decode().split()}
        return set(wanted) - invalid

    def facts(self, paths: Iterable[StorePath]) -> dict[StorePath, NixPathFacts]:
        """Registration facts of valid paths, in one call."""
        wanted = sorted(set(paths))
        if not wanted:
            return {}
        lines = self._run(["--dump-db", *map(str, wanted)]).decode().split("\n")
        facts = {}
        i = 0
        while i < len(lines) and lines[i]:
            path = StorePath.parse(lines[i], "nix-store --dump-db")
            nar_hex, size, deriver, count = lines[i + 1 : i + 5]
            references = tuple(StorePath.parse(r) for r in lines[i + 5 : i + 5 + int(count)])
            try:
                nar_sha256 = bytes.fromhex(nar_hex)
            except ValueError:
                raise InvalidArgumentError(f"nix-store --dump-db: bad hash for {path}") from None
            facts[path] = NixPathFacts(
                path,
                nar_sha256,
                int(size),
                references,
                StorePath.parse(deriver) if deriver else None,
            )
            i += 5 + int(count)
        return facts

    def import_stream(self, produce: Callable[[BinaryIO], None]) -> None:
        """Feed ``nix-store --import`` from ``produce`` as it writes, never holding the
        whole export (which can be many NARs) in memory."""
        with tempfile.TemporaryFile() as errors:
            try:
                process = subprocess.Popen(
                    ["nix-store", "--import"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    env=self._env,
                )
            except FileNotFoundError:
                raise UnavailableError("nix-store is not installed") from None
            assert process.stdin is not None
            try:
                with process.stdin:
                    produce(process.stdin)
            except BrokenPipeError:
                pass
            finally:
                returncode = process.wait()
            if returncode != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()
                raise FailedPreconditionError(f"nix-store --import failed: {message}")
