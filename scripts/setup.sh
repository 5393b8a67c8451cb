#!/usr/bin/env bash
# One-shot set-up of a fresh Debian machine: system packages, .venv, editable install.
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libcap-dev nix-bin bubblewrap busybox-static b3sum iproute2 util-linux procps gcc libc6-dev python3.11-minimal libseccomp2)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import builder, sandbox, grpc_tools, moto' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --upgrade pip
    # A plain path entry rather than setuptools' import hook for the editable
    # install: the hook's imports cost every Python process some 20 ms of
    # start-up, and builder-nix-serve starts once per offloaded build. The mode
    # is deprecated (pyproject.toml bounds setuptools), hence the silenced warning.
    PYTHONWARNINGS=ignore .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
    touch .venv/.installed
fi

# Bytecode for every module of the package, refreshed on each run: an editable
# install compiles nothing, and where PYTHONDONTWRITEBYTECODE is set an import
# never caches what it compiled. Each builder-nix-serve (one process per build
# Nix offloads) and each sandbox launcher would otherwise compile its modules
# again at every start, some 10 ms for the hand-off relay alone.
.venv/bin/python -m compileall -q builder sandbox >/dev/null
