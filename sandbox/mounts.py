"""The filesystem a build sees: a fresh tmpfs root populated with bind mounts.

The root is assembled in a private mount namespace on a staging directory, then
entered with pivot_root by the sandbox's init. Inputs become read-only, nosuid
and nodev as whole trees (mount_setattr with AT_RECURSIVE), so a submount
under an input cannot be used to sneak a writable or setuid path in.
"""

import functools
import os
import posixpath
import stat
from dataclasses import dataclass, field

from sandbox import hostpaths, identity, syscalls
from sandbox.errors import SpecError
from sandbox.fdio import write_all
from sandbox.spec import STORE_DIR, SandboxSpec
from sandbox.syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

DEVICES = ("full", "null", "random", "tty", "urandom", "zero")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "/dev/pts/ptmx",
}
NETWORK_ETC = ("resolv.conf", "services", "hosts")
# What each file, directory or symlink in a capped scratch store counts against its limit.
ENTRY_BYTES = 4096


@dataclass
class RootLayout:
    """What assembling the root left behind that someone must undo or read later.

    ``mountpoints`` are the entries created inside host-bound scratch dirs only
    to serve as mount targets or as parents of files and the working directory;
    the launcher removes them after the run so the caller's scratch dir holds
    nothing the build did not write. Each is a sandbox path and the number of
    its trailing components that were created, so that a chain of directories
    created one inside the other is one entry: listing each of them by its
    full path would make the report, and the launcher's removal, grow with
    the square of a request's path depth.
    """

    mountpoints: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Context:
    root_fd: int
    owner: tuple[int, int] | None
    scratch: list[str]
    host_scratch: list[str]
    layout: RootLayout


@dataclass(frozen=True)
class _Mount:
    source: str | int
    target: str
    writable: bool
    device_ok: bool = False


@dataclass(frozen=True)
class _Store:
    """Descriptors of the directories of the sandbox's own tmpfs that writable targets
    are bound from.

    Binds are made by descriptor because the store's path lies in the root
    being assembled: a bind made earlier could cover it (the spec forbids
    that, and the descriptors make sure). ``scratch`` and ``shared`` (the dirs
    for /tmp and /dev/shm, by where they go) are only there under a scratch
    byte limit; otherwise scratch dirs are the caller's and /tmp and /dev/shm
    have a tmpfs each.
    """

    temporary: list[int]
    scratch: list[int]
    shared: dict[str, int]

    def close(self) -> None:
        for fd in [*self.temporary, *self.scratch, *self.shared.values()]:
            os.close(fd)


def prepare_root(root: str, ids: tuple[int, int], network: bool) -> None:
    """Mount the parts of the root every build gets: tmpfs, /dev, /proc.

    Must run in the build's PID 1 (procfs shows the PID namespace of the
    process that mounts it), in a mount namespace of its own. The /etc files
    that depend only on the profile PID 1 was cloned for (the inside ``ids``
    and whether it has ``network``) are written here too, before a spec
    arrives; ``populate_root`` rewrites them for a spec with other ids.
    """
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
    syscalls.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    etc = _at(root, "/etc")
    os.mkdir(etc)
    _write_users(etc, *ids)
    if not network:
        _write(f"{etc}/hosts", identity.hosts().encode())
    _make_dev(root)
    os.mkdir(_at(root, "/proc"), 0o555)
    syscalls.mount("proc", _at(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(_at(root, "/tmp"))


def populate_root(
    root: str,
    spec: SandboxSpec,
    owner: tuple[int, int] | None,
    layout: RootLayout,
    prepared_ids: tuple[int, int],
) -> None:
    """Add what the spec asks for to a prepared root, then make it read-only.

    ``owner`` is the host uid/gid the build runs as when the caller is root and
    files must be handed over; rootless callers already own what they create.
    ``prepared_ids`` are the ids ``prepare_root`` wrote /etc/passwd and
    /etc/group for.
    Scratch dirs are host directories the caller may have filled (symlink
    inputs), so every target is reached through ``hostpaths`` from a descriptor
    of the root and mounted onto a descriptor of itself: a symlink on the way
    is refused rather than followed out onto the host. ``layout`` is filled as
    work proceeds, so that it also tells what to undo when a step fails.
    """
    _make_etc(root, spec, prepared_ids)
    store = _make_store(root, spec, owner)
    try:
        _mount_all(root, spec, owner, layout, store)
    finally:
        if store is not None:
            store.close()
    if store is not None:
        syscalls.umount2(_at(root, STORE_DIR), MNT_DETACH)
        os.rmdir(_at(root, STORE_DIR))
    # Read-only only now: devices such as /dev/kvm may have been added to /dev.
    dev = _at(root, "/dev")
    syscalls.mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    syscalls.mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mount_all(
    root: str,
    spec: SandboxSpec,
    owner: tuple[int, int] | None,
    layout: RootLayout,
    store: _Store | None,
) -> None:
    shared = {} if store is None else store.shared
    capped = bool(shared)
    sources: list[str | int] = (
        list(store.scratch) if store is not None and capped else [s.host for s in spec.scratch]
    )
    mounts = [
        _Mount(source, s.target, writable=True)
        for source, s in zip(sources, spec.scratch, strict=True)
    ]
    if store is not None:
        mounts += [
            _Mount(d, t, writable=True)
            for d, t in zip(store.temporary, spec.temporary, strict=True)
        ]
    mounts += [_Mount(b.host, b.target, writable=False) for b in spec.ro_binds]
    mounts += [_Mount(p, p, writable=False, device_ok=True) for p in spec.ro_paths]
    if spec.shell is not None:
        mounts.append(_Mount(spec.shell, "/bin/sh", writable=False))
    if not capped:
        syscalls.mount("tmpfs", _at(root, "/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    # Under a cap /dev/shm is covered too: its own tmpfs, made before the spec came, has none.
    for path, fd in shared.items():
        _bind_path(fd, _at(root, path), writable=True)
    if owner is not None and not capped:
        for scratch in spec.scratch:
            os.chown(scratch.host, *owner, follow_symlinks=False)
    targets = [s.target for s in spec.scratch]
    root_fd = hostpaths.open_dir(root)
    try:
        ctx = _Context(root_fd, owner, targets + spec.temporary, [] if capped else targets, layout)
        for mount in sorted(mounts, key=lambda m: m.target.count("/")):
            target_fd = _mountpoint(ctx, mount)
            try:
                _bind(mount.source, target_fd, mount.target, mount.writable, mount.device_ok)
            finally:
                os.close(target_fd)
        for file in spec.files:
            _write_file(ctx, file.target, file.contents, file.mode)
        for link in spec.symlinks:
            _make_symlink(ctx, link.target, link.link)
        os.close(hostpaths.walk(root_fd, spec.cwd, functools.partial(_created, ctx)))
    finally:
        os.close(root_fd)


def enter_root(root: str) -> None:
    """Make ``root`` the only ``/``, detaching the host's tree entirely."""
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", MNT_DETACH)
    os.chdir("/")


def _at(root: str, path: str) -> str:
    return root + path


def _write_users(etc: str, uid: int, gid: int) -> None:
    _write(f"{etc}/passwd", identity.passwd(uid, gid).encode())
    _write(f"{etc}/group", identity.group(gid).encode())


def _make_etc(root: str, spec: SandboxSpec, prepared_ids: tuple[int, int]) -> None:
    """Finish /etc: the build user's entries if the spec's ids are not those
    prepared, and the host's name service files for a build with network.

    Those are bound only now, so that a build sees the host's current files
    rather than those of when its PID 1 was cloned.
    """
    etc = _at(root, "/etc")
    if (spec.uid, spec.gid) != prepared_ids:
        os.unlink(f"{etc}/passwd")
        os.unlink(f"{etc}/group")
        _write_users(etc, spec.uid, spec.gid)
    if not spec.network:
        return
    for name in NETWORK_ETC:
        host = f"/etc/{name}"
        if os.path.exists(host):
            _write(f"{etc}/{name}", b"")
            _bind_path(host, f"{etc}/{name}", writable=False)


def _make_dev(root: str) -> None:
    dev = _at(root, "/dev")
    os.mkdir(dev)
    syscalls.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name in DEVICES:
        _write(f"{dev}/{name}", b"")
        syscalls.mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    os.mkdir(f"{dev}/pts")
    syscalls.mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
    )
    os.mkdir(f"{dev}/shm")
    syscalls.mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")


def _prepared_entries(spec: SandboxSpec) -> int:
    """At most how many entries the sandbox itself makes in the store, beyond the build's share.

    The store's own dirs, and each mount point, file and symlink of the spec
    with the directories leading to it, should it lie under a scratch path.
    """
    targets = [
        spec.cwd,
        *spec.temporary,
        *spec.ro_paths,
        *(s.target for s in spec.scratch),
        *(b.target for b in spec.ro_binds),
        *(f.target for f in spec.files),
        *(link.target for link in spec.symlinks),
    ]
    # The store's root, tmp and shm, with room to spare for the kernel's own count.
    own = 8
    return own + len(spec.scratch) + len(spec.temporary) + sum(t.count("/") for t in targets)


def _make_store(root: str, spec: SandboxSpec, owner: tuple[int, int] | None) -> _Store | None:
    """Back temporary dirs with a tmpfs, and scratch dirs, /tmp and /dev/shm too under a limit.

    One filesystem for all of them makes the kernel enforce the total, and lets
    the build's writes be charged to its memory cgroup like any tmpfs page.
    Under a limit the inodes are capped as well: an empty file or directory
    takes no tmpfs block, yet scratch is copied back to the host disk, where
    each entry costs an inode and a directory a block. So every entry counts
    as ``ENTRY_BYTES`` of the limit.
    """
    limit = spec.limits.scratch_bytes
    if limit is None and not spec.temporary:
        return None
    store = _at(root, STORE_DIR)
    os.mkdir(store)
    if limit is None:
        options = "mode=0755"
    else:
        entries = limit // ENTRY_BYTES + _prepared_entries(spec)
        options = f"mode=0755,size={limit},nr_inodes={entries}"
    syscalls.mount("tmpfs", store, "tmpfs", MS_NOSUID | MS_NODEV, options)
    store_fd = hostpaths.open_dir(store)
    opened: list[int] = []

    def held(name: str) -> int:
        fd = os.open(
            name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=store_fd
        )
        opened.append(fd)
        return fd

    def owned_dir(name: str) -> int:
        os.mkdir(name, 0o755, dir_fd=store_fd)
        if owner is not None:
            os.chown(name, *owner, dir_fd=store_fd, follow_symlinks=False)
        return held(name)

    try:
        temporary = [owned_dir(f"temporary-{i}") for i in range(len(spec.temporary))]
        if limit is None:
            return _Store(temporary, [], {})
        scratch = [owned_dir(f"scratch-{i}") for i in range(len(spec.scratch))]
        for name in ("tmp", "shm"):
            os.mkdir(name, dir_fd=store_fd)
            os.chmod(name, 0o1777, dir_fd=store_fd)
        return _Store(temporary, scratch, {"/tmp": held("tmp"), "/dev/shm": held("shm")})
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    finally:
        os.close(store_fd)


def _mountpoint(ctx: _Context, mount: _Mount) -> int:
    """An O_PATH fd of the mount target, created (and its parents) if missing."""
    parent, name = posixpath.split(mount.target)
    dir_fd = hostpaths.walk(ctx.root_fd, parent, functools.partial(_created, ctx))
    try:
        if hostpaths.kind(dir_fd, name) is None:
            if isinstance(mount.source, int) or os.path.isdir(mount.source):
                os.mkdir(name, 0o755, dir_fd=dir_fd)
            else:
                os.close(_create(dir_fd, name, 0o644))
            _created(ctx, dir_fd, name, mount.target)
        return hostpaths.open_leaf(dir_fd, name, mount.target)
    finally:
        os.close(dir_fd)


def _created(ctx: _Context, parent_fd: int, name: str, path: str) -> None:
    """Hand new entries in scratch to the build user and remember host leftovers."""
    if ctx.owner is not None and any(path.startswith(s + "/") for s in ctx.scratch):
        os.chown(name, *ctx.owner, dir_fd=parent_fd, follow_symlinks=False)
    if any(path.startswith(s + "/") for s in ctx.host_scratch):
        created = ctx.layout.mountpoints
        if created and _is_child(path, name, created[-1][0]):
            created[-1] = (path, created[-1][1] + 1)
        else:
            created.append((path, 1))


def _is_child(path: str, name: str, parent: str) -> bool:
    return len(path) == len(parent) + 1 + len(name) and path.startswith(parent + "/")


def _bind(source: str | int, target_fd: int, shown: str, writable: bool, device_ok: bool) -> None:
    """Bind ``source`` (a whole tree) onto the target the descriptor pins.

    The copy is detached while its flags are set, so it is never visible
    writable or setuid-capable, and it is attached by descriptor, so the
    target cannot be swapped for a symlink after it was checked.
    """
    tree = syscalls.open_tree_clone(source)
    try:
        attrs = MOUNT_ATTR_NOSUID
        if not writable:
            attrs |= MOUNT_ATTR_RDONLY
        if not (device_ok and isinstance(source, str) and _is_device(source)):
            attrs |= MOUNT_ATTR_NODEV
        syscalls.mount_setattr_fd(tree, attrs)
        syscalls.move_mount_onto(tree, target_fd, shown)
    finally:
        os.close(tree)


def _bind_path(source: str | int, target: str, writable: bool) -> None:
    """Bind onto a target in the sandbox's own fresh tmpfs, which nobody else can touch."""
    target_fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _bind(source, target_fd, target, writable, device_ok=False)
    finally:
        os.close(target_fd)


def _is_device(path: str) -> bool:
    mode = os.stat(path).st_mode
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _create(dir_fd: int, name: str, mode: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, mode, dir_fd=dir_fd)


def _fill(fd: int, contents: bytes, mode: int) -> None:
    write_all(fd, contents)
    os.fchmod(fd, mode)


def _write(path: str, contents: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        _fill(fd, contents, mode)
    finally:
        os.close(fd)


def _make_symlink(ctx: _Context, target: str, link: str) -> None:
    parent, name = posixpath.split(target)
    dir_fd = hostpaths.walk(ctx.root_fd, parent, functools.partial(_created, ctx))
    try:
        os.symlink(link, name, dir_fd=dir_fd)
        if ctx.owner is not None:
            os.chown(name, *ctx.owner, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise SpecError(f"symlink {target!r} cannot be created: {exc.strerror}") from None
    finally:
        os.close(dir_fd)


def _write_file(ctx: _Context, target: str, contents: bytes, mode: int) -> None:
    parent, name = posixpath.split(target)
    dir_fd = hostpaths.walk(ctx.root_fd, parent, functools.partial(_created, ctx))
    try:
        fd = _create(dir_fd, name, mode)
    except OSError as exc:
        raise SpecError(f"file {target!r} cannot be created: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        _fill(fd, contents, mode)
        if ctx.owner is not None:
            os.fchown(fd, *ctx.owner)
    finally:
        os.close(fd)
