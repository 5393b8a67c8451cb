"""Handing results to Nix in the format ``nix-store --export`` writes and ``--import`` reads.

Per path: the number 1, the NAR, the magic ``NIXE``, the path, its
references, its deriver (empty if unknown) and 0 for "no signature"; a final 0
ends the stream. Numbers are little-endian u64 and strings are framed as in a
NAR. Nix registers imported paths in stream order and requires references to
be valid already, so paths are written with their references first.
"""

from __future__ import annotations

from collections.abc import Iterable

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.nar import Writable, nar_string, write_nar
from builder.errors import InvalidArgumentError
from builder.store.path_info import PathInfo

EXPORT_MAGIC = 0x4558494E


def _number(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _string(text: str) -> bytes:
    return nar_string(text.encode())


def references_first(infos: Iterable[PathInfo]) -> list[PathInfo]:
    """Order so that every path follows those it refers to (self-references aside)."""
    by_path = {info.path: info for info in infos}
    ordered: list[PathInfo] = []
    state: dict[object, bool] = {}
    for start in sorted(by_path):
        stack = [(start, False)]
        while stack:
            path, done = stack.pop()
            if done:
                state[path] = True
                ordered.append(by_path[path])
                continue
            if path in state:
                if not state[path]:
                    raise InvalidArgumentError(f"reference cycle through {path}")
                continue
            state[path] = False
            stack.append((path, True))
            for ref in sorted(by_path[path].references, reverse=True):
                if ref != path and ref in by_path and not state.get(ref, False):
                    if ref in state:
                        raise InvalidArgumentError(f"reference cycle through {ref}")
                    stack.append((ref, False))
    return ordered


def write_export(
    infos: Iterable[PathInfo], out: Writable, blobs: BlobService, directories: DirectoryService
) -> None:
    for info in references_first(infos):
        out.write(_number(1))
        write_nar(info.node, out, blobs, directories)
        out.write(_number(EXPORT_MAGIC) + _string(str(info.path)))
        refs = sorted(str(r) for r in info.references)
        out.write(_number(len(refs)) + b"".join(_string(r) for r in refs))
        out.write(_string(str(info.deriver) if info.deriver else "") + _number(0))
    out.write(_number(0))
