"""Building one derivation whose inputs are all available, and recording its outputs.

The build service runs the request; what comes back is turned into what Nix
needs to accept the outputs as store paths: the NAR hash and size, and the
references, read from the refscan result (each found needle is a hash part
of an output or input path, so its index names the referenced path).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.nar import nar_hash
from builder.errors import BuildFailedError
from builder.executor.service import BuildExecutor, Event
from builder.nix.derivation import Derivation, load_derivation
from builder.nix.fixed_output import verify_fixed_output
from builder.nix.inputs import InputResolver
from builder.nix.to_request import derivation_to_request
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService
from builder.store.store_path import StorePath

EventCallback = Callable[[StorePath, Event], None]


def input_paths(drv: Derivation) -> list[StorePath]:
    """Sources and the wanted outputs of input derivations, read from their ``.drv`` files."""
    paths = list(drv.input_sources)
    for input_drv, names in drv.input_derivations:
        outputs = {o.name: o.path for o in load_derivation(str(input_drv)).outputs}
        for name in names:
            if name not in outputs:
                raise BuildFailedError(f"{input_drv} has no output {name!r}")
            paths.append(outputs[name])
    return paths


class DerivationBuilder:
    def __init__(
        self,
        service: BuildExecutor,
        resolver: InputResolver,
        registry: PathInfoService,
        blobs: BlobService,
        directories: DirectoryService,
        impure_env: Mapping[str, str] | None = None,
    ) -> None:
        self._service = service
        self._resolver = resolver
        self._registry = registry
        self._blobs = blobs
        self._directories = directories
        self._impure_env = impure_env

    def known_outputs(self, drv: Derivation) -> list[PathInfo]:
        """Outputs built before, here or by Nix (then ingested), in the derivation's order."""
        paths = [o.path for o in drv.outputs]
        by_path = {info.path: info for info in self._resolver.closure(paths)}
        return [by_path[path] for path in paths]

    def build(
        self,
        drv_path: StorePath,
        drv: Derivation,
        on_event: EventCallback | None = None,
        record: bool = True,
    ) -> list[PathInfo]:
        """Build and, unless ``record`` is false (a check build), remember the outputs."""
        closure = self._resolver.closure(input_paths(drv))
        nix_request = derivation_to_request(
            drv,
            [(info.path, info.node) for info in closure],
            self._service.build_cores,
            self._impure_env,
        )
        sink = (lambda event: on_event(drv_path, event)) if on_event else None
        try:
            outcome = self._service.build(nix_request.request, sink)
        except BuildFailedError as exc:
            raise BuildFailedError(f"builder for '{drv_path}' failed: {exc}") from exc
        collected = {o.path: o for o in outcome.outputs}
        infos = []
        for output in drv.outputs:
            result = collected[nix_request.request_output(output.name)]
            if drv.is_fixed_output:
                verify_fixed_output(drv_path, output, result.node, self._blobs, self._directories)
            digest, size = nar_hash(result.node, self._blobs, self._directories)
            references = sorted({nix_request.needle_paths[i] for i in result.needles})
            if drv.is_fixed_output and references:
                raise BuildFailedError(
                    f"illegal path references in fixed-output derivation '{drv_path}': "
                    f"{', '.join(map(str, references))}"
                )
            infos.append(
                PathInfo(output.path, result.node, digest, size, tuple(references), drv_path)
            )
        if record:
            for info in infos:
                self._registry.put(info)
        return infos
