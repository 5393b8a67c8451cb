"""Making sure a request's inputs are complete in the store, and not too big, before it runs.

A directory node's ``size`` counts every entry below it, once per place it
occurs: a directory referenced twice is materialised twice. A chain of small
Directory messages each naming its child twice is therefore a few kilobytes
on the wire and exponentially many entries on disk. So the claimed sizes are
checked against the operator's limit before anything is fetched, and the
claim itself is checked against the stored root when it is first fetched;
the store has already checked every child's size against its parent's entry
when the closure was put, so a true root size bounds the whole expansion.
"""

from __future__ import annotations

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError


def check_input_sizes(inputs: tuple[Node, ...], limit: int) -> None:
    """Refuse inputs whose claimed expanded size, alone or together, exceeds ``limit``."""
    total = 0
    for i, node in enumerate(inputs):
        if isinstance(node, DirectoryNode):
            if node.size > limit:
                raise InvalidArgumentError(
                    f"{_where(i, node)}: directory size {node.size} exceeds the limit of "
                    f"{limit} (the server's maximum input size per build)"
                )
            total += node.size
    if total > limit:
        raise InvalidArgumentError(
            f"inputs: directory sizes add up to {total}, more than the limit of {limit} "
            "(the server's maximum input size per build)"
        )


def _where(index: int, node: Node) -> str:
    return f"inputs[{index}] {node.name.decode(errors='replace')}"


def missing_inputs(
    inputs: tuple[Node, ...], blobs: BlobService, directories: DirectoryService
) -> list[str]:
    """Descriptions of every blob and directory the inputs need but the store lacks."""
    missing: list[str] = []
    seen_blobs: set[bytes] = set()

    def need_blob(node: FileNode, where: str) -> None:
        if node.digest in seen_blobs:
            return
        seen_blobs.add(node.digest)
        if not blobs.has(node.digest):
            missing.append(f"blob {node.digest} ({where})")

    for i, node in enumerate(inputs):
        where = _where(i, node)
        if isinstance(node, FileNode):
            need_blob(node, where)
        elif isinstance(node, DirectoryNode):
            try:
                closure = directories.get_recursive(node.digest)
                root = next(closure)
            except NotFoundError:
                missing.append(f"directory {node.digest} ({where})")
                continue
            # Before descending: a false claim would leave the expansion unbounded.
            if root.size != node.size:
                raise InvalidArgumentError(
                    f"{where}: size is {node.size}, but directory {node.digest} has size "
                    f"{root.size}"
                )
            for directory in (root, *closure):
                for file in directory.files:
                    need_blob(file, f"{where}/…/{file.name.decode(errors='replace')}")
    return missing


def require_inputs(
    inputs: tuple[Node, ...], blobs: BlobService, directories: DirectoryService
) -> None:
    missing = missing_inputs(inputs, blobs, directories)
    if missing:
        shown = "; ".join(missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FailedPreconditionError(f"inputs missing from the store: {shown}{more}")
