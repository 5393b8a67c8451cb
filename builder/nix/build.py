"""Building one derivation whose inputs are all available, and recording its outputs.

The build service runs the request; what comes back is turned into what Nix
needs to accept the outputs as store paths: the NAR hash and size, and the
references, read from the refscan result (each found needle is a hash part
of an output or input path, so its index names the referenced path).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.nar import nar_hash
from builder.errors import BuildFailedError, CommandFailedError
from builder.executor.cancel import CancelToken
from builder.executor.service import BuildExecutor, Event
from builder.nix.derivation import Derivation, DerivationOutput, load_derivation
from builder.nix.fixed_output import verify_fixed_output
from builder.nix.inputs import InputResolver
from builder.nix.to_request import derivation_to_request
from builder.store import nixbase32
from builder.store.path_info import ContentAddress, PathInfo
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

    def build(
        self,
        drv_path: StorePath,
        drv: Derivation,
        on_event: EventCallback | None = None,
        record: bool = True,
    ) -> list[PathInfo]:
        """Build and, unless ``record`` is false (a check build), remember the outputs."""
        closure = self._resolver.closure(input_paths(drv))
        infos = build_outputs(
            self._service,
            drv_path,
            drv,
            closure,
            self._blobs,
            self._directories,
            impure_env=self._impure_env,
            on_event=on_event,
        )
        if record:
            for info in infos:
                self._registry.put(info)
        return infos


def fixed_output_address(output: DerivationOutput) -> ContentAddress:
    """How Nix addresses a fixed output: its declared hash, flat or of the NAR."""
    digest = bytes.fromhex(output.hash)
    return ContentAddress.parse(
        f"fixed:{output.hash_algo}:{nixbase32.encode(digest)}", f"output {output.name}"
    )


def build_outputs(
    service: BuildExecutor,
    drv_path: StorePath,
    drv: Derivation,
    closure: Sequence[PathInfo],
    blobs: BlobService,
    directories: DirectoryService,
    impure_env: Mapping[str, str] | None = None,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[PathInfo]:
    """Build one derivation from its whole input closure and describe the outputs to Nix.

    The outputs are checked as Nix checks them (a fixed output's hash, no
    references from a fixed output) but not recorded: the caller decides
    where they go.
    """
    nix_request = derivation_to_request(
        drv, [(info.path, info.node) for info in closure], service.build_cores, impure_env
    )
    sink = (lambda event: on_event(drv_path, event)) if on_event else None
    try:
        outcome = service.build(nix_request.request, sink, cancel)
    except CommandFailedError as exc:
        raise CommandFailedError(
            f"builder for '{drv_path}' failed: {exc}", exc.exit_code, exc.signal, exc.limit
        ) from exc
    except BuildFailedError as exc:
        raise BuildFailedError(f"builder for '{drv_path}' failed: {exc}") from exc
    collected = {o.path: o for o in outcome.outputs}
    infos = []
    for output in drv.outputs:
        result = collected[nix_request.request_output(output.name)]
        if drv.is_fixed_output:
            verify_fixed_output(drv_path, output, result.node, blobs, directories)
        digest, size = nar_hash(result.node, blobs, directories)
        references = sorted({nix_request.needle_paths[i] for i in result.needles})
        if drv.is_fixed_output and references:
            raise BuildFailedError(
                f"illegal path references in fixed-output derivation '{drv_path}': "
                f"{', '.join(map(str, references))}"
            )
        ca = fixed_output_address(output) if drv.is_fixed_output else None
        infos.append(
            PathInfo(output.path, result.node, digest, size, tuple(references), drv_path, ca=ca)
        )
    return infos
