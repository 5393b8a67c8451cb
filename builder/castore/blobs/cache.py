"""A near/far pair whose writes reach the far store: the shape a fleet of builders needs.

``combined`` keeps writes near, so a blob one builder stores stays invisible
to the others on the same far store. Here every write streams to both at once
(never held whole), and the blob is committed far before near, so that a
builder which answers from its near copy never knows a blob the fleet lacks.
Reads behave as ``combined``'s: near first, then far, filling near.
"""

from __future__ import annotations

from builder.castore.blobs.combined import CombinedBlobService
from builder.castore.blobs.service import BlobWriter
from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.errors import IntegrityError


class _WriteThrough:
    """One upload written to the far and the near store side by side."""

    def __init__(self, far: BlobWriter, near: BlobWriter) -> None:
        self._far = far
        self._near = near

    def write(self, data: bytes | memoryview) -> int:
        try:
            self._far.write(data)
            return self._near.write(data)
        except BaseException:
            self.abort()
            raise

    def close(self) -> Digest:
        try:
            far = self._far.close()
        except BaseException:
            self._near.abort()
            raise
        near = self._near.close()
        if near != far:
            raise IntegrityError(f"near store hashed blob {far} as {near}")
        return far

    def abort(self) -> None:
        try:
            self._far.abort()
        finally:
            self._near.abort()


class CacheBlobService(CombinedBlobService):
    def open_write(self) -> BlobWriter:
        far = self.far.open_write()
        try:
            near = self.near.open_write()
        except BaseException:
            far.abort()
            raise
        return _WriteThrough(far, near)


def _build(params: Params) -> CacheBlobService:
    return CacheBlobService(params.blob("near"), params.blob("far"))


BACKEND = Backend("blob", "cache", _build)
