"""The object-store backends, over a local directory, memory and a real S3 server.

The S3 server is moto's, listening on loopback in this process. It starts on
first use and stops at interpreter exit, so a run that selects no S3 case
never pays for it; every service gets a bucket of its own, so cases cannot
see each other's objects.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import boto3
from moto.server import ThreadedMotoServer

from builder.castore.blobs.objectstore import ObjectStoreBlobService
from builder.castore.directories.objectstore import ObjectStoreDirectoryService

_REGION = "us-east-1"
_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


class _Closable(Protocol):
    def close(self) -> None: ...


class _S3Server:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadedMotoServer | None = None
        self._endpoint = ""
        self._buckets = itertools.count()

    def endpoint(self) -> str:
        with self._lock:
            if self._server is None:
                logging.getLogger("werkzeug").setLevel(logging.ERROR)
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                server.start()
                host, port = server.get_host_and_port()
                self._endpoint = f"http://{host}:{port}"
                self._server = server
                atexit.register(server.stop)
            return self._endpoint

    def new_bucket(self) -> str:
        endpoint = self.endpoint()
        name = f"castore-{next(self._buckets)}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=_REGION,
            aws_access_key_id=_CREDENTIALS["access_key_id"],
            aws_secret_access_key=_CREDENTIALS["secret_access_key"],
        )
        client.create_bucket(Bucket=name)
        return name


S3_SERVER = _S3Server()


def s3_options() -> dict[str, str]:
    """Options that point obstore at the loopback S3 server."""
    return {
        "endpoint": S3_SERVER.endpoint(),
        "region": _REGION,
        "allow_http": "true",
        **_CREDENTIALS,
    }


def new_s3_url(prefix: str = "castore") -> str:
    """An ``s3://`` URL into a bucket nobody else uses."""
    return f"s3://{S3_SERVER.new_bucket()}/{prefix}"


Service = TypeVar("Service", bound=_Closable)


@contextmanager
def _closing(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.close()


def _file_url(tmp: Path) -> str:
    return (tmp / "objectstore").as_uri()


BLOB_BACKENDS: dict[str, Callable[[Path], AbstractContextManager[ObjectStoreBlobService]]] = {
    "objectstore-file": lambda tmp: _closing(ObjectStoreBlobService(_file_url(tmp))),
    "objectstore-memory": lambda tmp: _closing(ObjectStoreBlobService("memory://")),
    "objectstore-s3": lambda tmp: _closing(ObjectStoreBlobService(new_s3_url(), s3_options())),
}

DIRECTORY_BACKENDS: dict[
    str, Callable[[Path], AbstractContextManager[ObjectStoreDirectoryService]]
] = {
    "objectstore-file": lambda tmp: _closing(ObjectStoreDirectoryService(_file_url(tmp))),
    "objectstore-memory": lambda tmp: _closing(ObjectStoreDirectoryService("memory://")),
    "objectstore-s3": lambda tmp: _closing(ObjectStoreDirectoryService(new_s3_url(), s3_options())),
}
