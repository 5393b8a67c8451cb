"""Builders as a fleet on one machine: ``builder serve`` processes on one S3 store.

The S3 server is moto's, in the test process, behind a counter of the requests
each kind of object receives, so that object-store load per build can be read
off. Every builder runs the store composition of the Kubernetes ConfigMap
(deploy/kubernetes/configmap.yaml), pointed at this run's bucket and with its
near caches in its own directory, listens on a TCP port of loopback picked by
the kernel, and serves metrics, both addresses read from its JSON log.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import boto3
import grpc
import yaml
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.wire import Family, node_to_proto
from builder.executor.config import default_systems
from builder.proto.snix.build.protos import build_pb2 as snix_build
from tests.isolation import TOKEN
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CONFIGMAP = REPO / "deploy" / "kubernetes" / "configmap.yaml"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
OUTPUT_NAME = "1" * 32 + "-fleet-out"
INPUT_NAME = "0" * 32 + "-fleet-input"

Counts = collections.Counter[tuple[str, str]]


class CountingS3:
    """moto's S3 on loopback, counting requests by HTTP method and first key segment.

    The segment is the composition's prefix (blobs, directories, pathinfos,
    results), so the counts say which service the fleet asks the store for.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counts = collections.Counter()
        self._buckets = itertools.count()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self._counting(app), True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"

    def _counting(self, app: Any) -> Callable[..., Any]:
        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            parts = environ.get("PATH_INFO", "").strip("/").split("/")
            kind = parts[1] if len(parts) > 2 else "bucket"
            with self._lock:
                self._counts[(environ["REQUEST_METHOD"], kind)] += 1
            return app(environ, start_response)

        return counted

    def counts(self) -> Counts:
        with self._lock:
            return collections.Counter(self._counts)

    def new_bucket(self) -> str:
        name = f"fleet-{TOKEN}-{next(self._buckets)}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)
        return name

    def environment(self) -> dict[str, str]:
        """What the Kubernetes Secret gives a pod, for this server; plain HTTP allowed."""
        return {
            **CREDENTIALS,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def deployed_composition(bucket: str, data_dir: Path) -> str:
    """The ConfigMap's store.toml, in ``bucket`` with its near caches under ``data_dir``."""
    configmap = yaml.safe_load(CONFIGMAP.read_text())["data"]
    text = configmap["store.toml"]
    deployed_dir = tomllib.loads(configmap["serve.toml"])["data_dir"]
    (shared,) = set(re.findall(r"s3://([^/\"]+)/", text))
    return text.replace(f"s3://{shared}/", f"s3://{bucket}/").replace(deployed_dir, str(data_dir))


class Builder:
    """One ``builder serve`` of the fleet, in its own process."""

    def __init__(self, root: Path, s3: CountingS3, bucket: str, *options: str) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.bucket = bucket
        store = root / "store.toml"
        store.write_text(deployed_composition(bucket, root / "data"))
        self.log_path = root / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "builder",
                    "serve",
                    "--listen",
                    "grpc+http://127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--store",
                    str(store),
                    "--data-dir",
                    str(root / "data"),
                    "--log-format",
                    "json",
                    *options,
                ],
                cwd=REPO,
                env={**os.environ, **s3.environment()},
                stdout=log,
                stderr=log,
            )
        self.url = ""
        self.metrics_url = ""
        wait_for(self._started, f"builder in {root} listening")
        self.channel = grpc.insecure_channel(self.url.removeprefix("grpc+http://"))

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def _started(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"builder exited early:\n{self.log_path.read_text()}")
        for record in self.log_records():
            if "metrics_address" in record:
                self.metrics_url = f"http://{record['metrics_address']}/metrics"
            if "listen" in record:
                (self.url,) = record["listen"]
        return bool(self.url and self.metrics_url)

    @property
    def address(self) -> str:
        """host:port, as a client takes it."""
        return self.url.removeprefix("grpc+http://")

    def metrics(self) -> dict[str, float]:
        """Every unlabelled sample, and labelled ones keyed as written, from /metrics."""
        with urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def kill(self) -> None:
        """SIGKILL, as a node that vanishes: no drain, no goodbye."""
        self.process.kill()
        self.process.wait()
        self.channel.close()

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def upload_input(builder: Builder, source: Path) -> Any:
    """Store ``source`` through ``builder``'s castore services, as a client does before a build."""
    blobs = GrpcBlobService(builder.url, Family.SNIX)
    directories = GrpcDirectoryService(builder.url, Family.SNIX)
    try:
        node = ingest_path(source, blobs, directories, INPUT_NAME.encode())
    finally:
        blobs.close()
        directories.close()
    return node_to_proto(node, Family.SNIX)


def make_input(root: Path, files: int) -> Path:
    """A small input tree whose contents are this run's own."""
    root.mkdir(parents=True)
    for index in range(files):
        (root / f"file-{index:03d}").write_text(f"run {TOKEN} file {index}\n" * (index + 1))
    return root


def build_request(input_entry: Any, iteration: str, script: str) -> Any:
    """A build in Nix's layout reading its input; ``iteration`` makes each request distinct."""
    message = snix_build.BuildRequest
    env = {
        "FLEET_ITERATION": iteration,
        "PATH": "/path-not-set",
        "input": f"/nix/store/{INPUT_NAME}",
        "out": f"/nix/store/{OUTPUT_NAME}",
    }
    return message(
        inputs=[input_entry],
        command_args=["/bin/sh", "-c", script],
        working_dir="build",
        scratch_paths=["build", "nix/store"],
        inputs_dir="nix/store",
        outputs=[f"nix/store/{OUTPUT_NAME}"],
        environment_vars=[
            message.EnvVar(key=key, value=value.encode()) for key, value in sorted(env.items())
        ],
        constraints=message.BuildConstraints(system=default_systems()[0], provide_bin_sh=True),
    )


def builds_started(builder: Builder) -> int:
    return int(builder.metrics()["builder_builds_started_total"])
