"""The ``builder`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from builder.castore.blobs.service import READ_CHUNK_SIZE
from builder.castore.digest import Digest
from builder.castore.grpc.security import ChannelSecurity, read_channel_security
from builder.castore.nodes import FileNode, Node
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES, node_to_proto
from builder.cli_output import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    describe_node,
    format_bytes,
    outputs_table,
    report_error,
    report_unexpected,
)
from builder.config_file import add_config_option, parse_args
from builder.errors import BuilderError, InvalidArgumentError, NotFoundError, UnavailableError
from builder.executor.cancel import signals_cancel
from builder.executor.draining import DEFAULT_SHUTDOWN_GRACE
from builder.gc.collector import DEFAULT_MIN_AGE
from builder.logging_setup import FORMATS, LEVELS, configure_logging
from builder.process_end import end_process
from builder.remote.retry import DEFAULT_RETRY, RetryPolicy
from builder.store.store import DATA_DIR_ENV, Store, default_data_dir

DEFAULT_GC_INTERVAL = 600.0

if TYPE_CHECKING:
    from builder.castore.progress import TransferProgress
    from builder.executor.request import BuildRequest
    from builder.executor.request_file import RequestFile
    from builder.executor.service import BuildExecutor, BuildService, Event
    from builder.gc.pins import Pins
    from sandbox import Launcher


def _store(args: argparse.Namespace) -> Store:
    """The store the options name; a path that cannot be used is the option's fault."""
    try:
        return Store.open(None if args.store is None else str(args.store), args.data_dir)
    except InvalidArgumentError as error:
        if args.store is None:
            raise
        given = str(args.store)
        separator = " " if str(error).startswith(given) else f" {given}: "
        raise InvalidArgumentError(f"--store{separator}{error}") from error
    except OSError as error:
        if args.store is not None:
            where = f"--store {args.store}"
        elif args.data_dir is not None:
            where = f"--data-dir {args.data_dir}"
        else:
            where = f"data directory {default_data_dir()} (${DATA_DIR_ENV})"
        given = args.store or args.data_dir or default_data_dir()
        raise InvalidArgumentError(f"{where}: {_os_reason(error, given)}") from error


def _os_reason(error: OSError, given: str | Path) -> str:
    """Why a host path failed, naming the file when it is not the one the user gave."""
    reason = error.strerror or str(error)
    if error.filename is None or os.fsdecode(error.filename) == os.fsdecode(given):
        return reason
    return f"{reason}: {os.fsdecode(error.filename)}"


def _ingest_argument(
    argument: str,
    path: str,
    store: Store,
    name: bytes | None = None,
    progress: TransferProgress | None = None,
) -> Node:
    """Ingest a host path the user named; what cannot be read there is reported as
    ``argument``'s fault, the argument as the user wrote it."""
    from builder.castore.fs.ingest import ingest_path

    try:
        return ingest_path(
            Path(path),
            store.blobs,
            store.directories,
            name,
            record=store.import_record(),
            progress=progress,
        )
    except OSError as error:
        raise InvalidArgumentError(f"{argument}: {_os_reason(error, path)}") from error


def _check_readable(flag: str, path: Path | None) -> None:
    """A file a server reads at start: a missing one is the option's fault, said at once."""
    if path is None:
        return
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise InvalidArgumentError(f"{flag} {path}: {error.strerror or error}") from error


def _load_request(path: str) -> RequestFile:
    """The request in a file the user named, or an error naming the file."""
    from builder.executor.request_file import load_request_file

    try:
        return load_request_file(Path(path))
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"request file {error}") from error


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an unusable ``--out`` before the build spends any time."""
    from builder.executor.outputs import check_export_target

    if args.out is not None:
        try:
            check_export_target(args.out)
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"--out: {error}") from error


def _store_location(text: str) -> str | Path:
    """A store URL as given, or a composition file as a path (relative to a config file)."""
    return text if "://" in text else Path(text)


def _node_json(node: Node) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(node_to_proto(node)), sort_keys=True)


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
    from builder.castore.progress import TransferKind
    from builder.progress import reporters

    with _store(args) as store, reporters(sys.stderr).transfer(TransferKind.IMPORT) as progress:
        for path in args.paths:
            node = _ingest_argument(path, path, store, progress=progress)
            if args.json:
                print(_node_json(node))
            else:
                print(f"{path}\t{describe_node(node)}")


def cmd_materialise(args: argparse.Namespace) -> None:
    from builder.castore.fs.materialise import materialise_node

    with _store(args) as store:
        node = _resolve_digest(store, args.digest)
        if isinstance(node, FileNode) and args.executable:
            node = FileNode(node.name, node.digest, node.size, True)
        try:
            materialise_node(node, Path(args.dest), store.blobs, store.directories)
        except OSError as error:
            raise InvalidArgumentError(
                f"DEST {args.dest}: {_os_reason(error, args.dest)}"
            ) from error


def cmd_cat(args: argparse.Namespace) -> None:
    with _store(args) as store:
        digest = Digest.parse(args.digest)
        reader = store.blobs.open_read(digest)
        if reader is None:
            if store.directories.get(digest) is not None:
                raise InvalidArgumentError(
                    f"{digest} is a directory; cat writes a blob (use castore materialise "
                    "or castore nar)"
                )
            raise NotFoundError(f"blob {digest} not found")
        with reader:
            shutil.copyfileobj(reader, sys.stdout.buffer, READ_CHUNK_SIZE)
        sys.stdout.buffer.flush()


def cmd_nar(args: argparse.Namespace) -> None:
    from builder.castore.fs.nar import nar_hash, write_nar
    from builder.store import nixbase32

    with _store(args) as store:
        target = Path(args.path_or_digest)
        node: Node
        if target.exists() or target.is_symlink():
            node = _ingest_argument(args.path_or_digest, args.path_or_digest, store)
        else:
            try:
                node = _resolve_digest(store, args.path_or_digest)
            except InvalidArgumentError as error:
                raise InvalidArgumentError(
                    f"PATH_OR_DIGEST {args.path_or_digest}: no such path, and {error}"
                ) from error
        if args.hash:
            digest, size = nar_hash(node, store.blobs, store.directories)
            print(f"sha256:{nixbase32.encode(digest)}\t{size}")
        else:
            write_nar(node, sys.stdout.buffer, store.blobs, store.directories)
            sys.stdout.buffer.flush()


def cmd_castore_serve(args: argparse.Namespace) -> None:
    from builder.server.castore_server import serve_castore

    with _store(args) as store:
        serve_castore(
            store.blobs,
            store.directories,
            args.listen,
            grace=args.shutdown_grace,
            pathinfos=store.pathinfos,
            results=store.results,
        )


def _build_service(
    args: argparse.Namespace, store: Store, launcher: Launcher, allow_network: bool
) -> BuildService:
    from builder.executor.config import BuildConfig, BuildLimits
    from builder.executor.service import BuildService

    _check_build_numbers(args)
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
        build_dirs_in_memory=not args.build_dirs_on_disk,
    )
    try:
        return BuildService(config, store.blobs, store.directories, launcher, store.results)
    except OSError as error:
        where = "--work-dir" if args.work_dir else "work directory"
        reason = _os_reason(error, config.work_dir)
        raise InvalidArgumentError(f"{where} {config.work_dir}: {reason}") from error


def _check_build_numbers(args: argparse.Namespace) -> None:
    """Refuse a count or bound that would make no build possible or mean nothing."""
    least = (
        ("--jobs", args.jobs, 1),
        ("--queue", args.queue, 0),
        ("--memory-limit", args.memory_limit, 1),
        ("--cache-max-bytes", args.cache_max_bytes, 0),
        ("--max-input-size", args.max_input_size, 1),
    )
    for flag, value, minimum in least:
        if value is not None and value < minimum:
            raise InvalidArgumentError(f"{flag} must be at least {minimum}, got {value}")
    if not args.timeout > 0:
        raise InvalidArgumentError(f"--timeout must be more than 0 seconds, got {args.timeout}")
    if not args.log_retention >= 0:
        raise InvalidArgumentError(
            f"--log-retention must be 0 seconds or more, got {args.log_retention}"
        )


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
    from builder.server.metrics import parse_metrics_address

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise InvalidArgumentError("--tls-cert and --tls-key go together")
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
        for flag, path in (
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
            ("--tls-client-ca", args.tls_client_ca),
        ):
            _check_readable(flag, path)
    if args.max_directory_entries < 1:
        raise InvalidArgumentError("--max-directory-entries must be at least 1")
    metrics_address = parse_metrics_address(args.metrics_listen) if args.metrics_listen else None
    if args.gc_interval is not None and not args.gc_interval > 0:
        raise InvalidArgumentError(f"--gc-interval: {args.gc_interval} seconds is not positive")
    token = None
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as error:
            raise InvalidArgumentError(
                f"--token-file {args.token_file}: {error.strerror or error}"
            ) from error
    with (
        _local_builds(args, args.allow_network, one_shot=False) as (store, builds),
        contextlib.ExitStack() as nix,
    ):
        if args.nix_handoff is not None:
            from builder.nixserve.handoff_server import HandoffServer

            handoff = HandoffServer(args.nix_handoff, store, builds, args.nix_sessions)
            nix.enter_context(handoff)
        if args.store_max_bytes is not None or args.gc_interval is not None:
            nix.enter_context(_periodic_collection(args, store, builds))
        store_url = str(args.store or f"fs://{(args.data_dir or default_data_dir()).resolve()}")
        serve(
            store,
            builds,
            args.listen,
            tls,
            token,
            args.max_directory_entries,
            args.shutdown_grace,
            metrics_address,
            store_url,
            args.node_name,
        )


@contextlib.contextmanager
def _periodic_collection(
    args: argparse.Namespace, store: Store, builds: BuildService
) -> Iterator[None]:
    """Collect ``store`` every ``--gc-interval`` seconds while the server runs."""
    from builder.gc.collector import store_collector
    from builder.gc.periodic import PeriodicCollection
    from builder.gc.pins import PINS_FILE, Pins

    interval = DEFAULT_GC_INTERVAL if args.gc_interval is None else args.gc_interval
    pins = Pins((args.data_dir or default_data_dir()) / PINS_FILE)
    try:
        collector = store_collector(store, builds.results, pins, builds.leases)
        with PeriodicCollection(collector, interval, args.store_max_bytes, args.gc_min_age):
            yield
    finally:
        pins.close()


@contextlib.contextmanager
def _gc_pins(args: argparse.Namespace) -> Iterator[Pins]:
    from builder.gc.pins import PINS_FILE, Pins

    pins = Pins((args.data_dir or default_data_dir()) / PINS_FILE)
    try:
        yield pins
    finally:
        pins.close()


def cmd_gc(args: argparse.Namespace) -> None:
    from builder.gc.collector import store_collector

    with _store(args) as store, _gc_pins(args) as pins:
        report = store_collector(store, store.results, pins).collect(args.max_bytes, args.min_age)
    print(
        f"removed {report.blobs_removed} blobs ({format_bytes(report.blob_bytes_freed)}) and "
        f"{report.directories_removed} directories ({format_bytes(report.directory_bytes_freed)}); "
        f"evicted {report.roots_evicted} roots, kept {report.roots_kept}"
    )
    bound = "" if args.max_bytes is None else f" (bound {format_bytes(args.max_bytes)})"
    print(
        f"store: {format_bytes(report.store_bytes_before)} before, "
        f"{format_bytes(report.store_bytes_after)} after{bound}; took {report.duration:.1f} s"
    )


def cmd_gc_pin(args: argparse.Namespace) -> None:
    digest = Digest.parse(args.digest)
    with _gc_pins(args) as pins:
        pins.pin(digest, args.name)
    print(f"pinned {digest}")


def cmd_gc_unpin(args: argparse.Namespace) -> None:
    digest = Digest.parse(args.digest)
    with _gc_pins(args) as pins:
        if not pins.unpin(digest):
            raise NotFoundError(f"digest: {digest} is not pinned")
    print(f"unpinned {digest}")


def cmd_gc_pins(args: argparse.Namespace) -> None:
    with _gc_pins(args) as pins:
        for pin in pins.pins():
            print(f"{pin.digest} {pin.name}".rstrip())


def byte_count(text: str) -> int:
    """A number of bytes, optionally with a binary suffix: ``500M``, ``20G``."""
    factors = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, suffix = text[:-1], text[-1:].upper()
    if suffix.isdigit():
        number, suffix = text, ""
    if suffix not in factors or not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a byte count (a number, optionally K, M, G or T)"
        )
    return int(number) * factors[suffix]


def _imports(loaded: RequestFile, specs: list[str]) -> list[tuple[str, Path, str]]:
    """The request file's host paths, then each ``--import NAME=PATH``, which replaces one.

    Each comes with the words that name it to the user if it cannot be read.
    """
    flags = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise InvalidArgumentError(f"--import {spec!r}: expected NAME=PATH")
        flags.append((name, Path(path), f"--import {spec}"))
    named = {name for name, _, _ in flags}
    from_file = [(i.name, i.path, f"inputs.{i.name}") for i in loaded.imports]
    return [i for i in from_file if i[0] not in named] + flags


def _with_imports(
    request: BuildRequest, imports: list[tuple[str, Path, str]], store: Store
) -> BuildRequest:
    """Ingest each host path and make it the input NAME, replacing one of that name."""
    imported = []
    for name, path, argument in imports:
        node = _ingest_argument(argument, str(path), store, os.fsencode(name))
        print(f"imported {path} as {name}: {describe_node(node)}", file=sys.stderr)
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

    loaded = _load_request(args.request)
    imports = _imports(loaded, args.imports)
    _check_out(args)
    # The user runs this on their own machine, as with Nix: fixed-output
    # builds fetch from the network.
    with signals_cancel(), _local_builds(args, allow_network=True) as (store, builds):
        request = _with_imports(request_from_proto(loaded.message), imports, store)
        outcome = builds.build(request, _print_event)
        nodes = [o.node for o in outcome.outputs]
        if args.out:
            export_outputs(nodes, args.out, store.blobs, store.directories)
        if args.json:
            response = json_format.MessageToDict(snix_response(outcome.outputs))
            print(json.dumps(response, indent=2, sort_keys=True))
        else:
            print(outputs_table(request.outputs, nodes, [o.needles for o in outcome.outputs]))


def cmd_request_show(args: argparse.Namespace) -> None:
    from builder.executor.request import request_from_proto
    from builder.executor.request_file import render_request_file

    loaded = _load_request(args.request)
    request_from_proto(loaded.message).validate()
    sys.stdout.write(render_request_file(loaded, args.format))


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _channel_security(args: argparse.Namespace) -> ChannelSecurity:
    return read_channel_security(args.tls_ca, args.tls_cert, args.tls_key, args.token_file, _flag)


def cmd_build(args: argparse.Namespace) -> None:
    from google.protobuf import json_format

    from builder.executor.outputs import export_outputs
    from builder.executor.request import request_from_proto
    from builder.progress import reporters
    from builder.remote.client import RemoteBuilder

    loaded = _load_request(args.request)
    imports = _imports(loaded, args.imports)
    security = _channel_security(args)
    _check_out(args)
    store = _store(args)
    try:
        request = request_from_proto(loaded.message)
        request.validate()
        with (
            signals_cancel(),
            RemoteBuilder(
                args.remote, security, reporters(sys.stderr), _retry_policy(args)
            ) as remote,
        ):
            request = _with_imports(request, imports, store)
            outcome = remote.build(request, store.blobs, store.directories, _print_event)
            if args.out:
                remote.fetch(outcome.outputs, store.blobs, store.directories)
                export_outputs(outcome.outputs, args.out, store.blobs, store.directories)
        if args.json:
            response = json_format.MessageToDict(outcome.response)
            print(json.dumps(response, indent=2, sort_keys=True))
        else:
            needles = [tuple(o.needles) for o in outcome.response.outputs]
            print(outputs_table(request.outputs, outcome.outputs, needles))
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
        retry=_retry_policy(args),
    )
    try:
        yield remote
    finally:
        remote.close()


def _build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="directory for sandboxes and the materialisation cache (default: build/ in the "
        "data directory)",
    )
    parser.add_argument(
        "--system",
        action="append",
        default=[],
        help="a system builds may ask for, such as x86_64-linux (repeatable; default: this host's)",
    )
    parser.add_argument(
        "--allow-ro-path",
        action="append",
        default=[],
        help="host path builds may ask for in available_ro_paths (repeatable; default: none)",
    )
    parser.add_argument(
        "--shell", help="static shell provided as /bin/sh when asked for (default: busybox)"
    )
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="builds run at once (default: number of cores)"
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=64,
        metavar="N",
        help="builds that may wait for a job slot (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=4 * 3600.0,
        metavar="SECONDS",
        help="wall time per build, in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-limit",
        type=int,
        metavar="BYTES",
        help="memory per build, in bytes (default: no limit)",
    )
    parser.add_argument(
        "--no-result-cache",
        action="store_true",
        help="build every request again instead of answering repeats from the result cache",
    )
    parser.add_argument(
        "--cache-max-bytes",
        type=int,
        default=20 << 30,
        metavar="BYTES",
        help="size bound of the materialisation cache, in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--log-retention",
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="how long logs of finished builds stay available to GetLog, in seconds "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--build-dirs-on-disk",
        action="store_true",
        help="keep build directories (scratch paths with no output and no inputs, such as "
        "Nix's /build) in the work directory instead of a tmpfs, for builds that write "
        "more there than memory holds (default: in memory)",
    )
    parser.add_argument(
        "--max-input-size",
        type=int,
        metavar="ENTRIES",
        help="largest castore directory size (the size rule: about two per name, in "
        "entries) of a build's inputs together (default: 8388608)",
    )
    parser.epilog = (
        "Run as root, builds get host uids from $SANDBOX_UID_BASE (default 2000000000), "
        "$SANDBOX_UID_COUNT of them (default 1024), each held by a lock in "
        "$SANDBOX_UID_LOCK_DIR (default /run/sandbox-build-uids); processes that share "
        "a range must share that directory."
    )


def _request_file_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """What ``run`` and ``build --remote`` share: a request file, inputs to import, outputs."""
    parser.add_argument("request", help="request as .toml, .json, .txtpb or .pb (either family)")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="ingest a host path as input NAME before the build (repeatable; default: none)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help=out_help)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the response as protobuf JSON instead of one line per output",
    )


REMOTE_FORMS = (
    "grpc+unix:///PATH, grpc+http://HOST:PORT, grpc+https://HOST:PORT or grpc+dns:///NAME:PORT"
)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retries",
        type=_retry_count,
        default=DEFAULT_RETRY.retries,
        metavar="N",
        help="times a build refused as busy or cut off by a dying builder is sent again, "
        "to the next builder, waiting longer each time (default: %(default)s)",
    )
    parser.add_argument(
        "--retry-time",
        type=_seconds,
        default=DEFAULT_RETRY.total_seconds,
        metavar="SECONDS",
        help="no retry starts later than this many seconds after the first attempt "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        help="CA certificates (PEM) to check the server by (default: the system's)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="client certificate (PEM), with --tls-key (default: none)"
    )
    parser.add_argument(
        "--tls-key", type=Path, help="client private key (PEM), with --tls-cert (default: none)"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="send 'authorization: Bearer <token>' from this file (default: no token)",
    )


def _retry_count(text: str) -> int:
    count = int(text)
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of retries from 0")
    return count


def _retry_policy(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(args.retries, args.retry_time)


MAX_SECONDS = 1e9
"""About 31 years: longer waits overflow the timers they are handed to (inf crashed them)."""


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from 0 to {MAX_SECONDS:g}"
        )
    return seconds


def _server_options(parser: argparse.ArgumentParser) -> None:
    """Where a server listens, how it stops, and a file holding its other flags."""
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        help="address to listen on, grpc+unix:///PATH or grpc+http://HOST:PORT (repeatable; "
        "required)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=DEFAULT_SHUTDOWN_GRACE,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long running builds and other calls may go on "
        "before they are cancelled; a second signal cancels at once (default: %(default)s)",
    )
    add_config_option(parser)


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="CONFIG_OR_URL",
        type=_store_location,
        help="composition file (.toml/.json) or store URL (memory://, fs:///DIR, "
        "objectstore+file:///DIR, grpc+unix:///SOCKET, grpc+http://HOST:PORT); "
        "default: the embedded store in the data directory",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"embedded store directory (default: ${DATA_DIR_ENV}, else "
        "$XDG_DATA_HOME/builder, else ~/.local/share/builder)",
    )


class _VersionAction(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("sandboxed-builder")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        print(f"{parser.prog} {version}")
        parser.exit()


DIGEST_HELP = "digest as blake3-<base64>, bare base64 (as in --json output) or 64 hex digits"


def _log_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every command its log options: servers log as ``text``, the rest ``plain``.

    Walking the finished parser leaves no command without them, whoever adds one.
    """
    stack = [parser]
    while stack:
        current = stack.pop()
        commands = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if "func" in current._defaults:
            is_server = any("--listen" in a.option_strings for a in current._actions)
            _log_options(current, "text" if is_server else "plain")
        for action in commands:
            stack.extend(action.choices.values())


def _log_options(parser: argparse.ArgumentParser, default_format: str) -> None:
    """``--log-level`` and ``--log-format``; servers default to ``text``, one-shot commands
    to ``plain``, whose lines read as messages to the user at the terminal."""
    parser.add_argument(
        "--log-level",
        choices=list(LEVELS),
        default="info",
        help="least severe log lines shown (default: %(default)s); debug also lets "
        "gRPC's own C-core log through",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=default_format,
        help="log lines on stderr: text (timestamp, level, logger, message, key=value "
        "fields), json (one object per line) or plain (message and fields) "
        "(default: %(default)s)",
    )


def _min_age_option(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(
        flag,
        dest="gc_min_age" if flag == "--gc-min-age" else "min_age",
        type=_seconds,
        default=DEFAULT_MIN_AGE,
        metavar="SECONDS",
        help="never remove what was stored or uploaded again within this many seconds, so "
        "that uploads for builds about to start survive (default: %(default)g)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="builder",
        description="Run builds in a sandbox, here or on a server, and work with the\n"
        "content-addressed store they read and write (Tvix and Snix protocols).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    castore = commands.add_parser("castore", help="work with the content-addressed store")
    sub = castore.add_subparsers(dest="castore_command", required=True)

    p = sub.add_parser("import", help="ingest host paths and print their root nodes")
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or symlink to ingest")
    p.add_argument("--json", action="store_true", help="print each node as protobuf JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("materialise", help="write a stored directory or blob to DEST")
    p.add_argument("digest", help=DIGEST_HELP)
    p.add_argument("dest", help="path to create; it must not exist yet")
    p.add_argument("--executable", action="store_true", help="mark a blob executable")
    p.set_defaults(func=cmd_materialise)

    p = sub.add_parser("cat", help="write a blob to standard output")
    p.add_argument("digest", help=DIGEST_HELP)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("nar", help="render a host path or stored digest as a NAR")
    p.add_argument("path_or_digest", help="host path to ingest and render, or " + DIGEST_HELP)
    p.add_argument("--hash", action="store_true", help="print the NAR's sha256 and size instead")
    p.set_defaults(func=cmd_nar)

    p = sub.add_parser("serve", help="serve the store over gRPC (Tvix and Snix families)")
    _server_options(p)
    p.set_defaults(func=cmd_castore_serve)

    for subparser in sub.choices.values():
        _store_options(subparser)

    p = commands.add_parser("serve", help="serve builds and the store over gRPC")
    _server_options(p)
    p.add_argument(
        "--tls-cert",
        type=Path,
        help="server certificate (PEM) for TCP listeners, with --tls-key (default: no TLS)",
    )
    p.add_argument("--tls-key", type=Path, help="server private key (PEM) (default: no TLS)")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates from this CA (default: none required)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="require 'authorization: Bearer <token>' with the token in this file "
        "(default: no token)",
    )
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
        "--store handoff+unix://PATH; whoever can connect can build (mode from the umask; "
        "default: none)",
    )
    p.add_argument(
        "--nix-sessions",
        type=int,
        default=64,
        metavar="N",
        help="Nix connections served at once through --nix-handoff; more wait "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics, "
        "without authentication ([::1]:PORT for IPv6; port 0 picks a free one and "
        "logs it; default: no metrics)",
    )
    p.add_argument(
        "--store-max-bytes",
        type=byte_count,
        metavar="N",
        help="bound on the store's size in bytes (suffixes K, M, G, T): a garbage "
        "collection every --gc-interval evicts least recently used results and "
        "store paths to fit (default: no bound, and no collection)",
    )
    p.add_argument(
        "--gc-interval",
        type=_seconds,
        metavar="SECONDS",
        help="collect garbage every SECONDS; given alone, removes only what no root "
        f"reaches (default: {DEFAULT_GC_INTERVAL:g} with --store-max-bytes, else never)",
    )
    _min_age_option(p, "--gc-min-age")
    p.add_argument(
        "--node-name",
        metavar="NAME",
        help="name this builder gives clients on every build call, for their logs "
        "(default: HOSTNAME:PID)",
    )
    p.set_defaults(func=cmd_serve)
    _store_options(p)
    _build_options(p)

    p = commands.add_parser("run", help="execute one BuildRequest from a file")
    _request_file_options(p, "write the outputs into this directory (default: nowhere)")
    p.set_defaults(func=cmd_run)
    _store_options(p)
    _build_options(p)

    p = commands.add_parser("build", help="execute one BuildRequest on a remote server")
    p.add_argument(
        "--remote",
        required=True,
        metavar="ADDR",
        help=f"{REMOTE_FORMS}; several builders as a comma-separated list",
    )
    _request_file_options(p, "fetch the outputs into this directory (default: nowhere)")
    _client_options(p)
    p.set_defaults(func=cmd_build)
    _store_options(p)

    request = commands.add_parser("request", help="work with build request files")
    request_commands = request.add_subparsers(dest="request_command", required=True)
    p = request_commands.add_parser(
        "show", help="check a request file and print it in another form"
    )
    p.add_argument("request", help="request as .toml, .json, .txtpb or .pb (either family)")
    p.add_argument(
        "--format",
        choices=("toml", "json", "txtpb"),
        default="toml",
        help="form to print: toml (written by hand), json or txtpb (protobuf) "
        "(default: %(default)s)",
    )
    p.set_defaults(func=cmd_request_show)

    gc = commands.add_parser(
        "gc", help="remove what no root keeps; evict least recently used roots to fit a bound"
    )
    gc.add_argument(
        "--max-bytes",
        type=byte_count,
        metavar="N",
        help="bound on the store's size in bytes (suffixes K, M, G, T); "
        "default: no bound, remove only what no root reaches",
    )
    _min_age_option(gc, "--min-age")
    gc.set_defaults(func=cmd_gc)
    _store_options(gc)
    gc_commands = gc.add_subparsers(dest="gc_command")
    p = gc_commands.add_parser(
        "pin", help="keep DIGEST (a blob or directory tree) through every collection"
    )
    p.add_argument("digest", help="blake3-<base64> as printed by castore import, or 64 hex digits")
    p.add_argument("--name", default="", help="a label shown by 'gc pins' (default: none)")
    p.set_defaults(func=cmd_gc_pin)
    p = gc_commands.add_parser("unpin", help="stop keeping DIGEST")
    p.add_argument("digest", help="blake3-<base64> or 64 hex digits")
    p.set_defaults(func=cmd_gc_unpin)
    p = gc_commands.add_parser("pins", help="list pinned digests and their names")
    p.set_defaults(func=cmd_gc_pins)
    for subparser in gc_commands.choices.values():
        subparser.add_argument(
            "--data-dir",
            type=Path,
            default=argparse.SUPPRESS,
            help=f"where pins.sqlite is (default: ${DATA_DIR_ENV} or $XDG_DATA_HOME/builder)",
        )

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
        help=f"build on this server or these builders ({REMOTE_FORMS}; several as a "
        "comma-separated list) instead of here (default: build here)",
    )
    p.set_defaults(func=cmd_nix_build)
    _store_options(p)
    _build_options(p)
    _client_options(p)
    _log_options_everywhere(parser)
    return parser


def run() -> NoReturn:
    """The ``builder`` command: ``main`` on the process's arguments, its status the exit status."""
    end_process(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; its exit status says how it ended (``EXIT_CODES_HELP``)."""
    try:
        args = parse_args(build_parser(), argv)
    except BuilderError as exc:
        return report_error(exc)
    # Before any command imports grpc, which reads its log settings on import.
    configure_logging(args.log_level, args.log_format)
    try:
        args.func(args)
    except BuilderError as exc:
        return report_error(exc)
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        print("builder: error: interrupted by SIGINT", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report_unexpected(exc)
    return 0
