"""Moving trees between the local store and a remote castore, only what the other side lacks.

Checks are cheap calls (a Stat per blob, a non-recursive Get per directory)
while transfers carry whole blobs, so building again with the same inputs
costs only the checks. A directory the server has implies every directory
below it, since servers store only complete closures, but not the blobs those
reference: every blob is checked on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import closure_member, fetch_closure
from builder.castore.grpc.status import status_code_of
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.grpc.upload import Upload
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.castore.wire import Family, directory_from_proto, directory_to_proto
from builder.errors import IntegrityError, InvalidArgumentError, NotFoundError
from builder.remote.errors import remote_error

# Stat calls in flight at once: enough to hide the round trip, few enough
# that a tree of many small files does not flood the server's worker pool.
STAT_WINDOW = 64
# Parallel blob uploads and directory probes; each holds a server worker.
WORKERS = 4


@dataclass
class Transferred:
    blobs: int = 0
    bytes: int = 0
    directories: int = 0

    def __str__(self) -> str:
        return f"{self.blobs} blobs ({self.bytes} bytes) and {self.directories} directories"


def leaves_first(
    root: Digest, closure: dict[Digest, Directory], wanted: set[Digest]
) -> list[Directory]:
    """The ``wanted`` part of a closure in an order a directory Put accepts.

    A post-order walk: every directory comes after all its children, which
    a breadth-first order reversed does not guarantee once subtrees are shared.
    """
    order: list[Directory] = []
    visited: set[Digest] = set()
    stack: list[tuple[Digest, bool]] = [(root, False)]
    while stack:
        digest, children_done = stack.pop()
        if children_done:
            order.append(closure[digest])
            continue
        if digest in visited or digest not in wanted:
            continue
        visited.add(digest)
        stack.append((digest, True))
        stack.extend((child.digest, False) for child in closure[digest].directories)
    return order


class RemoteCastore:
    """The Snix-family castore services of the server builds are sent to."""

    def __init__(self, channel: grpc.Channel, address: str) -> None:
        rpc = castore_rpc(Family.SNIX)
        self.address = address
        self._blob_messages = rpc.blobstore
        self._blobs = rpc.blobstore_grpc.BlobServiceStub(channel)
        self._directory_messages = rpc.directory
        self._directories = rpc.directory_grpc.DirectoryServiceStub(channel)

    # Uploading

    def upload_missing(
        self, nodes: Iterable[Node], blobs: BlobService, directories: DirectoryService
    ) -> Transferred:
        """Give the server whatever of ``nodes`` it lacks: blobs first, then directories.

        Blobs go first so that no directory is ever visible on the server
        before the contents it names. Nodes the local store does not hold are
        skipped: the server may have them, and if not, the build is refused
        with a list of what is missing.
        """
        sent = Transferred()
        closures: list[tuple[Digest, dict[Digest, Directory]]] = []
        wanted: dict[Digest, None] = {}
        for node in nodes:
            if isinstance(node, FileNode):
                if blobs.has(node.digest):
                    wanted[node.digest] = None
            elif isinstance(node, DirectoryNode):
                try:
                    closure = fetch_closure(node.digest, directories)
                except NotFoundError:
                    continue
                closures.append((node.digest, closure))
                for directory in closure.values():
                    wanted.update((file.digest, None) for file in directory.files)
        missing = self.missing_blobs(wanted)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="upload") as pool:
            for size in pool.map(lambda digest: self.upload_blob(digest, blobs), missing):
                sent.blobs += 1
                sent.bytes += size
        for root, closure in closures:
            absent = self._missing_directories(root, closure)
            if absent:
                self._put_directories(leaves_first(root, closure, absent))
                sent.directories += len(absent)
        return sent

    def missing_blobs(self, digests: Iterable[Digest]) -> list[Digest]:
        """The digests the server has no blob for, asked with a window of concurrent Stats."""
        missing: list[Digest] = []
        pending: deque[tuple[Digest, grpc.Future]] = deque()

        def settle() -> None:
            digest, future = pending.popleft()
            try:
                future.result()
            except grpc.RpcError as error:
                if status_code_of(error) != grpc.StatusCode.NOT_FOUND:
                    raise remote_error(error, self.address) from error
                missing.append(digest)

        try:
            for digest in digests:
                request = self._blob_messages.StatBlobRequest(digest=digest)
                pending.append((digest, self._blobs.Stat.future(request)))
                if len(pending) >= STAT_WINDOW:
                    settle()
            while pending:
                settle()
        finally:
            for _, future in pending:
                future.cancel()
        return missing

    def upload_blob(self, digest: Digest, blobs: BlobService) -> int:
        reader = blobs.open_read(digest)
        if reader is None:
            raise NotFoundError(f"blob {digest} vanished from the local store")
        upload = Upload(self._blobs.Put)
        size = 0
        try:
            with reader:
                while chunk := reader.read(READ_CHUNK_SIZE):
                    upload.send(self._blob_messages.BlobChunk(data=chunk))
                    size += len(chunk)
        except BaseException:
            upload.cancel()
            raise
        stored = upload.finish().digest
        if stored != digest:
            raise IntegrityError(
                f"{self.address} stored blob {digest} as {Digest(stored)}: "
                "the local store or the transfer corrupted it"
            )
        return size

    def has_directory(self, digest: Digest) -> bool:
        call = self._directories.Get(self._directory_messages.GetDirectoryRequest(digest=digest))
        try:
            next(call)
        except StopIteration:
            return False
        except grpc.RpcError as error:
            if status_code_of(error) == grpc.StatusCode.NOT_FOUND:
                return False
            raise remote_error(error, self.address) from error
        finally:
            call.cancel()
        return True

    def _missing_directories(self, root: Digest, closure: dict[Digest, Directory]) -> set[Digest]:
        """Probe level by level, descending only below directories the server lacks."""
        missing: set[Digest] = set()
        seen = {root}
        level = [root]
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="probe") as pool:
            while level:
                present = list(pool.map(self.has_directory, level))
                absent = [digest for digest, has in zip(level, present, strict=True) if not has]
                missing.update(absent)
                level = []
                for digest in absent:
                    for child in closure[digest].directories:
                        if child.digest not in seen:
                            seen.add(child.digest)
                            level.append(child.digest)
        return missing

    def _put_directories(self, ordered: list[Directory]) -> None:
        upload = Upload(self._directories.Put)
        try:
            for directory in ordered:
                upload.send(directory_to_proto(directory, Family.SNIX))
        except BaseException:
            upload.cancel()
            raise
        root = upload.finish().root_digest
        if root != ordered[-1].digest:
            raise IntegrityError(
                f"{self.address} reported root {Digest(root)} for a closure "
                f"ending in {ordered[-1].digest}"
            )

    # Fetching

    def fetch(
        self, nodes: Iterable[Node], blobs: BlobService, directories: DirectoryService
    ) -> Transferred:
        """Copy what the local store lacks of ``nodes``, checking every digest received."""
        got = Transferred()
        files: dict[Digest, FileNode] = {}
        for node in nodes:
            if isinstance(node, FileNode):
                files[node.digest] = node
            elif isinstance(node, DirectoryNode):
                try:
                    closure = fetch_closure(node.digest, directories)
                except NotFoundError:
                    closure = self._remote_closure(node)
                    ordered = leaves_first(node.digest, closure, set(closure))
                    putter = directories.put_multiple_start()
                    for directory in ordered:
                        putter.put(directory)
                    putter.close()
                    got.directories += len(ordered)
                for directory in closure.values():
                    files.update((file.digest, file) for file in directory.files)
        for file in files.values():
            if not blobs.has(file.digest):
                self._download_blob(file, blobs)
                got.blobs += 1
                got.bytes += file.size
        return got

    def _remote_closure(self, node: DirectoryNode) -> dict[Digest, Directory]:
        """The closure below ``node``, keyed by recomputed digests and checked to be complete."""
        request = self._directory_messages.GetDirectoryRequest(digest=node.digest, recursive=True)
        call = self._directories.Get(request)
        received: dict[Digest, Directory] = {}
        try:
            for message in call:
                directory = _checked_directory(message, self.address)
                received[directory.digest] = directory
        except grpc.RpcError as error:
            raise remote_error(error, self.address) from error
        finally:
            call.cancel()
        closure: dict[Digest, Directory] = {}
        stack = [node]
        while stack:
            current = stack.pop()
            if current.digest not in closure:
                directory = closure_member(received, current)
                closure[current.digest] = directory
                stack.extend(directory.directories)
        return closure

    def _download_blob(self, node: FileNode, blobs: BlobService) -> None:
        call = self._blobs.Read(self._blob_messages.ReadBlobRequest(digest=node.digest))
        writer = blobs.open_write()
        size = 0
        try:
            for chunk in call:
                size += len(chunk.data)
                if size > node.size:
                    raise IntegrityError(
                        f"{self.address} sent more than {node.size} bytes for blob {node.digest}"
                    )
                writer.write(chunk.data)
        except grpc.RpcError as error:
            writer.abort()
            raise remote_error(error, self.address) from error
        except BaseException:
            writer.abort()
            raise
        finally:
            call.cancel()
        digest = writer.close()
        if digest != node.digest or size != node.size:
            raise IntegrityError(
                f"{self.address} sent {size} bytes hashing to {digest} for blob "
                f"{node.digest} of {node.size} bytes"
            )


def _checked_directory(message: Any, address: str) -> Directory:
    try:
        return directory_from_proto(message)
    except InvalidArgumentError as exc:
        raise IntegrityError(f"{address} sent a malformed directory: {exc}") from exc
