"""Making sure a request's inputs are complete in the store before it runs."""

from __future__ import annotations

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.errors import FailedPreconditionError, NotFoundError


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
        where = f"inputs[{i}] {node.name.decode(errors='replace')}"
        if isinstance(node, FileNode):
            need_blob(node, where)
        elif isinstance(node, DirectoryNode):
            try:
                closure = list(directories.get_recursive(node.digest))
            except NotFoundError:
                missing.append(f"directory {node.digest} ({where})")
                continue
            for directory in closure:
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
