"""The materialisation cache: castore inputs as host paths every sandbox can bind-mount.

Builds of one project mostly share their inputs, so writing each input tree
afresh for every build would make materialisation, not the build, the cost.
Instead each tree is written once, read-only, and bind-mounted read-only into
every sandbox that needs it; a second build on the same inputs does no
per-file work at all, only a dictionary lookup and a reference count.

Layout of the cache root (one filesystem with the sandboxes, so that trees can
hardlink blobs and bind mounts stay cheap)::

    blobs/<2 hex>/<digest hex>     each blob once, 0444
    blobs-x/<2 hex>/<digest hex>   its executable variant, 0555 (a separate
                                   inode: hardlinks share mode bits)
    trees/<directory digest hex>/  a whole tree of hardlinks to those blobs,
                                   symlinks as symlinks, directories 0555
    tmp/                           fills and evictions in progress

A tree is filled in ``tmp/`` and renamed into ``trees/`` only once complete,
and an evicted one is renamed back into ``tmp/`` before it is taken apart, so
a name under ``trees/`` always denotes a complete tree. That is why trees left
by a previous run are trusted rather than re-verified: start-up empties
``tmp/``, then adopts ``trees/`` and the blobs with one directory walk per
tree (to learn its size and footprint, never its file contents), oldest first
in LRU order by their modification time.

Fills verify everything they write (see ``blob_files``): blob contents
against their digests, sizes against the nodes, the directory closure (fetched
with a single recursive get) against the directory digests. A missing blob or
directory is a ``FailedPreconditionError`` naming the digest, a mismatch an
``IntegrityError``; either way the partial tree is removed.

Threads needing the same tree at once share one fill: the first fills, the
others wait on its future and receive their reference with the result, so
eviction cannot take the tree away between the fill and their use of it.

Size is bounded by ``max_bytes``: the apparent size of every blob file (even
one sharing the store's inode, so the bound stays true if the store drops its
copy), plus a directory block per materialised directory. When over the bound,
after a fill or a release, unused trees and root-file entries are evicted least
recently used first, and blobs no tree links any more go with them. A tree in
use is never evicted; the cache may stay over its bound while they are.

API::

    cache = MaterialisationCache(root, blobs, directories, max_bytes)
    with cache.acquire(node) as acquired:
        acquired.host_path       # directory and file nodes: bind-mount this read-only
        acquired.symlink_target  # symlink nodes: nothing is cached, create the link yourself

A file root node yields the blob file of its variant. Leaving the ``with``
block (or calling ``release``) drops the reference.

Each held tree also carries the store's removal epochs from the last walk
that found its closure complete in the store (``complete_at``,
``mark_complete``), so that a warm build need not walk it again; the record
goes with the entry, and ``builder.executor.inputs`` explains why it is exact.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import closure_member, fetch_closure
from builder.castore.fs.batches import DirectoryBatches
from builder.castore.fs.descent import walk
from builder.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from builder.errors import FailedPreconditionError, IntegrityError, NotFoundError
from builder.executor.inputs import StoreEpoch, epoch_reader
from builder.executor.matcache.blob_files import BlobKey, CacheBlobs
from builder.executor.matcache.tree_shape import TreePlan, plan_tree, scan_tree
from builder.executor.removal import remove_tree

TREES_DIR = "trees"
TMP_DIR = "tmp"

# Fills place and link blobs on a few threads: the links, reads and copies are
# system calls that release the GIL (batching is ``DirectoryBatches``').
_DEFAULT_WORKERS = min(8, (os.cpu_count() or 1) + 2)

EntryKey = Digest | BlobKey
"""A tree by its directory digest, or a root file by its blob and variant."""


@dataclass(slots=True)
class _Entry:
    """An evictable unit; ``size`` is the node size it answers to, ``charge`` its
    bytes beyond the blobs (which the blob half accounts for itself)."""

    key: EntryKey
    path: Path
    size: int
    charge: int
    refs: int = 0
    complete_at: StoreEpoch | None = None


@dataclass(slots=True)
class _Pending:
    """A fill in progress and the number of threads waiting for its result."""

    future: Future[_Entry]
    waiters: int = 0


@dataclass(frozen=True)
class CacheStats:
    bytes_used: int
    max_bytes: int
    trees: int
    blobs: int
    in_use: int
    fills: int
    hits: int
    misses: int
    evictions: int


class Acquired:
    """A reference to a materialised input; the path stays valid until ``release``."""

    def __init__(
        self,
        host_path: Path | None,
        symlink_target: bytes | None,
        cache: MaterialisationCache | None = None,
        entry: _Entry | None = None,
    ) -> None:
        self.host_path = host_path
        self.symlink_target = symlink_target
        self._cache = cache
        self._entry = entry
        self._lock = threading.Lock()

    def release(self) -> None:
        """Drop the reference; calling it again does nothing."""
        with self._lock:
            entry, self._entry = self._entry, None
        if entry is not None and self._cache is not None:
            self._cache._release(entry)

    def __enter__(self) -> Acquired:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class MaterialisationCache:
    def __init__(
        self,
        root: str | Path,
        blobs: BlobService,
        directories: DirectoryService,
        max_bytes: int,
        workers: int = _DEFAULT_WORKERS,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._trees_dir = self.root / TREES_DIR
        self._tmp_dir = self.root / TMP_DIR
        self._directories = directories
        self._read_epoch = epoch_reader(blobs, directories)
        self._lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._entries: OrderedDict[EntryKey, _Entry] = OrderedDict()
        self._pending: dict[EntryKey, _Pending] = {}
        self._tree_bytes = 0
        self._fills = self._hits = self._misses = self._evictions = 0
        for directory in (self._trees_dir, self._tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._clear_tmp()
        self._blobs = CacheBlobs(self.root, self._tmp_dir, blobs)
        self._adopt()
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="matcache")
        self._evict()

    def acquire(self, node: Node) -> Acquired:
        """Make ``node`` present (filling it if need be) and hold it until released."""
        if isinstance(node, SymlinkNode):
            return Acquired(None, node.target)
        key: EntryKey = (
            node.digest if isinstance(node, DirectoryNode) else (node.digest, node.executable)
        )
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.refs += 1
                self._entries.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
                pending = self._pending.get(key)
                owner = pending is None
                if pending is None:
                    pending = self._pending[key] = _Pending(Future())
                else:
                    pending.waiters += 1
        if entry is None:
            entry = self._fill(node, key, pending) if owner else pending.future.result()
        if entry.size != node.size:
            self._release(entry)
            raise IntegrityError(
                f"{_describe(node)} has size {entry.size}, but the node says {node.size}"
            )
        return Acquired(entry.path, None, self, entry)

    def store_epoch(self) -> StoreEpoch | None:
        """The removal epochs of the store this cache fills from; None if it cannot tell."""
        return None if self._read_epoch is None else self._read_epoch()

    def complete_at(self, node: DirectoryNode) -> StoreEpoch | None:
        """The store epoch at which the held tree was last found complete in the store.

        The record lives and dies with the entry, so it costs no memory of its
        own and a refilled tree is walked afresh; ``builder.executor.inputs``
        says why it may stand in for a walk.
        """
        with self._lock:
            entry = self._entries.get(node.digest)
            if entry is None or entry.size != node.size:
                return None
            return entry.complete_at

    def mark_complete(self, node: DirectoryNode, epoch: StoreEpoch) -> None:
        """Record a walk that found the tree complete; nothing if the tree is not held."""
        with self._lock:
            entry = self._entries.get(node.digest)
            if entry is not None and entry.size == node.size:
                entry.complete_at = epoch

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                bytes_used=self._usage(),
                max_bytes=self.max_bytes,
                trees=sum(1 for e in self._entries.values() if isinstance(e.key, Digest)),
                blobs=len(self._blobs),
                in_use=sum(1 for e in self._entries.values() if e.refs),
                fills=self._fills,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    def close(self) -> None:
        """Stop the fill threads; what is on disk stays for the next start."""
        self._pool.shutdown(wait=True)

    def _fill(self, node: FileNode | DirectoryNode, key: EntryKey, pending: _Pending) -> _Entry:
        try:
            if isinstance(node, DirectoryNode):
                entry = self._fill_tree(node)
            else:
                entry = self._fill_file(node)
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.future.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            entry.refs = 1 + pending.waiters
            self._entries[key] = entry
            self._tree_bytes += entry.charge
            self._fills += 1
        pending.future.set_result(entry)
        self._evict()
        return entry

    def _fill_file(self, node: FileNode) -> _Entry:
        """A root file is its blob; the entry pins it for as long as the entry lives."""
        key = (node.digest, node.executable)
        self._blobs.pin([key])
        try:
            self._blobs.ensure(node.digest, node.size, node.executable)
        except BaseException:
            self._blobs.unpin([key])
            raise
        return _Entry(key, Path(os.fsdecode(self._blobs.path(key))), node.size, 0)

    def _fill_tree(self, node: DirectoryNode) -> _Entry:
        try:
            closure = fetch_closure(node.digest, self._directories)
        except NotFoundError as exc:
            raise FailedPreconditionError(
                f"cannot materialise directory {node.digest}: {exc}"
            ) from exc
        plan = plan_tree(node, closure)
        self._blobs.pin(plan.blobs)
        tmp = os.fsencode(tempfile.mkdtemp(dir=self._tmp_dir, prefix="tree-"))
        try:
            charge = self._write_tree(tmp, plan)
            final = self._trees_dir / node.digest.hex()
            os.rename(tmp, final)
            os.chmod(final, 0o555)
        except BaseException:
            remove_tree(tmp)
            self._blobs.unpin(plan.blobs)
            self._blobs.sweep(keys=plan.blobs)
            raise
        self._blobs.unpin(plan.blobs)
        return _Entry(node.digest, final, node.size, charge)

    def _write_tree(self, tmp: bytes, plan: TreePlan) -> int:
        """Write the planned tree under ``tmp``; the bytes it costs beyond shared blobs."""
        copied = 0

        def count(results: list[int]) -> None:
            nonlocal copied
            copied += sum(results)

        batches = DirectoryBatches(self._pool, self._workers, self._link_file, count)
        directories = iter(range(plan.directories))

        def fill(fd: int, directory: Directory) -> list[tuple[bytes, Directory]]:
            number = next(directories)
            for link in directory.symlinks:
                os.symlink(link.target, link.name, dir_fd=fd)
            for file in directory.files:
                batches.add(number, fd, file)
            children = []
            for child in directory.directories:
                os.mkdir(child.name, 0o755, dir_fd=fd)
                children.append((child.name, closure_member(plan.closure, child)))
            return children

        try:
            walk(tmp, plan.root, fill)
            batches.finish()
        except BaseException:
            batches.abandon()
            raise
        # Once every file is linked, and children before parents: a parent
        # made read-only first would block them.
        walk(tmp, plan.root, lambda _, directory: _subdirectories(directory, plan), _seal)
        return copied + plan.footprint

    def _link_file(self, dir_fd: int, file: FileNode) -> int:
        self._blobs.ensure(file.digest, file.size, file.executable)
        return self._blobs.link((file.digest, file.executable), dir_fd, file.name)

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
        self._evict()

    def _usage(self) -> int:
        return self._blobs.bytes + self._tree_bytes

    def _needs_eviction(self) -> bool:
        with self._lock:
            return self._usage() > self.max_bytes and any(
                e.refs == 0 for e in self._entries.values()
            )

    def _evict(self) -> None:
        """Evict until under the bound; one thread at a time, the others leave it to that one.

        The check after releasing the eviction lock catches growth that another
        thread added while this one held it and so could not evict itself.
        """
        while self._needs_eviction():
            if not self._evict_lock.acquire(blocking=False):
                return
            try:
                while self._evict_one():
                    pass
            finally:
                self._evict_lock.release()

    def _evict_one(self) -> bool:
        with self._lock:
            if self._usage() <= self.max_bytes:
                return False
            victim = next((e for e in self._entries.values() if e.refs == 0), None)
            if victim is None:
                return False
            del self._entries[victim.key]
            self._tree_bytes -= victim.charge
            self._evictions += 1
            doomed = None
            swept_all = False
            if isinstance(victim.key, Digest):
                # Renamed away while no acquire can look, so a refill never
                # meets the old tree under its name.
                doomed = tempfile.mkdtemp(dir=self._tmp_dir, prefix="evict-")
                try:
                    os.chmod(victim.path, 0o755)
                    os.rename(victim.path, doomed)
                except FileNotFoundError:
                    # Removed behind the cache's back: which blobs it linked
                    # is unknown, so every blob is checked once.
                    os.rmdir(doomed)
                    doomed = None
                    swept_all = True
        if swept_all:
            self._blobs.sweep(keys=self._blobs.keys())
        elif doomed is not None:
            self._blobs.sweep(inodes=remove_tree(doomed))
        elif isinstance(victim.key, tuple):
            self._blobs.unpin([victim.key])
            self._blobs.sweep(keys=[victim.key])
        return True

    def _clear_tmp(self) -> None:
        """Remove what fills and evictions interrupted by a crash left behind."""
        for entry in os.scandir(self._tmp_dir):
            if entry.is_dir(follow_symlinks=False):
                remove_tree(entry.path)
            else:
                os.unlink(entry.path)

    def _adopt(self) -> None:
        """Take over the trees and blobs of a previous run, trusted as explained above."""
        found: list[tuple[int, _Entry]] = []
        for item in os.scandir(self._trees_dir):
            try:
                digest = Digest(bytes.fromhex(item.name))
            except ValueError:
                digest = None
            if digest is None or not item.is_dir(follow_symlinks=False):
                # Not a name this cache gives: nothing can rely on it.
                remove_tree(item.path)
                continue
            os.chmod(item.path, 0o555)
            scanned = scan_tree(os.fsencode(item.path))
            entry = _Entry(digest, Path(item.path), scanned.size, scanned.footprint)
            found.append((item.stat(follow_symlinks=False).st_mtime_ns, entry))
        for key in self._blobs.scan():
            self._blobs.pin([key])
            path = Path(os.fsdecode(self._blobs.path(key)))
            self._entries[key] = _Entry(key, path, os.stat(path).st_size, 0)
        for _, entry in sorted(found, key=lambda pair: pair[0]):
            self._entries[entry.key] = entry
            self._tree_bytes += entry.charge


def _subdirectories(directory: Directory, plan: TreePlan) -> list[tuple[bytes, Directory]]:
    return [(child.name, closure_member(plan.closure, child)) for child in directory.directories]


def _seal(parent: int, name: bytes, _: Directory) -> None:
    os.chmod(name, 0o555, dir_fd=parent, follow_symlinks=False)


def _describe(node: FileNode | DirectoryNode) -> str:
    kind = "directory" if isinstance(node, DirectoryNode) else "blob"
    return f"{kind} {node.digest}"
