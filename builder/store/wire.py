"""Translation between ``PathInfo`` and the two families' ``PathInfo`` messages.

On the wire a store path is split: the root node's name is the basename,
references are bare 20-byte digests with their basenames in a parallel list,
and the deriver drops its ``.drv`` suffix. A message from a client is checked
field by field before it becomes a ``PathInfo``, so every refusal names the
field at fault; the same decoding reads records back from durable backends.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from google.protobuf.message import DecodeError

from builder.castore.wire import Family, node_from_proto, node_to_proto
from builder.errors import IntegrityError, InvalidArgumentError
from builder.proto.snix.store.protos import pathinfo_pb2 as snix_pathinfo
from builder.proto.tvix.store.protos import pathinfo_pb2 as tvix_pathinfo
from builder.store.path_info import ContentAddress, HashKind, PathInfo, Signature
from builder.store.store_path import StorePath, check_digest

DRV_SUFFIX = ".drv"
# The field of a PathInfo message that holds its root node, by family.
_NODE_FIELDS = {Family.TVIX: "node", Family.SNIX: "entry"}


def pathinfo_messages(family: Family) -> ModuleType:
    """The family's PathInfo messages, without its gRPC stubs: stored records need no gRPC."""
    return tvix_pathinfo if family is Family.TVIX else snix_pathinfo


def path_info_to_proto(info: PathInfo, family: Family = Family.TVIX) -> Any:
    messages = pathinfo_messages(family)
    narinfo = messages.NARInfo(
        nar_size=info.nar_size,
        nar_sha256=info.nar_sha256,
        signatures=[messages.NARInfo.Signature(name=s.name, data=s.data) for s in info.signatures],
        reference_names=[r.basename for r in info.references],
    )
    if info.deriver is not None:
        narinfo.deriver.CopyFrom(
            messages.StorePath(
                name=info.deriver.name.removesuffix(DRV_SUFFIX), digest=info.deriver.digest
            )
        )
    if info.ca is not None:
        narinfo.ca.CopyFrom(messages.NARInfo.CA(type=int(info.ca.kind), digest=info.ca.digest))
    message = messages.PathInfo(references=[r.digest for r in info.references], narinfo=narinfo)
    getattr(message, _NODE_FIELDS[family]).CopyFrom(node_to_proto(info.node, family))
    return message


def _path_of_node(node_name: bytes, where: str) -> StorePath:
    try:
        basename = node_name.decode()
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{where}: name {node_name!r} is not UTF-8") from None
    return StorePath.from_basename(basename, f"{where}.name")


def _references(message: Any, narinfo: Any, where: str) -> tuple[StorePath, ...]:
    digests, names = list(message.references), list(narinfo.reference_names)
    if len(digests) != len(names):
        raise InvalidArgumentError(
            f"{where}.narinfo.reference_names: {len(names)} names for {len(digests)} references"
        )
    references = []
    for i, (digest, name) in enumerate(zip(digests, names, strict=True)):
        check_digest(digest, f"{where}.references[{i}]")
        path = StorePath.from_basename(name, f"{where}.narinfo.reference_names[{i}]")
        if path.digest != digest:
            raise InvalidArgumentError(
                f"{where}.narinfo.reference_names[{i}]: {name!r} is not the path "
                f"references[{i}] names"
            )
        references.append(path)
    return tuple(references)


def _deriver(narinfo: Any, where: str) -> StorePath | None:
    if not narinfo.HasField("deriver"):
        return None
    name = narinfo.deriver.name
    if name.endswith(DRV_SUFFIX):
        raise InvalidArgumentError(
            f"{where}.narinfo.deriver.name: {name!r} must be given without {DRV_SUFFIX!r}"
        )
    return StorePath.from_digest(
        narinfo.deriver.digest, name + DRV_SUFFIX, f"{where}.narinfo.deriver"
    )


def _content_address(narinfo: Any, where: str) -> ContentAddress | None:
    if not narinfo.HasField("ca"):
        return None
    try:
        kind = HashKind(narinfo.ca.type)
    except ValueError:
        raise InvalidArgumentError(
            f"{where}.narinfo.ca.type: {narinfo.ca.type} is not a known hash type"
        ) from None
    return ContentAddress(kind, narinfo.ca.digest)


def path_info_from_proto(message: Any, where: str = "path_info") -> PathInfo:
    """Decode a message of either family; anything inconsistent is an InvalidArgumentError."""
    node_field = message.DESCRIPTOR.fields_by_number[1].name
    if not message.HasField(node_field):
        raise InvalidArgumentError(f"{where}.{node_field}: not set")
    node = node_from_proto(getattr(message, node_field), f"{where}.{node_field}")
    path = _path_of_node(node.name, f"{where}.{node_field}")
    if not message.HasField("narinfo"):
        raise InvalidArgumentError(f"{where}.narinfo: not set")
    narinfo = message.narinfo
    info = PathInfo(
        path=path,
        node=node,
        nar_sha256=narinfo.nar_sha256,
        nar_size=narinfo.nar_size,
        references=_references(message, narinfo, where),
        deriver=_deriver(narinfo, where),
        signatures=tuple(Signature(s.name, s.data) for s in narinfo.signatures),
        ca=_content_address(narinfo, where),
    )
    info.validate(where)
    return info


def encode_path_info(info: PathInfo) -> bytes:
    """The bytes durable backends keep: the tvix message, deterministically encoded."""
    return path_info_to_proto(info).SerializeToString(deterministic=True)


def decode_path_info(data: bytes, where: str) -> PathInfo:
    """A record a durable backend kept; one that no longer decodes is damage, not bad input."""
    try:
        return path_info_from_proto(tvix_pathinfo.PathInfo.FromString(data), where)
    except (DecodeError, InvalidArgumentError) as exc:
        raise IntegrityError(f"{where}: stored record does not decode: {exc}") from exc
