"""The ``builder`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from builder.castore.blobs.service import READ_CHUNK_SIZE
from builder.castore.digest import Digest
from builder.castore.grpc.security import ChannelSecurity, read_channel_security
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES, node_to_proto
from builder.errors import BuilderError, InvalidArgumentError, NotFoundError, UnavailableError
from builder.executor.cancel import signals_cancel
from builder.store.store import DATA_DIR_ENV, Store, default_data_dir

if TYPE_CHECKING:
    from builder.executor.request import BuildRequest
    from builder.executor.service import BuildExecutor, BuildService, Event
    from sandbox import Launcher


def _store(args: argparse.Namespace) -> Store:
    return Store.open(args.store, args.data_dir)


def _node_json(node: Node) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(node_to_proto(node)), sort_keys=True)


def _describe(node: Node) -> str:
    if isinstance(node, DirectoryNode):
        return f"directory {node.digest} size={node.size}"
    if isinstance(node, FileNode):
        mode = " executable" if node.executable else ""
        return f"file {node.digest} size={node.size}{mode}"
    return f"symlink -> {os.fsdecode(node.target)}"


def _resolve_digest(store: Store, text: str) -> Node:
    """A digest names a directory if the directory service knows it, else a blob."""
    digest = Digest.parse(text)
    directory = store.directories.get(digest)
    if directory is not None:
        return directory.node(b"")
    if store.blobs.has(digest):
        reader = store.blobs.open_read(digest)
        assert reader is not None
        with reader:
            size = reader.seek(0, os.SEEK_END)
        return FileNode(b"", digest, size)
    raise NotFoundError(f"{digest} is neither a stored directory nor a stored blob")


def cmd_import(args: argparse.Namespace) -> None:
    from builder.castore.fs.ingest import ingest_path
    from builder.castore.progress import TransferKind
    from builder.progress import reporters

    with _store(args) as store, reporters(sys.stderr).transfer(TransferKind.IMPORT) as progress:
        for path in args.paths:
            node = ingest_path(
                Path(path),
                store.blobs,
                store.directories,
                record=store.import_record(),
                progress=progress,
            )
            if args.json:
                print(_node_json(node))
            else:
                print(f"{path}\t{_describe(node)}")


def cmd_materialise(args: argparse.Namespace) -> None:
    from builder.castore.fs.materialise import materialise_node

    with _store(args) as store:
        node = _resolve_digest(store, args.digest)
        if isinstance(node, FileNode) and args.executable:
            node = FileNode(node.name, node.digest, node.size, True)
        materialise_node(node, Path(args.dest), store.blobs, store.directories)


def cmd_cat(args: argparse.Namespace) -> None:
    with _store(args) as store:
        digest = Digest.parse(args.digest)
        reader = store.blobs.open_read(digest)
        if reader is None:
            raise NotFoundError(f"blob {digest} not found")
        with reader:
            shutil.copyfileobj(reader, sys.stdout.buffer, READ_CHUNK_SIZE)
        sys.stdout.buffer.flush()


def cmd_nar(args: argparse.Namespace) -> None:
    from builder.castore.fs.ingest import ingest_path
    from builder.castore.fs.nar import nar_hash, write_nar
    from builder.store import nixbase32

    with _store(args) as store:
        target = Path(args.path_or_digest)
        node: Node
        if target.exists() or target.is_symlink():
            node = ingest_path(target, store.blobs, store.directories, record=store.import_record())
        else:
            node = _resolve_digest(store, args.path_or_digest)
        if args.hash:
            digest, size = nar_hash(node, store.blobs, store.directories)
            print(f"sha256:{nixbase32.encode(digest)}\t{size}")
        else:
            write_nar(node, sys.stdout.buffer, store.blobs, store.directories)
            sys.stdout.buffer.flush()


def cmd_castore_serve(args: argparse.Namespace) -> None:
    from builder.server.castore_server import serve_castore

    with _store(args) as store:
        serve_castore(store.blobs, store.directories, args.listen, pathinfos=store.pathinfos)


def _build_service(
    args: argparse.Namespace, store: Store, launcher: Launcher, allow_network: bool
) -> BuildService:
    from builder.executor.config import BuildConfig, BuildLimits
    from builder.executor.service import BuildService

    data_dir = args.data_dir or default_data_dir()
    defaults = BuildConfig(work_dir=args.work_dir or data_dir / "build")
    config = BuildConfig(
        work_dir=defaults.work_dir,
        systems=tuple(args.system) or defaults.systems,
        allowed_ro_paths=tuple(args.allow_ro_path),
        shell=args.shell or defaults.shell,
        limits=BuildLimits(wall_time=args.timeout, memory=args.memory_limit),
        job_slots=args.jobs or defaults.job_slots,
        queue_length=args.queue,
        result_cache=not args.no_result_cache,
        cache_max_bytes=args.cache_max_bytes,
        log_retention_seconds=args.log_retention,
        max_input_size=args.max_input_size or defaults.max_input_size,
        allow_network=allow_network,
    )
    return BuildService(config, store.blobs, store.directories, launcher)


def _launcher(one_shot: bool) -> Launcher:
    """A sandbox launcher: spawned without waiting for a one-shot command, started for a server.

    A one-shot command does not wait for the launcher: its start overlaps the
    imports and the work that come before the first build, whose submission
    queues until the launcher reads it (a launcher that fails to start fails
    that build). It keeps one spare PID 1 rather than a server's pool. A
    server waits, so that a host that cannot sandbox stops it at start.
    """
    from sandbox import Launcher, LauncherConfig, LauncherError

    try:
        return Launcher(LauncherConfig(spares=1)).spawn() if one_shot else Launcher().start()
    except LauncherError as error:
        raise UnavailableError(f"the sandbox launcher is not available: {error}") from error


@contextlib.contextmanager
def _sandboxed_builds(
    args: argparse.Namespace, store: Store, launcher: Launcher, allow_network: bool
) -> Iterator[BuildService]:
    """A build service on ``store`` and ``launcher``, then the launcher, closed in that order."""
    with contextlib.ExitStack() as opened:
        opened.callback(launcher.stop)
        builds = _build_service(args, store, launcher, allow_network)
        opened.callback(builds.close)
        yield builds


@contextlib.contextmanager
def _local_builds(
    args: argparse.Namespace, allow_network: bool, one_shot: bool = True
) -> Iterator[tuple[Store, BuildService]]:
    """A launcher, a store and a build service on both, closed in the reverse order.

    The launcher comes first, so that its start overlaps opening the store;
    whatever was opened when a later step fails is closed all the same.
    """
    launcher = _launcher(one_shot)
    try:
        store = _store(args)
    except BaseException:
        launcher.stop()
        raise
    with store, _sandboxed_builds(args, store, launcher, allow_network) as builds:
        yield store, builds


def cmd_serve(args: argparse.Namespace) -> None:
    from builder.server.app import serve
    from builder.server.assembly import TlsConfig

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise InvalidArgumentError("--tls-cert and --tls-key go together")
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.max_directory_entries < 1:
        raise InvalidArgumentError("--max-directory-entries must be at least 1")
    token = None
    if args.token_file:
        token = args.token_file.read_text().strip()
    with (
        _local_builds(args, args.allow_network, one_shot=False) as (store, builds),
        contextlib.ExitStack() as nix,
    ):
        if args.nix_handoff is not None:
            from builder.nixserve.handoff_server import HandoffServer

            handoff = HandoffServer(args.nix_handoff, store, builds, args.nix_sessions)
            nix.enter_context(handoff)
        serve(store, builds, args.listen, tls, token, args.max_directory_entries)


def _with_imports(request: BuildRequest, specs: list[str], store: Store) -> BuildRequest:
    """Ingest each ``NAME=PATH`` and make it the input NAME, replacing one of that name."""
    from builder.castore.fs.ingest import ingest_path

    imported = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise InvalidArgumentError(f"--import {spec!r}: expected NAME=PATH")
        node = ingest_path(
            Path(path),
            store.blobs,
            store.directories,
            os.fsencode(name),
            record=store.import_record(),
        )
        print(f"imported {path} as {name}: {_describe(node)}", file=sys.stderr)
        imported.append(node)
    if not imported:
        return request
    replaced = {n.name for n in imported}
    inputs = [n for n in request.inputs if n.name not in replaced] + imported
    return dataclasses.replace(request, inputs=tuple(sorted(inputs, key=lambda n: n.name)))


def _print_event(event: Event) -> None:
    from builder.executor.service import LogData, Started

    if isinstance(event, LogData):
        sys.stderr.buffer.write(event.data)
        sys.stderr.buffer.flush()
    elif isinstance(event, Started):
        how = "answered from the result cache" if event.cached else "started"
        print(f"builder: build {event.build_id} {how}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> None:
    from google.protobuf import json_format

    from builder.executor.outputs import export_outputs
    from builder.executor.request import request_from_proto, snix_response
    from builder.executor.request_file import load_request_message

    message = load_request_message(Path(args.request))
    # The user runs this on their own machine, as with Nix: fixed-output
    # builds fetch from the network.
    with signals_cancel(), _local_builds(args, allow_network=True) as (store, builds):
        request = _with_imports(request_from_proto(message), args.imports, store)
        outcome = builds.build(request, _print_event)
        if args.out:
            nodes = [o.node for o in outcome.outputs]
            export_outputs(nodes, args.out, store.blobs, store.directories)
        response = json_format.MessageToDict(snix_response(outcome.outputs))
        print(json.dumps(response, indent=2, sort_keys=True))


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _channel_security(args: argparse.Namespace) -> ChannelSecurity:
    return read_channel_security(args.tls_ca, args.tls_cert, args.tls_key, args.token_file, _flag)


def cmd_build(args: argparse.Namespace) -> None:
    from google.protobuf import json_format

    from builder.executor.outputs import export_outputs
    from builder.executor.request import request_from_proto
    from builder.executor.request_file import load_request_message
    from builder.progress import reporters
    from builder.remote.client import RemoteBuilder

    message = load_request_message(Path(args.request))
    security = _channel_security(args)
    store = _store(args)
    try:
        request = request_from_proto(message)
        request.validate()
        with (
            signals_cancel(),
            RemoteBuilder(args.remote, security, reporters(sys.stderr)) as remote,
        ):
            request = _with_imports(request, args.imports, store)
            outcome = remote.build(request, store.blobs, store.directories, _print_event)
            if args.out:
                remote.fetch(outcome.outputs, store.blobs, store.directories)
                export_outputs(outcome.outputs, args.out, store.blobs, store.directories)
        response = json_format.MessageToDict(outcome.response)
        print(json.dumps(response, indent=2, sort_keys=True))
    finally:
        store.close()


def cmd_nix_build(args: argparse.Namespace) -> None:
    from builder.nix.command import nix_build
    from builder.nix.paths import NixPaths

    if args.remote and args.check:
        raise InvalidArgumentError("--check builds here: a server may answer from its result cache")
    if args.check:
        args.no_result_cache = True
    with _store(args) as store, signals_cancel():
        paths = NixPaths(store.pathinfos, store.blobs, store.directories)
        if args.remote:
            nix_build(
                paths, args.derivation, args.import_to_nix, False, lambda: _remote(args, store)
            )
        else:

            def local() -> contextlib.AbstractContextManager[BuildService]:
                return _sandboxed_builds(args, store, _launcher(one_shot=True), True)

            nix_build(paths, args.derivation, args.import_to_nix, args.check, local)


@contextlib.contextmanager
def _remote(args: argparse.Namespace, store: Store) -> Iterator[BuildExecutor]:
    from builder.progress import reporters
    from builder.remote.executor import RemoteBuildExecutor

    remote = RemoteBuildExecutor(
        args.remote,
        store.blobs,
        store.directories,
        _channel_security(args),
        args.jobs,
        reporters=reporters(sys.stderr),
    )
    try:
        yield remote
    finally:
        remote.close()


def _build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path, help="sandboxes and materialisation cache")
    parser.add_argument(
        "--system", action="append", default=[], help="supported system (repeatable)"
    )
    parser.add_argument(
        "--allow-ro-path",
        action="append",
        default=[],
        help="host path builds may ask for in available_ro_paths (repeatable)",
    )
    parser.add_argument("--shell", help="static shell provided as /bin/sh (default: busybox)")
    parser.add_argument("--jobs", type=int, help="job slots (default: number of cores)")
    parser.add_argument("--queue", type=int, default=64, help="builds waiting for a slot")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="wall time per build")
    parser.add_argument("--memory-limit", type=int, help="memory per build, bytes")
    parser.add_argument("--no-result-cache", action="store_true")
    parser.add_argument(
        "--cache-max-bytes", type=int, default=20 << 30, help="materialisation cache bound"
    )
    parser.add_argument(
        "--log-retention",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long logs of finished builds stay available to GetLog",
    )
    parser.add_argument(
        "--max-input-size",
        type=int,
        metavar="SIZE",
        help="largest castore directory size (the size rule: about two per name) of a "
        "build's inputs together (default: 8388608)",
    )
    parser.epilog = (
        "Run as root, builds get host uids from $SANDBOX_UID_BASE (default 2000000000), "
        "$SANDBOX_UID_COUNT of them (default 1024), each held by a lock in "
        "$SANDBOX_UID_LOCK_DIR (default /run/sandbox-build-uids); processes that share "
        "a range must share that directory."
    )


def _request_file_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """What ``run`` and ``build --remote`` share: a request file, inputs to import, outputs."""
    parser.add_argument("request", help="request as .json, .txtpb or .pb (either family)")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="ingest a host path as input NAME before the build (repeatable)",
    )
    parser.add_argument("--out", type=Path, help=out_help)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", type=Path, help="CA certificates (PEM) to check the server by")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="client private key (PEM)")
    parser.add_argument(
        "--token-file", type=Path, help="send 'authorization: Bearer <token>' from this file"
    )


def _listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        help="grpc+unix:///PATH or grpc+http://HOST:PORT; may be repeated",
    )


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="CONFIG_OR_URL",
        help="composition file (.toml/.json) or store URL (memory://, fs:///DIR, "
        "objectstore+file:///DIR, grpc+unix:///SOCKET, grpc+http://HOST:PORT); "
        "default: the embedded store in the data directory",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"embedded store directory (default: ${DATA_DIR_ENV} or $XDG_DATA_HOME/builder)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="builder", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    castore = commands.add_parser("castore", help="work with the content-addressed store")
    sub = castore.add_subparsers(dest="castore_command", required=True)

    p = sub.add_parser("import", help="ingest host paths and print their root nodes")
    p.add_argument("paths", nargs="+")
    p.add_argument("--json", action="store_true", help="print each node as protobuf JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("materialise", help="write a stored directory or blob to DEST")
    p.add_argument("digest")
    p.add_argument("dest")
    p.add_argument("--executable", action="store_true", help="mark a blob executable")
    p.set_defaults(func=cmd_materialise)

    p = sub.add_parser("cat", help="write a blob to standard output")
    p.add_argument("digest")
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("nar", help="render a host path or stored digest as a NAR")
    p.add_argument("path_or_digest")
    p.add_argument("--hash", action="store_true", help="print the NAR's sha256 and size instead")
    p.set_defaults(func=cmd_nar)

    p = sub.add_parser("serve", help="serve the store over gRPC (Tvix and Snix families)")
    _listen_options(p)
    p.set_defaults(func=cmd_castore_serve)

    for subparser in sub.choices.values():
        _store_options(subparser)

    p = commands.add_parser("serve", help="serve builds and the store over gRPC")
    _listen_options(p)
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM) for TCP listeners")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="require client certificates from this CA")
    p.add_argument("--token-file", type=Path, help="require 'authorization: Bearer <token>'")
    p.add_argument(
        "--max-directory-entries",
        type=int,
        default=DEFAULT_MAX_DIRECTORY_ENTRIES,
        help="most entries one Directory message may carry (default: %(default)s)",
    )
    p.add_argument(
        "--allow-network",
        action="store_true",
        help="let builds that ask for network access share this host's network",
    )
    p.add_argument(
        "--nix-handoff",
        type=Path,
        metavar="PATH",
        help="unix socket taking Nix connections from builder-nix-serve "
        "--store handoff+unix://PATH; whoever can connect can build (mode from the umask)",
    )
    p.add_argument(
        "--nix-sessions",
        type=int,
        default=64,
        metavar="N",
        help="Nix connections served at once through --nix-handoff; more wait "
        "(default: %(default)s)",
    )
    p.set_defaults(func=cmd_serve)
    _store_options(p)
    _build_options(p)

    p = commands.add_parser("run", help="execute one BuildRequest from a file")
    _request_file_options(p, "materialise the outputs into this directory")
    p.set_defaults(func=cmd_run)
    _store_options(p)
    _build_options(p)

    p = commands.add_parser("build", help="execute one BuildRequest on a remote server")
    p.add_argument(
        "--remote",
        required=True,
        metavar="ADDR",
        help="grpc+unix:///PATH, grpc+http://HOST:PORT or grpc+https://HOST:PORT",
    )
    _request_file_options(p, "fetch the outputs into this directory")
    _client_options(p)
    p.set_defaults(func=cmd_build)
    _store_options(p)

    nix = commands.add_parser("nix", help="build Nix derivations")
    nix_commands = nix.add_subparsers(dest="nix_command", required=True)
    p = nix_commands.add_parser("build", help="build a .drv and its missing dependencies")
    p.add_argument("derivation", help="/nix/store/...drv")
    p.add_argument(
        "--import-to-nix", action="store_true", help="import the outputs into the Nix store"
    )
    p.add_argument(
        "--check", action="store_true", help="build again and report whether outputs are identical"
    )
    p.add_argument(
        "--remote",
        metavar="ADDR",
        help="build on this server (grpc+unix://, grpc+http://, grpc+https://) instead of here",
    )
    p.set_defaults(func=cmd_nix_build)
    _store_options(p)
    _build_options(p)
    _client_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="builder: %(message)s")
    try:
        args.func(args)
    except BuilderError as exc:
        print(f"builder: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return 0
