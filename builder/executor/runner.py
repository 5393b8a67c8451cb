"""Running one validated request: inputs mounted, command sandboxed, outputs stored.

Each build gets a private work directory holding the host side of its scratch
paths; inputs come from the materialisation cache as read-only bind mounts, so
the work directory only ever holds what the build itself writes, and it is
removed whatever happens: after the build has answered, by a thread of its
own (``DeferredRemoval``), and before the runner closes. Work directories
live in a directory owned by this process (``OwnedDirectory``), so those of a
process that was killed are removed by the next one to start, and any this
process failed to remove go once they are older than
``BuildConfig.stale_work_age``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.nodes import SymlinkNode
from builder.castore.owned_dir import OwnedDirectory
from builder.errors import (
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from builder.executor.cancel import CancelToken
from builder.executor.config import BuildConfig
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.outputs import CollectedOutput, collect_outputs
from builder.executor.removal import DeferredRemoval, remove_tree
from builder.executor.request import BuildRequest, PathTree, is_inside
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
    Symlink,
    hostpaths,
)
from sandbox.errors import UidsExhaustedError

LogSink = Callable[[bytes], None]
TAIL_LINES = 25
CANCEL_GRACE = 30.0
"""Seconds an interrupted wait gives the launcher to end the build it cancels."""


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
        self._owned = OwnedDirectory(config.work_dir / "builds", remove_tree, config.stale_work_age)
        self._removal = DeferredRemoval(config.job_slots)

    def run(
        self,
        request: BuildRequest,
        on_log: LogSink | None = None,
        cancel: CancelToken | None = None,
        slot: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> list[CollectedOutput]:
        """Run the build, holding ``slot()`` only while its inputs are set up and it runs.

        Collecting the outputs follows outside the slot, so the next build's
        sandbox need not wait for it, and is done before this returns or
        raises; the work tree is removed after that, while the caller answers
        its client (``wait_for_removals`` waits for it).
        """
        cancel = cancel or CancelToken()
        # The build sees its bind sources in /proc/self/mountinfo: a random
        # name tells it nothing about the build ids clients see.
        name = secrets.token_hex(16)
        work = self._owned.claim(name)
        try:
            work.mkdir()
            holders = PathTree(request.scratch_paths)
            # Validation saw to it that every output lies in a scratch path.
            output_holders = [holders.holder(output) for output in request.outputs]
            with slot(), ExitStack() as stack:
                spec, scratch_hosts = self._spec(request, output_holders, work, stack)
                if cancel.cancelled:
                    raise CancelledError("build cancelled before it started")
                result = self._sandboxed(spec, on_log, cancel)
            if cancel.cancelled:
                raise CancelledError("build cancelled")
            if not result.ok:
                raise _failure(result)
            locations = []
            for output, scratch in zip(request.outputs, output_holders, strict=True):
                assert scratch is not None
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
            self._removal.remove(work, lambda: self._owned.release(name))

    def wait_for_removals(self) -> None:
        """Return once the work trees of the builds that have returned are removed."""
        self._removal.wait()

    def close(self) -> None:
        """Remove this process's work directory; builds have ended by now."""
        self._removal.close()
        self._owned.close()

    def _sandboxed(
        self, spec: SandboxSpec, on_log: LogSink | None, cancel: CancelToken
    ) -> SandboxResult:
        """Run the spec, telling a request the sandbox refuses from a sandbox that failed.

        ``submit`` checks the spec before sending it, so a refusal there is
        the request's fault; the launcher checks it again with the same
        rules, so a rejection from its side (through ``wait``) means the host
        could not start the sandbox (no free build uid, a clone that failed).
        """
        try:
            handle = self._launcher.submit(spec, on_log)
        except SpecError as error:
            raise InvalidArgumentError(f"the sandbox refuses this request: {error}") from error
        except LauncherError as error:
            raise UnavailableError(f"the sandbox launcher is not available: {error}") from error
        try:
            cancel.attach(handle)
            try:
                return handle.wait()
            except BaseException:
                # Interrupted while waiting (a command's signal handler raises
                # here): the build must be gone before its work dir is removed,
                # or it keeps writing into what is being removed.
                with contextlib.suppress(Exception):
                    handle.cancel()
                    handle.wait(CANCEL_GRACE)
                raise
            finally:
                cancel.detach()
        except UidsExhaustedError as error:
            raise ResourceExhaustedError(str(error)) from error
        except LauncherError as error:
            raise UnavailableError(f"the sandbox launcher is not available: {error}") from error
        except SpecError as error:
            raise UnavailableError(
                f"the sandbox launcher could not start the build: {error}"
            ) from error

    def _spec(
        self,
        request: BuildRequest,
        output_holders: list[str | None],
        work: Path,
        stack: ExitStack,
    ) -> tuple[SandboxSpec, dict[str, Path]]:
        inputs_dir = request.inputs_dir
        holder = next(
            (s for s in request.scratch_paths if inputs_dir == s or is_inside(inputs_dir, s)),
            None,
        )
        # Only the dirs that hold an output or the inputs need a host dir; the
        # rest (Nix's build directory) are temporary, in memory like /tmp.
        kept = {*output_holders, holder}
        scratch_hosts = {}
        scratch = []
        temporary = []
        for i, path in enumerate(request.scratch_paths):
            if path not in kept and self._config.build_dirs_in_memory:
                temporary.append("/" + path)
                continue
            host = work / f"scratch-{i}"
            host.mkdir()
            scratch_hosts[path] = host
            scratch.append(Scratch(target="/" + path, host=str(host)))
        binds: list[Bind] = []
        symlinks: list[Symlink] = []
        staging_fd: int | None = None
        if holder is None:
            # The inputs directory is not writable, so symlinks and mount
            # points are prepared in a staging directory bound read-only first.
            staging = work / "inputs"
            staging.mkdir()
            binds.append(Bind(host=str(staging), target="/" + inputs_dir))
            staging_fd = hostpaths.open_dir(str(staging))
        elif self._config.limits.scratch_bytes is None:
            holder_fd = hostpaths.open_dir(str(scratch_hosts[holder]))
            try:
                staging_fd = hostpaths.walk(holder_fd, inputs_dir[len(holder) :], _ignore)
            finally:
                os.close(holder_fd)
        # Else the build sees a capped tmpfs at the scratch path, and the host
        # dir only receives its copy afterwards: nothing is prepared there, the
        # sandbox makes the mount targets in the tmpfs and the spec's symlinks.
        if staging_fd is not None:
            stack.callback(os.close, staging_fd)
        for node in request.inputs:
            name = os.fsdecode(node.name)
            if isinstance(node, SymlinkNode):
                if holder is None:
                    os.symlink(node.target, name, dir_fd=staging_fd)
                else:
                    target = os.fsdecode(node.target)
                    symlinks.append(Symlink(target=f"/{inputs_dir}/{name}", link=target))
                continue
            acquired = stack.enter_context(self._cache.acquire(node))
            assert acquired.host_path is not None
            # The mount target is made here even inside a scratch dir, where
            # the sandbox would make it otherwise: then the launcher, one
            # thread serving every build, would also have to remove it.
            if staging_fd is not None:
                if os.path.isdir(acquired.host_path):
                    os.mkdir(name, dir_fd=staging_fd)
                else:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(name, flags, 0o644, dir_fd=staging_fd))
                if holder is not None:
                    stack.callback(_remove_target, staging_fd, name)
            binds.append(Bind(host=str(acquired.host_path), target=f"/{inputs_dir}/{name}"))

        constraints = request.constraints
        limits = self._config.limits
        spec = SandboxSpec(
            argv=list(request.command_args),
            env=dict(request.environment),
            cwd="/" + request.working_dir,
            ro_binds=binds,
            scratch=scratch,
            temporary=temporary,
            files=[
                File(target="/" + f.path, contents=f.contents) for f in request.additional_files
            ],
            symlinks=symlinks,
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


def _remove_target(dir_fd: int, name: str) -> None:
    """Take an input's mount target out of the scratch dir before outputs are collected.

    Removed from the descriptor it was made in, so a build that moved the
    inputs dir cannot redirect the removal; only the empty directory or file
    made above goes. Failing that, the work dir's removal takes it later.
    """
    with contextlib.suppress(OSError):
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(found.st_mode):
            os.rmdir(name, dir_fd=dir_fd)
        elif stat.S_ISREG(found.st_mode) and found.st_size == 0:
            os.unlink(name, dir_fd=dir_fd)


def _ignore(parent_fd: int, name: str, path: str) -> None:
    """Directories made on the way to the inputs dir need no further handling."""


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
