"""Building what Nix asks for, with its limits, its log on stderr and its wording of failures.

A build runs on the executor (embedded or a server) while two threads watch
it: the limits Nix set and the connection, which Nix closes when it gives up.
Either cancels the build through its token; the executor then stops the
sandbox (or the server, when its call is cancelled), so no build outlives
the reason it ran for.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable, Mapping

from builder.errors import (
    BuilderError,
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    InvalidArgumentError,
    NotFoundError,
)
from builder.executor.cancel import CancelToken
from builder.executor.service import Event, LogData
from builder.nix.build import build_outputs
from builder.nix.derivation import Derivation
from builder.nixserve.backend import ServeBackend
from builder.nixserve.build_result import (
    BuildResult,
    BuildSettings,
    BuildStatus,
    LogTail,
    builder_failed_message,
)
from builder.nixserve.hangup import HangupWatcher
from builder.nixserve.limits import BuildLimits
from builder.nixserve.log_relay import LogRelay
from builder.nixserve.paths import ValidPaths
from builder.nixserve.wire_derivation import WireDerivation, to_derivation
from builder.store.store_path import StorePath

LOG_FD = 2
# ``nix-store``'s exit status for failed builds, which BuildPaths reports: 100, plus
# 1 if a build timed out and 2 for a hash mismatch; 1 for anything that is no build failure.
BUILD_FAILED_STATUS = 100
_BUILD_FAILURES = {
    BuildStatus.PERMANENT_FAILURE,
    BuildStatus.TRANSIENT_FAILURE,
    BuildStatus.OUTPUT_REJECTED,
    BuildStatus.TIMED_OUT,
    BuildStatus.LOG_LIMIT_EXCEEDED,
    BuildStatus.DEPENDENCY_FAILED,
}


class ClientHungUpError(BuilderError):
    """The client closed the connection while a build ran; the build was cancelled."""


def _how_it_failed(error: CommandFailedError) -> str:
    if error.signal:
        try:
            name = signal.Signals(error.signal).name
        except ValueError:
            name = "unknown signal"
        return f"failed due to signal {error.signal} ({name})"
    if error.exit_code is not None:
        return f"failed with exit code {error.exit_code}"
    if error.limit:
        return f"was stopped by this builder's {error.limit} limit"
    return f"failed: {error}"


class ServeBuilds:
    """Builds for one connection; their logs go to ``log_fd``, the stderr Nix shows.

    A hand-off server serves many connections at once, each with its own log
    descriptor, so the log is never simply this process's stderr.
    """

    def __init__(
        self,
        backend: ServeBackend,
        connection_fd: int,
        impure_env: Mapping[str, str],
        log_fd: int = LOG_FD,
    ) -> None:
        self._backend = backend
        self._connection_fd = connection_fd
        self._log_fd = log_fd
        self._impure_env = dict(impure_env)
        self._valid = ValidPaths(backend.pathinfos, backend.blobs, backend.recording)

    def build_wire_derivation(
        self, drv_path_text: str, wire: WireDerivation, settings: BuildSettings
    ) -> BuildResult:
        """BuildDerivation: the sources are the whole input closure and must all be valid."""
        start = int(time.time())
        try:
            drv_path = StorePath.parse(drv_path_text, "drvPath")
            drv = to_derivation(wire)
        except BuilderError as exc:
            return BuildResult(BuildStatus.MISC_FAILURE, str(exc), start, int(time.time()))
        return self.build(drv_path, drv, drv.input_sources, settings)

    def build(
        self,
        drv_path: StorePath,
        drv: Derivation,
        inputs: Iterable[StorePath],
        settings: BuildSettings,
    ) -> BuildResult:
        start = int(time.time())

        def finish(status: BuildStatus, message: str = "") -> BuildResult:
            return BuildResult(status, message, start, int(time.time()))

        try:
            closure = self._valid.closure(inputs)
        except NotFoundError as exc:
            return finish(BuildStatus.INPUT_REJECTED, f"cannot build '{drv_path}': {exc}")
        # The embedded executor starts its sandbox launcher here, before the threads below.
        executor = self._backend.executor()
        cancel = CancelToken()
        tail = LogTail()
        goal = f"building of '{drv_path}'"
        with (
            LogRelay(self._log_fd) as log,
            HangupWatcher(self._connection_fd, cancel) as hangup,
            BuildLimits(settings, goal, cancel) as limits,
        ):

            def on_event(_: StorePath, event: Event) -> None:
                if isinstance(event, LogData) and limits.output(len(event.data)):
                    log.write(event.data)
                    tail.add(event.data)

            try:
                infos = build_outputs(
                    executor,
                    drv_path,
                    drv,
                    list(closure.values()),
                    self._backend.blobs,
                    self._backend.directories,
                    self._impure_env,
                    on_event,
                    cancel,
                )
            except BuilderError as exc:
                if hangup.hung_up:
                    raise ClientHungUpError(
                        f"the client closed the connection; {goal} was cancelled"
                    ) from exc
                if limits.breach is not None:
                    return finish(limits.breach.status, limits.breach.message)
                if isinstance(exc, CancelledError):
                    return finish(BuildStatus.MISC_FAILURE, f"{goal} was cancelled: {exc}")
                if isinstance(exc, CommandFailedError):
                    # Nix retries a failed fixed-output build: its download may work next time.
                    status = (
                        BuildStatus.TRANSIENT_FAILURE
                        if drv.is_fixed_output
                        else BuildStatus.PERMANENT_FAILURE
                    )
                    return finish(
                        status,
                        builder_failed_message(str(drv_path), _how_it_failed(exc), tail.lines()),
                    )
                if isinstance(exc, BuildFailedError):
                    return finish(BuildStatus.OUTPUT_REJECTED, str(exc))
                return finish(BuildStatus.MISC_FAILURE, str(exc))
        for info in infos:
            self._valid.record(info)
        return finish(BuildStatus.BUILT)

    def valid_outputs(self, drv_paths: Iterable[StorePath]) -> list[StorePath]:
        """The outputs of these stored derivations that are valid here."""
        return [
            output.path
            for drv_path in drv_paths
            for output in self._valid.derivation(drv_path).outputs
            if self._valid.info(output.path) is not None
        ]

    def build_paths(self, targets: list[str], settings: BuildSettings) -> BuildResult | None:
        """BuildPaths: derivations stored here, built with their input derivations first.

        Returns the first failure, or None when every target is valid.
        """
        start = int(time.time())
        try:
            order = self._plan(targets)
        except BuilderError as exc:
            return BuildResult(BuildStatus.MISC_FAILURE, str(exc), start, int(time.time()))
        for drv_path, drv in order:
            if all(self._valid.info(o.path) is not None for o in drv.outputs):
                continue
            inputs = list(drv.input_sources)
            for input_drv, names in drv.input_derivations:
                outputs = {o.name: o.path for o in self._valid.derivation(input_drv).outputs}
                inputs.extend(outputs[name] for name in names if name in outputs)
            result = self.build(drv_path, drv, inputs, settings)
            if not result.succeeded:
                return result
        return None

    def _plan(self, targets: list[str]) -> list[tuple[StorePath, Derivation]]:
        """Derivations to consider, each after the derivations it takes inputs from."""
        roots = []
        for i, target in enumerate(targets):
            path = StorePath.parse(target.partition("!")[0], f"paths[{i}]")
            if path.name.endswith(".drv"):
                roots.append(path)
            else:
                self._valid.require(path)
        loaded: dict[StorePath, Derivation] = {}
        order: list[tuple[StorePath, Derivation]] = []
        done: set[StorePath] = set()
        stack: list[tuple[StorePath, bool]] = [(root, False) for root in reversed(roots)]
        while stack:
            path, expanded = stack.pop()
            if path in done:
                continue
            if expanded:
                done.add(path)
                order.append((path, loaded[path]))
                continue
            if path in loaded:
                # Started but not done: it is its own (indirect) input.
                raise InvalidArgumentError(f"derivation '{path}' depends on itself")
            loaded[path] = self._valid.derivation(path)
            stack.append((path, True))
            stack.extend(
                (dep, False) for dep, _ in loaded[path].input_derivations if dep not in done
            )
        return order

    @staticmethod
    def exit_status(failure: BuildResult) -> int:
        if failure.status not in _BUILD_FAILURES:
            return 1
        status = BUILD_FAILED_STATUS
        if failure.status is BuildStatus.TIMED_OUT:
            status |= 1
        if failure.status is BuildStatus.OUTPUT_REJECTED and "hash mismatch" in failure.message:
            status |= 2
        return status
