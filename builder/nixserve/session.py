"""One serve-protocol connection: the commands ``nix-store --serve --write`` answers.

Each command reads its arguments completely before acting, so that a
failure inside a build is answered in the protocol and the next command is
read from the right place; a malformed argument ends the connection with an
error on stderr, as ``nix-store`` does. Store paths are sets in Nix, so
answers list them sorted as Nix sorts them (by basename).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from builder.castore.fs.nar import write_nar
from builder.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from builder.nix.export import EXPORT_MAGIC, write_export
from builder.nixserve.backend import ServeBackend
from builder.nixserve.build_result import BuildResult, read_build_settings, write_build_result
from builder.nixserve.building import ServeBuilds
from builder.nixserve.paths import ValidPaths, sorted_paths
from builder.nixserve.wire import MAX_STRING_LENGTH, ProtocolError, WireReader, WireWriter
from builder.nixserve.wire_derivation import read_derivation
from builder.store import nixbase32
from builder.store.nar_ingest import ingest_nar
from builder.store.path_info import ContentAddress, PathInfo, Signature
from builder.store.store_path import StorePath

SHA256_SIZE = 32
# ImportPaths, BuildPaths, BuildDerivation and AddToStoreNar.
WRITING_COMMANDS = frozenset({4, 6, 8, 9})
MAX_SIGNATURE_LENGTH = 4096
MAX_CONTENT_ADDRESS_LENGTH = 1024
# Placeholder root name while the path of an imported NAR is not yet known (it follows the NAR).
_IMPORT_NAME = b"import"


def parse_nar_hash(text: str, where: str = "narHash") -> bytes:
    """A SHA-256 in any form Nix's ``Hash::parseAny`` takes: hex, base-32, base-64 or SRI."""
    body = text[len("sha256-") :] if text.startswith("sha256-") else text.removeprefix("sha256:")
    if ":" in body or "-" in body:
        raise InvalidArgumentError(f"{where}: {text!r} is not a SHA-256 hash")
    try:
        if len(body) == 2 * SHA256_SIZE:
            return bytes.fromhex(body)
        if len(body) == nixbase32.encoded_length(SHA256_SIZE):
            return nixbase32.decode(body, SHA256_SIZE, where)
        digest = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidArgumentError(f"{where}: {text!r} is not a SHA-256 hash") from None
    if len(digest) != SHA256_SIZE:
        raise InvalidArgumentError(f"{where}: {text!r} is not a SHA-256 hash")
    return digest


def parse_signature(text: str, where: str = "signature") -> Signature:
    name, sep, data = text.partition(":")
    if not sep or not name:
        raise InvalidArgumentError(f"{where}: {text!r} is not NAME:BASE64")
    try:
        return Signature(name, base64.b64decode(data, validate=True))
    except ValueError:
        # binascii.Error for bad base-64; a plain ValueError for non-ASCII text.
        raise InvalidArgumentError(f"{where}: {text!r} has invalid base-64") from None


def format_signature(signature: Signature) -> str:
    return f"{signature.name}:{base64.b64encode(signature.data).decode()}"


def _paths(reader: WireReader, field: str) -> list[StorePath]:
    return [StorePath.parse(text, f"{field}[{i}]") for i, text in enumerate(reader.paths(field))]


def _optional_path(text: str, field: str) -> StorePath | None:
    return StorePath.parse(text, field) if text else None


class ServeSession:
    def __init__(
        self,
        reader: WireReader,
        writer: WireWriter,
        backend: ServeBackend,
        client_minor: int,
        builds: ServeBuilds,
        write: bool = True,
    ) -> None:
        self._in = reader
        self._out = writer
        self._backend = backend
        self._minor = client_minor
        self._builds = builds
        self._valid = ValidPaths(backend.pathinfos, backend.blobs, backend.recording)
        self._write = write
        self._commands: dict[int, Callable[[], None]] = {
            1: self.query_valid_paths,
            2: self.query_path_infos,
            3: self.dump_store_path,
            4: self.import_paths,
            5: self.export_paths,
            6: self.build_paths,
            7: self.query_closure,
            8: self.build_derivation,
            9: self.add_to_store_nar,
        }

    def run(self) -> None:
        """Serve commands until the client closes the connection between two of them."""
        while not self._in.at_end():
            command = self._in.u64("command")
            handler = self._commands.get(command)
            if handler is None:
                raise ProtocolError(f"unknown serve command {command}")
            if command in WRITING_COMMANDS and not self._write:
                raise FailedPreconditionError(
                    f"serve command {command} changes the store; it needs --write"
                )
            handler()
            self._out.flush()

    # -- commands ----------------------------------------------------------------------

    def query_valid_paths(self) -> None:
        self._in.boolean("lock")
        self._in.boolean("substitute")
        paths = _paths(self._in, "paths")
        valid = [p for p in sorted_paths(paths) if self._valid.info(p) is not None]
        self._out.strings([str(p) for p in valid])

    def query_path_infos(self) -> None:
        paths = _paths(self._in, "paths")
        for path in sorted_paths(paths):
            info = self._valid.info(path)
            if info is None:
                continue
            self._out.string(str(info.path))
            self._out.string(str(info.deriver) if info.deriver else "")
            self._out.strings([str(r) for r in sorted_paths(info.references)])
            self._out.u64(info.nar_size)
            self._out.u64(info.nar_size)
            self._out.string(f"sha256:{nixbase32.encode(info.nar_sha256)}")
            self._out.string(str(info.ca) if info.ca else "")
            self._out.strings(sorted(format_signature(s) for s in info.signatures))
        self._out.string("")

    def dump_store_path(self) -> None:
        path = StorePath.parse(self._in.path("path"), "path")
        info = self._valid.require(path)
        write_nar(info.node, self._out, self._backend.blobs, self._backend.directories)

    def export_paths(self) -> None:
        self._in.u64("obsolete")
        paths = _paths(self._in, "paths")
        infos = [self._valid.require(p) for p in sorted_paths(paths)]
        write_export(infos, self._out, self._backend.blobs, self._backend.directories)

    def query_closure(self) -> None:
        include_outputs = self._in.boolean("includeOutputs")
        paths = _paths(self._in, "paths")
        closure = self._valid.closure(paths)
        if include_outputs:
            closure = self._valid.closure(
                [
                    *closure,
                    *self._builds.valid_outputs(p for p in closure if p.name.endswith(".drv")),
                ]
            )
        self._out.strings([str(p) for p in sorted_paths(closure)])

    def add_to_store_nar(self) -> None:
        path = StorePath.parse(self._in.path("path"), "path")
        deriver = self._in.path("deriver")
        nar_hash = self._in.string("narHash", 256)
        references = _paths(self._in, "references")
        self._in.u64("registrationTime")
        nar_size = self._in.u64("narSize")
        self._in.boolean("ultimate")
        signatures = self._in.strings("signatures", MAX_SIGNATURE_LENGTH)
        ca = self._in.string("content address", MAX_CONTENT_ADDRESS_LENGTH)
        if nar_size == 0:
            raise InvalidArgumentError(f"{path}: narSize is 0, the client sent no NAR size")
        if self._valid.info(path) is not None:
            self._in.skip(nar_size, "NAR")
            self._out.u64(1)
            return
        info = self._ingest(
            path,
            references,
            _optional_path(deriver, "deriver"),
            nar_size,
            parse_nar_hash(nar_hash),
            tuple(parse_signature(s, f"signatures[{i}]") for i, s in enumerate(signatures)),
            ContentAddress.parse(ca) if ca else None,
        )
        self._valid.record(info)
        self._out.u64(1)

    def import_paths(self) -> None:
        """The ``nix-store --export`` stream; each path is recorded as it arrives, as Nix does."""
        while True:
            marker = self._in.u64("import marker")
            if marker == 0:
                break
            if marker != 1:
                raise ProtocolError(
                    f"import marker {marker}: input is not a 'nix-store --export' stream"
                )
            ingested = ingest_nar(
                self._in, _IMPORT_NAME, self._backend.blobs, self._backend.directories
            )
            if self._in.u64("export magic") != EXPORT_MAGIC:
                raise ProtocolError("export magic: input is not a 'nix-store --export' stream")
            path = StorePath.parse(self._in.path("path"), "path")
            references = _paths(self._in, "references")
            deriver = _optional_path(self._in.path("deriver"), "deriver")
            if self._in.u64("signature flag") == 1:
                self._in.string("legacy signature", MAX_SIGNATURE_LENGTH)
            if self._valid.info(path) is not None:
                continue
            self._check_references(path, references)
            info = PathInfo(
                path,
                ingested.node.renamed(path.basename.encode()),
                ingested.nar_sha256,
                ingested.nar_size,
                tuple(sorted_paths(references)),
                deriver,
            )
            self._valid.record(info)
        self._out.u64(1)

    def build_derivation(self) -> None:
        drv_path_text = self._in.path("drvPath")
        wire_drv = read_derivation(self._in)
        settings = read_build_settings(self._in, self._minor)
        result = self._builds.build_wire_derivation(drv_path_text, wire_drv, settings)
        write_build_result(self._out, result, self._minor)

    def build_paths(self) -> None:
        targets = self._in.strings("paths", MAX_STRING_LENGTH)
        settings = read_build_settings(self._in, self._minor)
        failure: BuildResult | None = self._builds.build_paths(targets, settings)
        if failure is None:
            self._out.u64(0)
        else:
            self._out.u64(self._builds.exit_status(failure))
            self._out.string(failure.message)

    # -- helpers -----------------------------------------------------------------------

    def _check_references(self, path: StorePath, references: list[StorePath]) -> None:
        missing = [r for r in sorted_paths(references) if r != path and self._valid.info(r) is None]
        if missing:
            raise NotFoundError(
                f"cannot add '{path}': its references are not valid here: "
                f"{', '.join(map(str, missing))}"
            )

    def _ingest(
        self,
        path: StorePath,
        references: list[StorePath],
        deriver: StorePath | None,
        nar_size: int,
        nar_sha256: bytes,
        signatures: tuple[Signature, ...],
        ca: ContentAddress | None,
    ) -> PathInfo:
        self._check_references(path, references)
        ingested = ingest_nar(
            self._in,
            path.basename.encode(),
            self._backend.blobs,
            self._backend.directories,
            expected_size=nar_size,
            expected_sha256=nar_sha256,
        )
        return PathInfo(
            path,
            ingested.node,
            ingested.nar_sha256,
            ingested.nar_size,
            tuple(sorted_paths(references)),
            deriver,
            signatures,
            ca,
        )
