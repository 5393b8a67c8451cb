"""Running one validated request: inputs mounted, command sandboxed, outputs stored.

Each build gets a private work directory holding the host side of its scratch
paths; inputs come from the materialisation cache as read-only bind mounts, so
the work directory only ever holds what the build itself writes, and it is
removed whatever happens.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from builder.build.cancel import CancelToken
from builder.build.config import BuildConfig
from builder.build.matcache import MaterialisationCache
from builder.build.outputs import CollectedOutput, collect_outputs
from builder.build.removal import remove_tree
from builder.build.request import BuildRequest, is_inside
from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.nodes import SymlinkNode
from builder.errors import (
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    InvalidArgumentError,
    UnavailableError,
)
from sandbox import (
    Bind,
    File,
    Launcher,
    LauncherError,
    Limits,
    SandboxResult,
    SandboxSpec,
    Scratch,
    SpecError,
)

LogSink = Callable[[bytes], None]
TAIL_LINES = 25


class BuildRunner:
    def __init__(
        self,
        config: BuildConfig,
        blobs: BlobService,
        directories: DirectoryService,
        launcher: Launcher,
        cache: MaterialisationCache,
    ) -> None:
        self._config = config
        self._blobs = blobs
        self._directories = directories
        self._launcher = launcher
        self._cache = cache
        self._builds_dir = config.work_dir / "builds"
        self._builds_dir.mkdir(parents=True, exist_ok=True)

    def run(
        self,
        request: BuildRequest,
        on_log: LogSink | None = None,
        cancel: CancelToken | None = None,
        build_id: str | None = None,
    ) -> list[CollectedOutput]:
        cancel = cancel or CancelToken()
        work = self._builds_dir / (build_id or uuid.uuid4().hex)
        work.mkdir()
        try:
            with ExitStack() as stack:
                spec, scratch_hosts = self._spec(request, work, stack)
                if cancel.cancelled:
                    raise CancelledError("build cancelled before it started")
                result = self._sandboxed(spec, on_log, cancel)
            if cancel.cancelled:
                raise CancelledError("build cancelled")
            if not result.ok:
                raise _failure(result)
            locations = []
            for output in request.outputs:
                scratch = next(s for s in request.scratch_paths if is_inside(output, s))
                locations.append((output, scratch_hosts[scratch], output[len(scratch) + 1 :]))
            try:
                return collect_outputs(
                    locations, request.refscan_needles, self._blobs, self._directories
                )
            except (BuildFailedError, InvalidArgumentError) as error:
                # The command succeeded but left outputs that cannot be
                # stored: the build failed, in terms of the paths it knows.
                message = str(error)
                for scratch, host in scratch_hosts.items():
                    message = message.replace(f"{host}/", f"/{scratch}/")
                raise CommandFailedError(f"build failed: {message}", result.exit_code) from error
        finally:
            remove_tree(work)

    def _sandboxed(
        self, spec: SandboxSpec, on_log: LogSink | None, cancel: CancelToken
    ) -> SandboxResult:
        """Run the spec, telling a request the sandbox refuses from a sandbox that failed.

        The spec is checked here first, so a refusal is the request's fault;
        the launcher checks it again with the same rules, so a rejection from
        its side means the host could not start the sandbox (no free build
        uid, a clone that failed).
        """
        try:
            spec.validate()
        except SpecError as error:
            raise InvalidArgumentError(f"the sandbox refuses this request: {error}") from error
        try:
            handle = self._launcher.submit(spec, on_log)
            cancel.attach(handle)
            try:
                return handle.wait()
            finally:
                cancel.detach()
        except LauncherError as error:
            raise UnavailableError(f"the sandbox launcher is not available: {error}") from error
        except SpecError as error:
            raise UnavailableError(
                f"the sandbox launcher could not start the build: {error}"
            ) from error

    def _spec(
        self, request: BuildRequest, work: Path, stack: ExitStack
    ) -> tuple[SandboxSpec, dict[str, Path]]:
        scratch_hosts = {}
        scratch = []
        for i, path in enumerate(request.scratch_paths):
            host = work / f"scratch-{i}"
            host.mkdir()
            scratch_hosts[path] = host
            scratch.append(Scratch(target="/" + path, host=str(host)))

        inputs_dir = request.inputs_dir
        holder = next(
            (s for s in request.scratch_paths if inputs_dir == s or is_inside(inputs_dir, s)),
            None,
        )
        binds: list[Bind] = []
        if holder is None:
            # The inputs directory is not writable, so symlinks and mount
            # points are prepared in a staging directory bound read-only first.
            staging = work / "inputs"
            staging.mkdir()
            binds.append(Bind(host=str(staging), target="/" + inputs_dir))
        else:
            staging = scratch_hosts[holder] / inputs_dir[len(holder) + 1 :]
            staging.mkdir(parents=True, exist_ok=True)
        for node in request.inputs:
            name = os.fsdecode(node.name)
            if isinstance(node, SymlinkNode):
                os.symlink(node.target, staging / name)
                continue
            acquired = stack.enter_context(self._cache.acquire(node))
            assert acquired.host_path is not None
            if holder is None:
                mountpoint = staging / name
                if os.path.isdir(acquired.host_path):
                    mountpoint.mkdir()
                else:
                    mountpoint.touch()
            binds.append(Bind(host=str(acquired.host_path), target=f"/{inputs_dir}/{name}"))

        constraints = request.constraints
        limits = self._config.limits
        spec = SandboxSpec(
            argv=list(request.command_args),
            env=dict(request.environment),
            cwd="/" + request.working_dir,
            ro_binds=binds,
            scratch=scratch,
            files=[
                File(target="/" + f.path, contents=f.contents) for f in request.additional_files
            ],
            network=constraints.network_access,
            ro_paths=list(constraints.available_ro_paths),
            shell=self._config.shell if constraints.provide_bin_sh else None,
            limits=Limits(
                wall_time=limits.wall_time,
                silence=limits.silence,
                memory=limits.memory,
                processes=limits.processes,
                log_bytes=limits.log_bytes,
                scratch_bytes=limits.scratch_bytes,
            ),
        )
        return spec, scratch_hosts


def _failure(result: SandboxResult) -> CommandFailedError:
    if result.error:
        how = f"could not run: {result.error}"
    elif result.stopped_by:
        how = f"stopped by the {result.stopped_by} limit"
    elif result.signal:
        how = f"killed by signal {result.signal}"
    else:
        how = f"exited with code {result.exit_code}"
    lines = result.log.decode(errors="replace").splitlines()[-TAIL_LINES:]
    tail = "\n".join(lines)
    message = f"build failed: {how}" + (f"; last log lines:\n{tail}" if tail else "")
    return CommandFailedError(message, result.exit_code, result.signal, result.stopped_by)
