"""A castore server over fs and sqlite stores, as its own process for measurements.

``python -m tests.server.castore_server_main BLOB_DIR DATABASE URL`` serves until
SIGTERM; running it apart from the test process is what lets its memory be
measured without the client's allocations mixed in.
"""

from __future__ import annotations

import logging
import sys

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.server.castore_server import serve_castore


def main(argv: list[str]) -> None:
    blob_dir, database, url = argv
    logging.basicConfig(level=logging.INFO)
    blobs = FsBlobService(blob_dir)
    directories = SqliteDirectoryService(database)
    try:
        serve_castore(blobs, directories, [url], grace=2.0)
    finally:
        directories.close()
        blobs.close()


if __name__ == "__main__":
    main(sys.argv[1:])
