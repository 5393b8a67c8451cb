"""The Kubernetes manifests in deploy/kubernetes/: valid commands, probes, store and security.

A manifest is applied long after it was written; a renamed flag, a probe on the
wrong port, a composition the registry no longer reads or a pod without what
its launcher mode needs would only show in a cluster. Here they fail the suite.
The store composition is opened for real, against an S3 server, with its
credentials taken from the environment as the pod takes them from its Secret.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.castore.composition import Composition
from builder.castore.grpc.endpoint import parse_client_endpoint
from builder.cli import build_parser
from builder.config_file import parse_args
from builder.errors import InvalidArgumentError
from builder.proto.tvix.build.protos import build_pb2
from builder.proto.tvix.castore.protos import castore_pb2
from builder.store.registry import DEFAULT_REGISTRY
from tests.castore.backends_objectstore import S3_SERVER, s3_options
from tests.isolation import TOKEN

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
MODES = {"root": "deployment.yaml", "rootless": "deployment-rootless.yaml"}
# How long the launcher may take to stop after the server's grace (deploy/README.md).
LAUNCHER_STOP_SECONDS = 30


def _documents(name: str) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d is not None]
    assert documents, f"{name} holds no manifest"
    return documents


def _only(name: str, kind: str) -> dict[str, Any]:
    (document,) = [d for d in _documents(name) if d["kind"] == kind]
    return document


def _container(mode: str) -> dict[str, Any]:
    (container,) = _only(MODES[mode], "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _pod_spec(mode: str) -> dict[str, Any]:
    return _only(MODES[mode], "Deployment")["spec"]["template"]["spec"]


def _config_data() -> dict[str, str]:
    return _only("configmap.yaml", "ConfigMap")["data"]


def _serve_settings() -> dict[str, Any]:
    return tomllib.loads(_config_data()["serve.toml"])


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def _listen_port(address: str) -> int:
    match = re.fullmatch(r"grpc\+http://(\[[^\]]*\]|[^:]+):(\d+)", address)
    assert match, f"not a TCP listen address: {address}"
    return int(match.group(2))


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity)
    assert match, f"unexpected quantity {quantity}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def test_every_manifest_parses_and_is_labelled() -> None:
    names = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    assert {"configmap.yaml", "secret.yaml", "service.yaml", *MODES.values()} <= set(names)
    for name in names:
        for document in _documents(name):
            assert document["apiVersion"] and document["kind"], name
            labels = document["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "builder", name


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_container_runs_a_valid_serve_command(mode: str, tmp_path: Path) -> None:
    container = _container(mode)
    argv = [*container["command"], *container["args"]]
    assert Path(argv[0]).name == "builder"
    (config_path,) = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(mode)["volumes"]}
    (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[config_volume]["configMap"]["name"] == "builder-config"
    assert Path(config_path).parent == Path(mounts[config_volume])
    assert Path(config_path).name in _config_data()

    # The mounted ConfigMap, here: its file must be one serve accepts, every key a flag.
    for name, text in _config_data().items():
        (tmp_path / name).write_text(text)
    mounted = [str(tmp_path / Path(config_path).name) if a == config_path else a for a in argv]
    try:
        settings = parse_args(build_parser(), mounted[1:])
    except (SystemExit, InvalidArgumentError) as exit:
        pytest.fail(f"builder rejects {shlex.join(argv)} with the ConfigMap: {exit}")
    assert settings.command == "serve"
    assert Path(settings.store) == tmp_path / "store.toml"
    (data_volume,) = [n for n, v in volumes.items() if "emptyDir" in v]
    assert Path(settings.data_dir) == Path(mounts[data_volume])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_probes_ask_grpc_health_on_the_listening_port(mode: str) -> None:
    container = _container(mode)
    grpc_port = _port(container, "grpc")
    assert grpc_port in {_listen_port(a) for a in _serve_settings()["listen"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
        assert "service" not in container[probe]["grpc"], "the server reports health as ''"
    service = _only("service.yaml", "Service")
    assert service["spec"]["clusterIP"] == "None", "clients resolve every pod, not one VIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == grpc_port and port["targetPort"] in ("grpc", grpc_port)
    pod_labels = _only(MODES[mode], "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_clients_reach_every_pod_by_the_documented_dns_name() -> None:
    service = _only("service.yaml", "Service")
    (port,) = service["spec"]["ports"]
    address = (
        f"grpc+dns:///{service['metadata']['name']}.NAMESPACE.svc.cluster.local:{port['port']}"
    )
    assert address in (MANIFESTS / "README.md").read_text()
    endpoint = parse_client_endpoint(address.replace("NAMESPACE", "build"))
    assert endpoint.target == f"dns:///builder.build.svc.cluster.local:{port['port']}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_prometheus_scrapes_the_metrics_listener(mode: str) -> None:
    container = _container(mode)
    annotations = _only(MODES[mode], "Deployment")["spec"]["template"]["metadata"]["annotations"]
    metrics_port = int(_serve_settings()["metrics_listen"].rsplit(":", 1)[1])
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port == _port(container, "metrics")
    assert annotations["prometheus.io/path"] == "/metrics"
    host = _serve_settings()["metrics_listen"].rsplit(":", 1)[0]
    assert host not in ("127.0.0.1", "localhost", "[::1]"), "a scraper must reach it"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resources_and_grace_follow_the_serve_settings(mode: str) -> None:
    settings = _serve_settings()
    resources = _container(mode)["resources"]
    assert int(resources["requests"]["cpu"]) == settings["jobs"], "a CPU per job slot"
    builds_memory = settings["jobs"] * settings["memory_limit"]
    for bound in ("requests", "limits"):
        assert _memory_bytes(resources[bound]["memory"]) > builds_memory, bound
    storage = _memory_bytes(resources["requests"]["ephemeral-storage"])
    assert storage > settings["cache_max_bytes"], "the materialisation cache must fit"
    grace = _pod_spec(mode)["terminationGracePeriodSeconds"]
    assert grace > settings["shutdown_grace"] + LAUNCHER_STOP_SECONDS


def test_the_root_launcher_gets_capabilities_and_a_shared_uid_lock() -> None:
    container = _container("root")
    security = container["securityContext"]
    assert security["runAsUser"] == 0 and security["runAsNonRoot"] is False
    assert set(security["capabilities"]["add"]) == {"SYS_ADMIN", "NET_ADMIN"}
    assert "drop" not in security["capabilities"], "the launcher uses the default set"
    assert "privileged" not in security
    assert security["seccompProfile"]["type"] == "Unconfined"
    assert security["appArmorProfile"]["type"] == "Unconfined"
    # Kubernetes refuses allowPrivilegeEscalation: false beside CAP_SYS_ADMIN.
    assert "allowPrivilegeEscalation" not in security
    env = {e["name"]: e["value"] for e in container["env"]}
    lock_dir = env["SANDBOX_UID_LOCK_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec("root")["volumes"]}
    host_path = volumes[mounts[lock_dir]]["hostPath"]
    assert host_path["path"] == lock_dir, "pods on one node must share the uid locks"
    assert int(env["SANDBOX_UID_COUNT"]) >= _serve_settings()["jobs"]
    assert _pod_spec("root").get("hostUsers", True) is True, "build uids are host uids"


def test_the_rootless_launcher_runs_unprivileged_in_a_user_namespace() -> None:
    container = _container("rootless")
    pod = _pod_spec("rootless")
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["hostUsers"] is False, "an unmasked /proc needs a pod user namespace"
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["procMount"] == "Unmasked"
    assert security["seccompProfile"]["type"] == "Unconfined"
    assert security["appArmorProfile"]["type"] == "Unconfined"
    assert not any(e["name"].startswith("SANDBOX_UID") for e in container.get("env", []))
    assert not any("hostPath" in v for v in pod["volumes"])


@pytest.fixture
def s3_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The Secret's variables set to reach the test S3 server; yields the bucket's name."""
    secret = _only("secret.yaml", "Secret")["stringData"]
    options = s3_options()
    values = {
        "AWS_ACCESS_KEY_ID": options["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": options["secret_access_key"],
        "AWS_REGION": options["region"],
        "AWS_ENDPOINT": options["endpoint"],
    }
    assert set(secret) == set(values), "the Secret sets what obstore reads"
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    # Only the test server needs plain HTTP; a cluster's S3 endpoint speaks TLS.
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    yield S3_SERVER.new_bucket()


def test_the_store_composition_opens_and_shares_through_s3(
    s3_environment: str, tmp_path: Path
) -> None:
    """Two pods' compositions: what one stores, the other reads (blobs through its near cache)."""
    text = _config_data()["store.toml"]
    buckets = set(re.findall(r"s3://([^/\"]+)/", text))
    assert len(buckets) == 1, f"one shared bucket expected, found {sorted(buckets)}"
    data_dir = _serve_settings()["data_dir"]
    assert data_dir in text, "the near caches belong in the pod's emptyDir"

    (shared,) = buckets

    def pod(name: str) -> Composition:
        """The composition as a pod reads it, in this test's bucket and directory."""
        local = text.replace(f"s3://{shared}/", f"s3://{s3_environment}/")
        local = local.replace(data_dir, str(tmp_path / name))
        return Composition(tomllib.loads(local), DEFAULT_REGISTRY)

    payload = f"contents of run {TOKEN}\n".encode() * 1000
    first, second = pod("a"), pod("b")
    try:
        writer = first.blob_service("root").open_write()
        writer.write(payload)
        digest = writer.close()
        assert first.pathinfo_service("root") is not None
        assert first.directory_service("root") is not None
        result = build_pb2.Build(
            outputs=[
                castore_pb2.Node(
                    file=castore_pb2.FileNode(name=b"out", digest=digest, size=len(payload))
                )
            ],
            outputs_needles=[build_pb2.Build.OutputNeedles()],
        )
        key = bytes(32)
        first.result_cache("root").put(key, result)
        assert second.result_cache("root").get(key) == result, "results are shared"
        assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*"))
        reader = second.blob_service("root").open_read(digest)
        assert reader is not None, "the second pod does not find the first one's blob"
        with reader:
            assert reader.read() == payload
        near = [p for p in (tmp_path / "b").rglob("*") if p.is_file()]
        assert near, "the second pod's read must fill its near cache on the emptyDir"
    finally:
        first.close()
        second.close()
