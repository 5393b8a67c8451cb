"""Build requests and their outputs in the store's result cache.

Both families encode a BuildRequest identically, so the digest of its
deterministic encoding identifies the request whichever family sent it, on any
builder sharing the cache. A recorded result is only served while every output
it names is still complete in the store (the build service checks); otherwise
the request simply runs again.
"""

from __future__ import annotations

from builder.castore.digest import Digest
from builder.castore.wire import Family
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest, request_to_proto, tvix_response
from builder.store.results.service import ResultCache, result_nodes


def request_digest(request: BuildRequest) -> Digest:
    return Digest.of(request_to_proto(request, Family.TVIX).SerializeToString(deterministic=True))


def record_result(
    results: ResultCache, request: BuildRequest, outputs: list[CollectedOutput]
) -> None:
    results.put(bytes(request_digest(request)), tvix_response(None, outputs))


def recorded_result(results: ResultCache, request: BuildRequest) -> list[CollectedOutput] | None:
    """The outputs recorded for ``request``, unless they are not one per requested output.

    The names are the request's: the result was recorded under its digest,
    which covers the output paths, and a result from a shared store that does
    not match in number is ignored rather than trusted.
    """
    build = results.get(bytes(request_digest(request)))
    if build is None or len(build.outputs) != len(request.outputs):
        return None
    nodes = result_nodes(build, "result")
    return [
        CollectedOutput(path, node, tuple(needles.needles))
        for path, node, needles in zip(request.outputs, nodes, build.outputs_needles, strict=True)
    ]
