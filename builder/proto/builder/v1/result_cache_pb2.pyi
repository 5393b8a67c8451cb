from builder.proto.tvix.build.protos import build_pb2 as _build_pb2
from builder.proto.tvix.castore.protos import castore_pb2 as _castore_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetResultRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class PutResultRequest(_message.Message):
    __slots__ = ("key", "build")
    KEY_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    build: _build_pb2.Build
    def __init__(self, key: _Optional[bytes] = ..., build: _Optional[_Union[_build_pb2.Build, _Mapping]] = ...) -> None: ...

class PutResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListResultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResultEntry(_message.Message):
    __slots__ = ("key", "outputs", "last_used")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    outputs: _containers.RepeatedCompositeFieldContainer[_castore_pb2.Node]
    last_used: float
    def __init__(self, key: _Optional[bytes] = ..., outputs: _Optional[_Iterable[_Union[_castore_pb2.Node, _Mapping]]] = ..., last_used: _Optional[float] = ...) -> None: ...

class EvictResultRequest(_message.Message):
    __slots__ = ("key", "last_used")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    last_used: float
    def __init__(self, key: _Optional[bytes] = ..., last_used: _Optional[float] = ...) -> None: ...

class EvictResultResponse(_message.Message):
    __slots__ = ("evicted",)
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    evicted: bool
    def __init__(self, evicted: _Optional[bool] = ...) -> None: ...
