"""The SQLite PathInfo database shared by several processes at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from builder.store.pathinfos.sqlite import SqlitePathInfoService
from tests.store.infos import symlink_info

ROOT = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from tests.store.infos import symlink_info

service = SqlitePathInfoService(sys.argv[1])
for i in range(int(sys.argv[3])):
    service.put(symlink_info(f"{sys.argv[2]}-{i}"))
    service.put(symlink_info("shared", f"/{sys.argv[2]}/{i}".encode()))
service.close()
"""


def test_processes_writing_one_file_at_once_lose_nothing(tmp_path: Path) -> None:
    database = tmp_path / "pathinfo.sqlite"
    count = 150
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(database), f"w{n}", str(count)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr.decode()
    service = SqlitePathInfoService(database)
    try:
        for n in range(3):
            for i in range(count):
                info = symlink_info(f"w{n}-{i}")
                assert service.get(info.path.digest) == info
        shared = service.get(symlink_info("shared").path.digest)
        assert shared is not None
        assert shared.node in {
            symlink_info("shared", f"/w{n}/{count - 1}".encode()).node for n in range(3)
        }
        assert len(list(service.list())) == 3 * count + 1
    finally:
        service.close()
