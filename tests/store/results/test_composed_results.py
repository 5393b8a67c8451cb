"""The store opens its result cache from the same URL or configuration as its other services."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.castore.composition import ConfigError
from builder.store.results.grpc import GrpcResultCache
from builder.store.results.memory import MemoryResultCache
from builder.store.results.objectstore import ObjectStoreResultCache
from builder.store.results.sqlite import SqliteResultCache
from builder.store.store import Store
from tests.store.results.test_result_cache_contract import file_output, key, result


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryResultCache),
        ("objectstore+memory://", ObjectStoreResultCache),
        ("grpc+unix:///nowhere.sock", GrpcResultCache),
    ],
)
def test_a_store_url_gives_its_result_cache(url: str, kind: type) -> None:
    with Store.open(url) as store:
        assert isinstance(store.results, kind)


def test_the_embedded_store_keeps_the_results_the_build_service_recorded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = SqliteResultCache(data / "build" / "results.sqlite")
    before.put(key("old"), result(file_output("old")))
    before.close()
    with Store.open(None, data) as store:
        assert isinstance(store.results, SqliteResultCache)
        assert store.results.get(key("old")) == result(file_output("old"))


def test_a_configuration_names_its_result_cache(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    config = tmp_path / "store.toml"
    config.write_text(
        '[blobservices.root]\ntype = "memory"\n'
        '[directoryservices.root]\ntype = "memory"\n'
        '[pathinfoservices.root]\ntype = "memory"\n'
        f'[resultcaches.root]\ntype = "objectstore"\nurl = "{objects.as_uri()}"\n'
    )
    with Store.open(str(config)) as store:
        store.results.put(key("shared"), result(file_output("shared")))
    with Store.open(str(config)) as store:
        assert store.results.get(key("shared")) == result(file_output("shared"))


def test_a_configuration_without_a_result_cache_keeps_results_in_memory(tmp_path: Path) -> None:
    config = tmp_path / "store.toml"
    config.write_text(
        '[blobservices.root]\ntype = "memory"\n'
        '[directoryservices.root]\ntype = "memory"\n'
        '[pathinfoservices.root]\ntype = "memory"\n'
    )
    with Store.open(str(config)) as store:
        assert isinstance(store.results, MemoryResultCache)


def test_an_unknown_result_cache_type_is_named(tmp_path: Path) -> None:
    config = tmp_path / "store.toml"
    config.write_text(
        '[blobservices.root]\ntype = "memory"\n'
        '[directoryservices.root]\ntype = "memory"\n'
        '[pathinfoservices.root]\ntype = "memory"\n'
        '[resultcaches.root]\ntype = "redis"\n'
    )
    with pytest.raises(ConfigError, match=r"resultcaches\.root: unknown resultcache service type"):
        Store.open(str(config))
