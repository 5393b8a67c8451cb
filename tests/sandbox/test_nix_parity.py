"""What a build sees matches Nix's own sandbox (PROTOCOL.md, "Nix conventions").

The same probe script runs as a derivation in Nix's sandbox (``nix-store
--realise`` with ``sandbox = true``) and in ours, with the inputs, scratch
paths and working directory a BuildRequest made from that derivation would
carry; the outputs must be identical.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox import Bind, Scratch
from tests.requirements import require_nix, require_root

from .conftest import Sandboxes

PROBE = r"""
b=$BB
{ echo "id: $($b id)"; echo "hostname: $($b hostname)"; echo "umask: $(umask)";
  echo "pwd: $($b pwd)";
  echo passwd; $b cat /etc/passwd; echo group; $b cat /etc/group;
  echo hosts; $b cat /etc/hosts;
  echo "dev: $($b ls -A /dev | $b tr '\n' ' ')";
  echo "pts: $($b ls -A /dev/pts | $b tr '\n' ' ')";
  for l in fd stdin stdout stderr ptmx; do echo "link $l: $($b readlink /dev/$l)"; done;
  for d in full null random tty urandom zero; do
    echo "char $d: $($b stat -c '%F %t:%T' /dev/$d)"; done;
  echo "net: $($b awk 'NR>2 {print $1}' /proc/net/dev | $b tr '\n' ' ')";
  echo "lo: $($b ip -o link show lo | $b grep -o 'UP,LOWER_UP')";
  echo "tmp: $($b stat -c %a /tmp)"; echo "root: $($b ls -A / | $b tr '\n' ' ')";
  echo "proc: $($b ls /proc/1/status)"; echo "shm: $($b stat -c %a /dev/shm)";
} > $out
"""

DERIVATION = """
{ tag, script }:
let bb = builtins.path { path = ./bb; name = "parity-busybox"; };
in derivation {
  name = "parity-${tag}";
  system = builtins.currentSystem;
  builder = "${bb}/busybox";
  BB = "${bb}/busybox";
  args = [ "sh" "-c" script ];
}
"""

NIX_CONFIG = "build-users-group =\nsubstituters =\nsandbox = true\n"


@pytest.fixture(scope="module")
def nix_view(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Run the probe in Nix's sandbox; return its output and the busybox store path."""
    require_nix()
    require_root("Nix builds without its daemon only as root")
    work = tmp_path_factory.mktemp("nix-parity")
    (work / "bb").mkdir()
    shutil.copy("/bin/busybox", work / "bb" / "busybox")
    (work / "parity.nix").write_text(DERIVATION)
    env = {**os.environ, "NIX_CONFIG": NIX_CONFIG}
    tag = f"{os.getpid()}-{os.urandom(4).hex()}"
    drv = subprocess.run(
        [
            "nix-instantiate",
            str(work / "parity.nix"),
            "--argstr",
            "tag",
            tag,
            "--argstr",
            "script",
            PROBE,
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    out = subprocess.run(
        ["nix-store", "--realise", drv], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    busybox = subprocess.run(
        ["nix-store", "--query", "--references", drv],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    store_dir = next(p for p in busybox if p.endswith("-parity-busybox"))
    return Path(out).read_text(), store_dir


def test_build_sees_what_nix_shows(sandbox: Sandboxes, nix_view: tuple[str, str]) -> None:
    expected, store_dir = nix_view
    build = sandbox.directory("build")
    store = sandbox.directory("store")
    env = {
        "BB": f"{store_dir}/busybox",
        "out": "/dev/stdout",
        "HOME": "/homeless-shelter",
        "NIX_BUILD_TOP": "/build",
        "NIX_STORE": "/nix/store",
        "PATH": "/path-not-set",
        "PWD": "/build",
        "TMPDIR": "/build",
        "TERM": "xterm-256color",
    }
    spec = sandbox.spec("", env=env)
    ro_paths = ["/dev/kvm"] if os.path.exists("/dev/kvm") else []
    spec = type(spec)(
        argv=[f"{store_dir}/busybox", "sh", "-c", PROBE],
        env=env,
        cwd="/build",
        ro_binds=[Bind(store_dir, store_dir)],
        scratch=[Scratch("/build", str(build)), Scratch("/nix/store", str(store))],
        ro_paths=ro_paths,
    )
    result = sandbox.launcher.run(spec, timeout=60)
    assert result.ok, result
    assert result.log.decode() == expected


def test_identity_and_environment(sandbox: Sandboxes) -> None:
    _, fields = sandbox.with_build_dir()
    result = sandbox.run(
        "id; hostname; umask; pwd; stat -c %a /tmp; cat /etc/hosts; ip -o link | wc -l",
        **fields,
    )
    assert result.log.decode().splitlines() == [
        "uid=1000(nixbld) gid=100(nixbld)",
        "localhost",
        "0022",
        "/build",
        "1777",
        "127.0.0.1 localhost",
        "::1 localhost",
        "1",
    ]


def test_network_access_uses_the_host_namespace(sandbox: Sandboxes) -> None:
    result = sandbox.run("ip -o link | wc -l; cat /etc/resolv.conf /etc/hosts", network=True)
    assert result.ok, result
    lines = result.log.decode().splitlines()
    assert int(lines[0]) == len(os.listdir("/sys/class/net"))
    host_files = Path("/etc/resolv.conf").read_text() + Path("/etc/hosts").read_text()
    assert "\n".join(lines[1:]) + "\n" == host_files
    denied = sandbox.run("echo x >> /etc/resolv.conf", network=True)
    assert denied.exit_code != 0
