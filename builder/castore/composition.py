"""Named service instances built from configuration.

A configuration has up to four sections, ``blobservices``,
``directoryservices``, ``pathinfoservices`` and ``resultcaches``, each mapping an instance name to
a table with a ``type`` tag and that type's parameters. Parameters may refer to
other instances by name (or give a URL shorthand inline), so layered stores such
as a memory cache in front of a remote server are described, not coded. Each
instance is built once, on first use, even when several threads ask for it at
the same moment.

Every service type is a ``Backend`` declared beside its implementation: its tag,
the URL schemes that stand for it and how its parameters are read. A
``Registry`` is the set of backends a composition may use. The castore knows
the third kind only as a name: the PathInfo backends live in the store layer
above and reach the composition through a registry built there, and so do the
result caches.
"""

from __future__ import annotations

import importlib
import json
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.grpc.endpoint import did_you_mean
from builder.errors import InvalidArgumentError

Kind = Literal["blob", "directory", "pathinfo", "resultcache"]
SECTIONS: dict[Kind, str] = {
    "blob": "blobservices",
    "directory": "directoryservices",
    "pathinfo": "pathinfoservices",
    "resultcache": "resultcaches",
}


class ConfigError(InvalidArgumentError):
    """The store configuration is malformed or inconsistent."""


class Params:
    """One instance's parameters, consumed by its factory; leftovers are errors."""

    def __init__(self, where: str, values: Mapping[str, Any], composition: Composition) -> None:
        self.where = where
        self._values = dict(values)
        self._composition = composition

    def string(self, key: str, default: str | None = None) -> str:
        value = self._values.pop(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}: '{key}' must be a string")
        return value

    def integer(self, key: str, default: int) -> int:
        value = self._values.pop(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.where}: '{key}' must be an integer")
        return value

    def mapping(self, key: str) -> dict[str, str]:
        value = self._values.pop(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{self.where}: '{key}' must be a table of strings")
        return value

    def blob(self, key: str) -> BlobService:
        return self._composition.blob_service(self.string(key))

    def directory(self, key: str) -> DirectoryService:
        return self._composition.directory_service(self.string(key))

    def finish(self) -> None:
        if self._values:
            raise ConfigError(f"{self.where}: unknown parameter(s) {sorted(self._values)}")


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0]


def url_path(url: str) -> str:
    """The absolute path a ``scheme:///abs/path`` URL names."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(f"{url!r}: expected an absolute path, as in scheme:///abs/path")
    return parts.path


def _no_parameters(url: str) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Backend:
    """One service type: how configurations name it, which URLs stand for it, how it is built.

    ``from_url`` turns a URL with one of ``schemes`` into the type's parameters;
    a scheme ending in ``+`` stands for every scheme it prefixes, so
    ``grpc+`` covers ``grpc+unix`` and ``grpc+http``.
    """

    kind: Kind
    type_name: str
    build: Callable[[Params], Any]
    schemes: tuple[str, ...] = ()
    from_url: Callable[[str], dict[str, Any]] = _no_parameters

    def accepts(self, scheme: str) -> bool:
        return any(scheme.startswith(s) if s.endswith("+") else scheme == s for s in self.schemes)


class Registry:
    """The backends a composition can build; third parties add their own with ``register``.

    Backends may also be named, by kind, by the module that declares them (as
    ``BACKEND``): such a module is imported only when a type or URL scheme of
    its kind is asked for that the backends loaded so far do not know, in the
    order given. A process that opens an embedded store then never pays for
    importing the gRPC or object-store clients.
    """

    def __init__(
        self, backends: Iterable[Backend] = (), modules: Mapping[Kind, Iterable[str]] = {}
    ) -> None:
        self._backends: dict[tuple[Kind, str], Backend] = {}
        self._unloaded = {kind: list(names) for kind, names in modules.items()}
        self._lock = threading.Lock()
        for backend in backends:
            self.register(backend)

    def register(self, backend: Backend) -> None:
        with self._lock:
            self._backends[(backend.kind, backend.type_name)] = backend

    def backend(self, kind: Kind, type_name: str, where: str) -> Backend:
        found = self._find(kind, lambda backend: backend.type_name == type_name)
        if found is None:
            known = sorted(t for k, t in self._backends if k == kind)
            raise ConfigError(
                f"{where}: unknown {kind} service type {type_name!r} (known: {', '.join(known)})"
            )
        return found

    def url_config(self, kind: Kind, url: str) -> dict[str, Any]:
        """The instance configuration a single-service URL stands for."""
        scheme = url_scheme(url)
        found = self._find(kind, lambda backend: backend.accepts(scheme))
        if found is None:
            raise ConfigError(f"{url!r} is not a {kind} service URL{did_you_mean(url)}")
        return {"type": found.type_name, **found.from_url(url)}

    def _find(self, kind: Kind, matches: Callable[[Backend], bool]) -> Backend | None:
        """The first backend of ``kind`` that matches, importing its kind's modules until one does.

        With none matching, every module of the kind has been imported.
        """
        with self._lock:
            unloaded = self._unloaded.get(kind, [])
            while True:
                for backend in self._backends.values():
                    if backend.kind == kind and matches(backend):
                        return backend
                if not unloaded:
                    return None
                backend = importlib.import_module(unloaded.pop(0)).BACKEND
                self._backends.setdefault((backend.kind, backend.type_name), backend)


class Composition:
    def __init__(self, config: Mapping[str, Any], registry: Registry) -> None:
        unknown = set(config) - set(SECTIONS.values())
        if unknown:
            raise ConfigError(f"unknown configuration section(s) {sorted(unknown)}")
        self._config = {kind: dict(config.get(section, {})) for kind, section in SECTIONS.items()}
        self._registry = registry
        self._built: dict[tuple[Kind, str], Any] = {}
        self._building: list[tuple[Kind, str]] = []
        self._lock = threading.RLock()

    @classmethod
    def from_file(cls, path: str | Path, registry: Registry) -> Composition:
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            # A store given without "://" is read as a file; an address in
            # gRPC's own form (host:port, unix:/path) lands here.
            raise ConfigError(
                f"{path}: cannot read the store configuration file: "
                f"{exc.strerror or exc}{did_you_mean(str(path))}"
            ) from exc
        try:
            config = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls(config, registry)

    def blob_service(self, name: str) -> BlobService:
        return self._get("blob", name)

    def directory_service(self, name: str) -> DirectoryService:
        return self._get("directory", name)

    def pathinfo_service(self, name: str) -> Any:
        """The named PathInfo service, typed by the store layer that defines the protocol."""
        return self._get("pathinfo", name)

    def result_cache(self, name: str) -> Any:
        """The named result cache, typed by the store layer that defines the protocol."""
        return self._get("resultcache", name)

    def defines(self, kind: Kind, name: str) -> bool:
        """Whether ``name`` is a URL or an instance in ``kind``'s section."""
        return "://" in name or name in self._config[kind]

    def _get(self, kind: Kind, name: str) -> Any:
        with self._lock:
            key = (kind, name)
            if key in self._built:
                return self._built[key]
            if key in self._building:
                chain = " -> ".join(n for _, n in [*self._building, key])
                raise ConfigError(f"{kind} service {name!r} refers to itself: {chain}")
            spec = self._spec(kind, name)
            self._building.append(key)
            try:
                where = f"{SECTIONS[kind]}.{name}"
                params = Params(where, spec, self)
                params.string("type")
                service = self._registry.backend(kind, spec["type"], where).build(params)
                params.finish()
            finally:
                self._building.pop()
            self._built[key] = service
            return service

    def _spec(self, kind: Kind, name: str) -> Mapping[str, Any]:
        if "://" in name:
            return self._registry.url_config(kind, name)
        try:
            spec = self._config[kind][name]
        except KeyError:
            raise ConfigError(f"no {kind} service named {name!r} in [{SECTIONS[kind]}]") from None
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(f"{SECTIONS[kind]}.{name}: needs a 'type'")
        return spec

    def close(self) -> None:
        with self._lock:
            for service in self._built.values():
                service.close()
            self._built.clear()
