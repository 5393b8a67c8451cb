"""How a sandboxed run ended, with the accounting the build service reports."""

import base64
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Limit(StrEnum):
    """Names shared by spec limits, the stop reason and the enforcement report."""

    WALL_TIME = "wall_time"
    SILENCE = "silence"
    MEMORY = "memory"
    PROCESSES = "processes"
    CPU_TIME = "cpu_time"
    LOG_BYTES = "log_bytes"
    SCRATCH_BYTES = "scratch_bytes"


CANCELLED = "cancelled"


@dataclass
class SandboxResult:
    """Outcome of one run.

    ``stopped_by`` names the limit (or ``"cancelled"``) that made the sandbox kill
    the command; ``limits_reached`` lists every limit the command ran into, even
    when it went on and exited by itself (a fork bomb hitting the process cap
    keeps running until the wall clock stops it). ``unenforced_limits`` lists
    requested limits the host could not enforce for the build as a whole.
    """

    exit_code: int | None = None
    signal: int | None = None
    stopped_by: str | None = None
    limits_reached: list[str] = field(default_factory=list)
    unenforced_limits: list[str] = field(default_factory=list)
    wall_time: float = 0.0
    user_time: float = 0.0
    system_time: float = 0.0
    peak_memory: int | None = None
    log: bytes = b""
    log_truncated: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.stopped_by is None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["log"] = base64.b64encode(self.log).decode()
        return raw

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SandboxResult":
        values = dict(raw)
        values["log"] = base64.b64decode(values.get("log", ""))
        return cls(**values)
