"""Building stores from configuration and URL shorthands."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.castore.blobs.combined import CombinedBlobService
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.composition import Backend, Composition, ConfigError, Params, Registry
from builder.castore.directories.cache import CacheDirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.registry import DEFAULT_REGISTRY
from builder.store.store import DATA_DIR_ENV, Store
from builder.store.store_url import store_config
from tests.blob_bytes import put_bytes, read_all
from tests.waiting import wait_for


def test_layered_config_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "store.toml"
    config.write_text(
        f"""
[blobservices.root]
type = "combined"
near = "mem"
far = "disk"

[blobservices.mem]
type = "memory"

[blobservices.disk]
type = "fs"
path = "{tmp_path / "blobs"}"

[directoryservices.root]
type = "cache"
near = "memory://"
far = "sqlite://{tmp_path / "dirs.db"}"

[pathinfoservices.root]
type = "sqlite"
path = "{tmp_path / "pathinfo.db"}"
"""
    )
    store = Store.open(str(config))
    assert isinstance(store.blobs, CombinedBlobService)
    assert isinstance(store.blobs.near, MemoryBlobService)
    assert isinstance(store.blobs.far, FsBlobService)
    assert isinstance(store.directories, CacheDirectoryService)
    assert isinstance(store.directories.far, SqliteDirectoryService)
    assert isinstance(store.pathinfos, SqlitePathInfoService)
    digest = put_bytes(store.blobs, b"layered")
    assert read_all(store.blobs.near, digest) == b"layered"
    store.close()


def test_json_config(tmp_path: Path) -> None:
    config = tmp_path / "store.json"
    config.write_text(
        json.dumps(
            {
                "blobservices": {"root": {"type": "memory"}},
                "directoryservices": {"root": {"type": "memory"}},
                "pathinfoservices": {"root": {"type": "memory"}},
            }
        )
    )
    store = Store.open(str(config))
    assert isinstance(store.blobs, MemoryBlobService)


def test_shared_instance_built_once() -> None:
    composition = Composition(
        {
            "blobservices": {
                "a": {"type": "combined", "near": "shared", "far": "shared"},
                "shared": {"type": "memory"},
            }
        },
        DEFAULT_REGISTRY,
    )
    combined = composition.blob_service("a")
    assert combined.near is combined.far is composition.blob_service("shared")


def test_concurrent_requests_build_once() -> None:
    """The one construction waits until every thread has asked, so that all of them overlap."""
    calls: list[int] = []
    asking: list[int] = []

    def slow(params: Params) -> MemoryBlobService:
        calls.append(1)
        wait_for(lambda: len(asking) == 8, "every thread to ask for the service")
        return MemoryBlobService()

    def ask() -> None:
        asking.append(1)
        results.append(composition.blob_service("x"))

    registry = Registry()
    registry.register(Backend("blob", "slow", slow))
    composition = Composition({"blobservices": {"x": {"type": "slow"}}}, registry)
    results: list[object] = []
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(r is results[0] for r in results)


def test_recursion_rejected() -> None:
    composition = Composition(
        {
            "blobservices": {
                "a": {"type": "combined", "near": "b", "far": "memory://"},
                "b": {"type": "combined", "near": "memory://", "far": "a"},
            }
        },
        DEFAULT_REGISTRY,
    )
    with pytest.raises(ConfigError, match="refers to itself: a -> b -> a"):
        composition.blob_service("a")


@pytest.mark.parametrize(
    ("config", "name", "match"),
    [
        ({"blobservices": {}}, "nope", "no blob service named 'nope'"),
        ({"blobservices": {"x": {"type": "tape"}}}, "x", "unknown blob service type 'tape'"),
        ({"blobservices": {"x": {"path": "/tmp"}}}, "x", "needs a 'type'"),
        (
            {"blobservices": {"x": {"type": "memory", "colour": "red"}}},
            "x",
            r"unknown parameter\(s\) \['colour'\]",
        ),
        ({"blobservices": {"x": {"type": "fs", "path": 3}}}, "x", "'path' must be a string"),
    ],
)
def test_config_errors_name_the_problem(config: dict, name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Composition(config, DEFAULT_REGISTRY).blob_service(name)


def test_unknown_section_rejected() -> None:
    with pytest.raises(ConfigError, match="section"):
        Composition({"blobs": {}}, DEFAULT_REGISTRY)


def test_backends_named_by_module_load_when_their_kind_is_asked_for() -> None:
    registry = Registry(
        modules={"blob": ["builder.castore.blobs.memory"], "pathinfo": ["builder.no.such.module"]}
    )
    assert registry.url_config("blob", "memory://") == {"type": "memory"}
    assert isinstance(
        Composition({"blobservices": {"m": {"type": "memory"}}}, registry).blob_service("m"),
        MemoryBlobService,
    )
    with pytest.raises(ConfigError, match=r"unknown blob service type 'fs' \(known: memory\)"):
        registry.backend("blob", "fs", "here")
    with pytest.raises(ModuleNotFoundError, match=r"builder\.no"):
        registry.url_config("pathinfo", "memory://")


def test_only_an_embedded_store_keeps_an_import_record(tmp_path: Path) -> None:
    """Beside its databases, opened when an import first asks for it."""
    with Store.open(None, tmp_path / "data") as store:
        assert not (tmp_path / "data" / "imports.sqlite").exists()
        record = store.import_record()
        assert record is not None
        assert store.import_record() is record
        assert (tmp_path / "data" / "imports.sqlite").is_file()
    with Store.open(f"fs://{tmp_path / 'other'}") as store:
        assert store.import_record() is not None
        assert (tmp_path / "other" / "imports.sqlite").is_file()
    with Store.open("memory://") as store:
        assert store.import_record() is None


def test_opening_the_embedded_store_loads_no_grpc_or_object_store_client(tmp_path: Path) -> None:
    """Every ``builder-nix-serve`` on a data directory opens it; the clients cost ~0.1 s."""
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from builder.store.store import Store\n"
        f"Store.open(None, Path({str(tmp_path)!r})).close()\n"
        "print(sorted(m for m in ('grpc', 'asyncio', 'fastcdc') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_third_party_type() -> None:
    class Counting(MemoryBlobService):
        pass

    registry = Registry()
    registry.register(Backend("blob", "counting", lambda params: Counting()))
    assert isinstance(
        Composition({"blobservices": {"c": {"type": "counting"}}}, registry).blob_service("c"),
        Counting,
    )
    assert DEFAULT_REGISTRY is not registry


@pytest.mark.parametrize(
    ("kind", "url", "expected"),
    [
        ("blob", "memory://", {"type": "memory"}),
        ("blob", "fs:///var/b", {"type": "fs", "path": "/var/b"}),
        ("directory", "sqlite:///var/d.db", {"type": "sqlite", "path": "/var/d.db"}),
        ("blob", "objectstore+file:///srv/o", {"type": "objectstore", "url": "file:///srv/o"}),
        (
            "directory",
            "objectstore+s3://bucket/prefix?region=eu",
            {"type": "objectstore", "url": "s3://bucket/prefix?region=eu"},
        ),
        ("blob", "grpc+unix:///run/b.sock", {"type": "grpc", "url": "grpc+unix:///run/b.sock"}),
        ("directory", "grpc+http://[::1]:8000", {"type": "grpc", "url": "grpc+http://[::1]:8000"}),
        ("pathinfo", "memory://", {"type": "memory"}),
        ("pathinfo", "sqlite:///var/p.db", {"type": "sqlite", "path": "/var/p.db"}),
        ("pathinfo", "objectstore+memory://", {"type": "objectstore", "url": "memory://"}),
        ("pathinfo", "grpc+unix:///run/s.sock", {"type": "grpc", "url": "grpc+unix:///run/s.sock"}),
    ],
)
def test_url_shorthands(kind: str, url: str, expected: dict) -> None:
    assert DEFAULT_REGISTRY.url_config(kind, url) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "url"), [("blob", "sqlite:///x"), ("directory", "fs:///x"), ("blob", "fs://rel/x")]
)
def test_bad_url_shorthands(kind: str, url: str) -> None:
    with pytest.raises(ConfigError):
        DEFAULT_REGISTRY.url_config(kind, url)  # type: ignore[arg-type]


def test_embedded_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    store = Store.open()
    digest = put_bytes(store.blobs, b"embedded")
    store.close()
    assert (tmp_path / "data" / "blobs" / digest.hex()[:2] / digest.hex()).is_file()
    assert (tmp_path / "data" / "directories.sqlite").is_file()
    assert (tmp_path / "data" / "pathinfo.sqlite").is_file()


def test_a_configuration_without_a_pathinfo_root_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "store.json"
    config.write_text(
        json.dumps(
            {
                "blobservices": {"root": {"type": "memory"}},
                "directoryservices": {"root": {"type": "memory"}},
            }
        )
    )
    with pytest.raises(
        ConfigError, match=r"no pathinfo service named 'root' in \[pathinfoservices\]"
    ):
        Store.open(str(config))


@pytest.mark.parametrize(
    ("url", "pathinfo_type"),
    [("memory://", "memory"), ("objectstore+memory://", "objectstore"), ("grpc+unix:///s", "grpc")],
)
def test_a_store_url_names_every_service(url: str, pathinfo_type: str) -> None:
    config = store_config(url, DEFAULT_REGISTRY)
    assert set(config) == {
        "blobservices",
        "directoryservices",
        "pathinfoservices",
        "resultcaches",
    }
    assert config["pathinfoservices"]["root"]["type"] == pathinfo_type
    assert config["resultcaches"]["root"]["type"] == pathinfo_type
