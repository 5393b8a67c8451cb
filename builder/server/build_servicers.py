"""BuildService servicers for both families and our streaming extension.

All three only translate: a request message becomes a ``BuildRequest``, the
call becomes ``BuildService.build`` with a cancel token that fires when the
client hangs up, and the outcome becomes the family's response message.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from builder.castore.grpc.metadata import NODE_KEY
from builder.errors import CommandFailedError
from builder.executor.cancel import CancelToken
from builder.executor.reporting import BuildReport, Caller, reported_build
from builder.executor.request import request_from_proto, snix_response, tvix_response
from builder.executor.service import BuildOutcome, BuildService, LogData, Started, new_build_id
from builder.proto.builder.v1 import build_events_pb2 as events_pb2
from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.proto.tvix.build.protos import rpc_build_pb2_grpc as tvix_rpc
from builder.server.status import rpc_errors, translated_errors


def _cancel_on_hangup(context: grpc.ServicerContext) -> CancelToken:
    cancel = CancelToken()
    context.add_callback(cancel.cancel)
    return cancel


def _name_node(context: grpc.ServicerContext, node_name: str) -> None:
    context.send_initial_metadata(((NODE_KEY, node_name),))


def _caller(context: grpc.ServicerContext, family: str) -> Caller:
    return Caller(context.peer(), family)


TVIX_SERVICE = "tvix.build.v1.BuildService"
SNIX_SERVICE = "snix.build.v1.BuildService"
EVENTS_SERVICE = "builder.v1.BuildEvents"


class BuildServicer:
    """``DoBuild`` for one family: the families differ only in the response message.

    Every build RPC is admitted before anything else happens, so a caller the
    builder cannot serve is refused at once instead of holding a server thread.
    """

    def __init__(
        self,
        service: BuildService,
        name: str,
        family: str,
        respond: Callable[[Any, BuildOutcome], Any],
        node_name: str,
    ) -> None:
        self._service = service
        self._node_name = node_name
        self._method = f"/{name}/DoBuild"
        self._family = family
        self._respond = respond

    def DoBuild(self, request: Any, context: grpc.ServicerContext) -> Any:
        _name_node(context, self._node_name)
        build_id = new_build_id()
        with (
            translated_errors(context, self._method, f"build {build_id}"),
            reported_build(build_id, _caller(context, self._family)) as report,
            self._service.admit(),
        ):
            report.start()
            outcome = self._service.build(
                request_from_proto(request), cancel=_cancel_on_hangup(context), build_id=build_id
            )
            report.cached = outcome.cached
            return self._respond(request, outcome)


_DONE = object()


def _log_chunk(data: bytes) -> Any:
    # The sandbox gives the command one pipe for stdout and stderr, as Nix
    # does, so their interleaving is kept and the stream cannot be told apart.
    return events_pb2.LogChunk(stream=events_pb2.LogChunk.STREAM_UNSPECIFIED, data=data)


def _failed_event(error: CommandFailedError) -> Any:
    return events_pb2.BuildEvent(
        failed=events_pb2.Failed(
            message=str(error),
            exit_code=-1 if error.exit_code is None else error.exit_code,
            signal=error.signal or 0,
            limit=error.limit or "",
        )
    )


class BuildEventsServicer(events_grpc.BuildEventsServicer):
    def __init__(self, service: BuildService, node_name: str) -> None:
        self._service = service
        self._node_name = node_name

    def StreamBuild(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        method = f"/{EVENTS_SERVICE}/StreamBuild"
        _name_node(context, self._node_name)
        build_id = new_build_id()
        subject = f"build {build_id}"
        with (
            translated_errors(context, method, subject),
            reported_build(build_id, _caller(context, "stream")) as report,
            self._service.admit(),
        ):
            report.start()
            for item in self._relay(request, context, build_id, report):
                if isinstance(item, CommandFailedError):
                    report.settle(item)
                    yield _failed_event(item)
                else:
                    yield item

    def _relay(
        self, request: Any, context: grpc.ServicerContext, build_id: str, report: BuildReport
    ) -> Iterator[Any]:
        """Run the build on its own thread and relay its events as they happen.

        A command that failed arrives as its error, for the caller to report;
        any other error is raised here, on the thread serving the call.
        """
        build_request = request_from_proto(request)
        cancel = _cancel_on_hangup(context)
        events: queue.Queue[object] = queue.Queue()

        def on_event(event: Started | LogData) -> None:
            if isinstance(event, Started):
                events.put(
                    events_pb2.BuildEvent(
                        started=events_pb2.Started(build_id=event.build_id, cached=event.cached)
                    )
                )
            else:
                events.put(events_pb2.BuildEvent(log=_log_chunk(event.data)))

        def run() -> None:
            try:
                outcome = self._service.build(build_request, on_event, cancel, build_id)
                report.cached = outcome.cached
                report.settle()
                events.put(
                    events_pb2.BuildEvent(
                        completed=events_pb2.Completed(response=snix_response(outcome.outputs))
                    )
                )
            except BaseException as error:  # handed to the streaming thread below
                events.put(error)
            finally:
                events.put(_DONE)

        worker = threading.Thread(target=run, name="stream-build", daemon=True)
        worker.start()
        while (item := events.get()) is not _DONE:
            if isinstance(item, BaseException) and not isinstance(item, CommandFailedError):
                raise item
            yield item
        worker.join()

    @rpc_errors
    def GetLog(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for data in self._service.follow_log(request.build_id, lambda: not context.is_active()):
            yield _log_chunk(data)


def add_build_services(server: grpc.Server, service: BuildService, node_name: str) -> list[str]:
    """Register both families' BuildService and BuildEvents; return their full names.

    Build calls name ``node_name`` in their initial metadata.
    """
    tvix_rpc.add_BuildServiceServicer_to_server(
        BuildServicer(
            service,
            TVIX_SERVICE,
            "tvix",
            lambda request, outcome: tvix_response(request, outcome.outputs),
            node_name,
        ),
        server,
    )
    snix_rpc.add_BuildServiceServicer_to_server(
        BuildServicer(
            service,
            SNIX_SERVICE,
            "snix",
            lambda request, outcome: snix_response(outcome.outputs),
            node_name,
        ),
        server,
    )
    events_grpc.add_BuildEventsServicer_to_server(BuildEventsServicer(service, node_name), server)
    return [TVIX_SERVICE, SNIX_SERVICE, EVENTS_SERVICE]
