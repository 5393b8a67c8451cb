"""A DirectoryService backed by a remote castore over gRPC (either family).

What comes back is checked, not trusted: a directory must hash to the digest
it was asked for or referenced by, so a faulty or hostile server cannot slip
foreign directories into a closure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.extensions import END_MARKER_METADATA, end_marker, offers_extensions
from builder.castore.grpc.security import ChannelSecurity
from builder.castore.grpc.status import error_from_rpc, status_code_of
from builder.castore.grpc.store_params import (
    GRPC_SCHEMES,
    family_param,
    grpc_url_params,
    security_params,
)
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.grpc.upload import Upload
from builder.castore.grpc.window import windowed
from builder.castore.wire import (
    DEFAULT_MAX_DIRECTORY_ENTRIES,
    Family,
    directory_from_proto,
    directory_to_proto,
    entry_count,
)
from builder.errors import IntegrityError, InvalidArgumentError, ResourceExhaustedError


def _received(message: Any, max_entries: int, wanted: Digest) -> Directory:
    """Convert a directory the server sent, refusing an oversized one before any conversion."""
    count = entry_count(message)
    if count > max_entries:
        raise ResourceExhaustedError(
            f"server sent a directory with {count} entries for {wanted}, "
            f"more than the limit of {max_entries}"
        )
    try:
        return directory_from_proto(message)
    except InvalidArgumentError as exc:
        raise IntegrityError(f"server sent a malformed directory: {exc}") from exc


class _GrpcDirectoryPutter:
    """Streams the closure as it is put; the server stores it once ``close`` ends the stream.

    To a server that understands it, a complete upload ends with the end
    marker, so that it is stored without waiting for a cancellation.
    """

    def __init__(self, stub: Any, family: Family, marks_end: bool) -> None:
        self._upload = Upload(stub.Put, (END_MARKER_METADATA,) if marks_end else None)
        self._family = family
        self._marks_end = marks_end
        self._last: Directory | None = None

    def put(self, directory: Directory) -> None:
        self._upload.send(directory_to_proto(directory, self._family))
        self._last = directory

    def close(self) -> Digest:
        if self._marks_end:
            self._upload.send(end_marker(self._family))
        response = self._upload.finish()
        root = Digest.from_field(response.root_digest, "root_digest")
        if self._last is not None and root != self._last.digest:
            raise IntegrityError(
                f"server reported root {root}, but the last directory sent was {self._last.digest}"
            )
        return root

    def abort(self) -> None:
        """Abandon the stream so that nothing put so far is stored."""
        self._upload.cancel()


class GrpcDirectoryService:
    def __init__(
        self,
        url: str,
        family: Family = Family.TVIX,
        security: ChannelSecurity | None = None,
        max_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
    ) -> None:
        self.url = url
        self._max_entries = max_entries
        self._family = family
        self._channel = open_channel(url, security)
        rpc = castore_rpc(family)
        self._messages = rpc.directory
        self._stub = rpc.directory_grpc.DirectoryServiceStub(self._channel)
        self._marks_end: bool | None = None

    def get(self, digest: Digest) -> Directory | None:
        call = self._stub.Get(self._messages.GetDirectoryRequest(digest=digest))
        try:
            message = next(call)
        except StopIteration:
            raise IntegrityError(f"server answered the request for {digest} with nothing") from None
        except grpc.RpcError as error:
            if status_code_of(error) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from_rpc(error) from error
        finally:
            call.cancel()
        directory = _received(message, self._max_entries, digest)
        if directory.digest != digest:
            raise IntegrityError(f"asked for directory {digest}, received {directory.digest}")
        return directory

    def missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """A window of non-recursive Gets, each ended after its first message."""
        request = self._messages.GetDirectoryRequest
        try:
            return [
                digest
                for digest, present in windowed(
                    digests,
                    lambda digest: self._stub.Get(request(digest=digest)),
                    _settle_presence,
                    size=32,
                )
                if not present
            ]
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        """Check as it streams that every directory was referenced and not yet seen.

        That is what makes the closure trustworthy whatever order the server
        picks among referenced directories; a server that ends the stream early
        leaves referenced directories unseen, which is reported too.
        """
        call = self._stub.Get(self._messages.GetDirectoryRequest(digest=digest, recursive=True))
        expected = {digest}
        seen: set[Digest] = set()
        try:
            for message in call:
                directory = _received(message, self._max_entries, digest)
                if directory.digest not in expected:
                    problem = "again" if directory.digest in seen else "without being referenced"
                    raise IntegrityError(
                        f"server sent directory {directory.digest} {problem} "
                        f"in the closure of {digest}"
                    )
                expected.discard(directory.digest)
                seen.add(directory.digest)
                expected.update(c.digest for c in directory.directories if c.digest not in seen)
                yield directory
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()
        if expected:
            raise IntegrityError(
                f"closure of {digest} ended with {len(expected)} referenced directories missing"
            )

    def put(self, directory: Directory) -> Digest:
        putter = self.put_multiple_start()
        putter.put(directory)
        return putter.close()

    def put_multiple_start(self) -> _GrpcDirectoryPutter:
        if self._marks_end is None:
            self._marks_end = offers_extensions(self._channel)
        return _GrpcDirectoryPutter(self._stub, self._family, self._marks_end)

    def close(self) -> None:
        self._channel.close()


def _settle_presence(digest: Digest, call: Any) -> tuple[Digest, bool]:
    try:
        next(call)
    except StopIteration:
        return digest, False
    except grpc.RpcError as error:
        if status_code_of(error) != grpc.StatusCode.NOT_FOUND:
            raise
        return digest, False
    finally:
        call.cancel()
    return digest, True


def _build(params: Params) -> GrpcDirectoryService:
    return GrpcDirectoryService(params.string("url"), family_param(params), security_params(params))


BACKEND = Backend("directory", "grpc", _build, GRPC_SCHEMES, from_url=grpc_url_params)
