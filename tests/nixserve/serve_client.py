"""Driving the installed ``builder-nix-serve`` through pipes, as Nix's build hook does.

The encoder here is written independently of ``builder.nixserve.wire`` so
that a framing mistake there cannot cancel out in the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.store import nixbase32

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(sys.executable).parent / "builder-nix-serve"
TRANSCRIPTS = Path("/work/shared/nix-serve-transcript")
CLIENT_MAGIC = 0x390C9DEB
SERVER_MAGIC = 0x5452EECB
VERSION = 0x207
EXPORT_MAGIC = 0x4558494E


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return u64(len(data)) + data + b"\0" * (-len(data) % 8)


def strings(items: Sequence[str]) -> bytes:
    return u64(len(items)) + b"".join(string(i) for i in items)


def random_path(name: str) -> str:
    digest = secrets.token_bytes(20)
    return f"/nix/store/{nixbase32.encode(digest)}-{name}"


def nar_file(data: bytes, executable: bool = False) -> bytes:
    body = string("type") + string("regular")
    if executable:
        body += string("executable") + string("")
    return body + string("contents") + string(data)


def nar(node_body: bytes) -> bytes:
    return string("nix-archive-1") + string("(") + node_body + string(")")


def nar_directory(entries: dict[str, bytes]) -> bytes:
    """``entries`` maps names to node bodies (as ``nar_file`` makes them)."""
    body = string("type") + string("directory")
    for name in sorted(entries):
        body += string("entry") + string("(") + string("name") + string(name)
        body += string("node") + string("(") + entries[name] + string(")") + string(")")
    return body


def busybox_nar() -> bytes:
    binary = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    return nar(nar_directory({"busybox": nar_file(binary, executable=True)}))


@dataclass(frozen=True)
class Derivation:
    """The inline form BuildDerivation sends."""

    outputs: list[tuple[str, str, str, str]]
    input_sources: list[str]
    builder: str
    args: list[str]
    env: dict[str, str]
    platform: str = "x86_64-linux"

    def encode(self) -> bytes:
        data = u64(len(self.outputs))
        for name, path, algo, digest in self.outputs:
            data += string(name) + string(path) + string(algo) + string(digest)
        data += strings(self.input_sources) + string(self.platform) + string(self.builder)
        data += strings(self.args) + u64(len(self.env))
        for key in sorted(self.env):
            data += string(key) + string(self.env[key])
        return data


def settings(max_silent: int = 0, timeout: int = 0, max_log: int = 0, repeat: int = 0) -> bytes:
    return u64(max_silent) + u64(timeout) + u64(max_log) + u64(repeat) + u64(1) + u64(0)


@dataclass(frozen=True)
class BuildResult:
    status: int
    message: str
    times_built: int
    non_deterministic: int
    start: int
    stop: int
    built_outputs: int


@dataclass(frozen=True)
class PathInfoAnswer:
    path: str
    deriver: str
    references: list[str]
    download_size: int
    nar_size: int
    nar_hash: str
    ca: str
    signatures: list[str]


class ServeClient:
    def __init__(
        self,
        store: str,
        *extra: str,
        env: dict[str, str] | None = None,
        program: str = str(PROGRAM),
    ) -> None:
        """``program`` is ours unless a benchmark compares Nix's own ``nix-store``."""
        self.process = subprocess.Popen(
            [program, "--serve", "--write", "--store", store, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout
        self.unread = b""
        # Nix reads the log as it comes; a full stderr pipe would stall the build.
        self._stderr = bytearray()
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := self.process.stderr.read1(65536):
            self._stderr += chunk

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def exact(self, size: int) -> bytes:
        data = self.stdout.read(size)
        assert len(data) == size, f"short answer; stderr: {self.finish()[1]!r}"
        return data

    def u64(self) -> int:
        return struct.unpack("<Q", self.exact(8))[0]

    def string(self) -> str:
        size = self.u64()
        data = self.exact(size)
        assert self.exact(-size % 8) == b"\0" * (-size % 8)
        return data.decode()

    def strings(self) -> list[str]:
        return [self.string() for _ in range(self.u64())]

    def handshake(self, version: int = VERSION) -> None:
        self.send(u64(CLIENT_MAGIC))
        assert self.u64() == SERVER_MAGIC
        assert self.u64() == VERSION
        self.send(u64(version))

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Close stdin, wait for the exit; the exit status and stderr."""
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
            self.process.stdin = None
        self.unread = self.stdout.read()
        self.process.wait(timeout=timeout)
        self._stderr_reader.join(timeout=timeout)
        return self.process.returncode, self._stderr.decode(errors="replace")

    def kill(self) -> None:
        """End the program and close our end of the connection, as a client that dies does."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
            self.process.stdin = None

    # -- commands --

    def query_valid(self, paths: Sequence[str]) -> list[str]:
        self.send(u64(1) + u64(0) + u64(0) + strings(paths))
        return self.strings()

    def add_to_store_nar(
        self,
        path: str,
        nar_bytes: bytes,
        references: Sequence[str] = (),
        deriver: str = "",
        ca: str = "",
        signatures: Sequence[str] = (),
        nar_hash: str | None = None,
        nar_size: int | None = None,
    ) -> None:
        digest = nar_hash or hashlib.sha256(nar_bytes).hexdigest()
        self.send(
            u64(9)
            + string(path)
            + string(deriver)
            + string(digest)
            + strings(sorted(references))
            + u64(0)
            + u64(len(nar_bytes) if nar_size is None else nar_size)
            + u64(0)
            + strings(signatures)
            + string(ca)
            + nar_bytes
        )
        assert self.u64() == 1

    def build_derivation(
        self, drv_path: str, drv: Derivation, build_settings: bytes
    ) -> BuildResult:
        self.send(u64(8) + string(drv_path) + drv.encode() + build_settings)
        return self.read_build_result()

    def read_build_result(self) -> BuildResult:
        """The result; of the built outputs (Nix sends each with its realisation) only the count."""
        status, message = self.u64(), self.string()
        times, nondet, start, stop = self.u64(), self.u64(), self.u64(), self.u64()
        built = self.u64()
        for _ in range(built):
            self.string()
            self.string()
        return BuildResult(status, message, times, nondet, start, stop, built)

    def query_path_infos(self, paths: Sequence[str]) -> list[PathInfoAnswer]:
        self.send(u64(2) + strings(paths))
        answers = []
        while path := self.string():
            deriver, refs = self.string(), self.strings()
            download, size = self.u64(), self.u64()
            nar_hash, ca, sigs = self.string(), self.string(), self.strings()
            answers.append(PathInfoAnswer(path, deriver, refs, download, size, nar_hash, ca, sigs))
        return answers

    def dump(self, path: str, size: int) -> bytes:
        self.send(u64(3) + string(path))
        return self.exact(size)


def serve_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def add_busybox(client: ServeClient) -> str:
    path = random_path("busybox-static")
    client.add_to_store_nar(path, busybox_nar())
    return path


def shell_derivation(
    busybox: str, script: str, name: str = "t", fixed: tuple[str, str] | None = None
) -> tuple[str, str, Derivation]:
    """A derivation running ``script`` with busybox sh; its drv path and output path too."""
    out = random_path(name)
    algo, digest = fixed or ("", "")
    drv = Derivation(
        outputs=[("out", out, algo, digest)],
        input_sources=[busybox],
        builder=f"{busybox}/busybox",
        args=["sh", "-c", script],
        env={"out": out, "name": name, "system": "x86_64-linux", "builder": f"{busybox}/busybox",
             "PATH": f"{busybox}"},
    )  # fmt: skip
    return random_path(f"{name}.drv"), out, drv
