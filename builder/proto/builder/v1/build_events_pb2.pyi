from builder.proto.snix.build.protos import build_pb2 as _build_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildEvent(_message.Message):
    __slots__ = ("started", "log", "completed", "failed")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    started: Started
    log: LogChunk
    completed: Completed
    failed: Failed
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., log: _Optional[_Union[LogChunk, _Mapping]] = ..., completed: _Optional[_Union[Completed, _Mapping]] = ..., failed: _Optional[_Union[Failed, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("build_id", "cached")
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    cached: bool
    def __init__(self, build_id: _Optional[str] = ..., cached: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("stream", "data")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_UNSPECIFIED: _ClassVar[LogChunk.Stream]
        STDOUT: _ClassVar[LogChunk.Stream]
        STDERR: _ClassVar[LogChunk.Stream]
    STREAM_UNSPECIFIED: LogChunk.Stream
    STDOUT: LogChunk.Stream
    STDERR: LogChunk.Stream
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: LogChunk.Stream
    data: bytes
    def __init__(self, stream: _Optional[_Union[LogChunk.Stream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Completed(_message.Message):
    __slots__ = ("response",)
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    response: _build_pb2.BuildResponse
    def __init__(self, response: _Optional[_Union[_build_pb2.BuildResponse, _Mapping]] = ...) -> None: ...

class Failed(_message.Message):
    __slots__ = ("message", "exit_code", "signal", "limit")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    message: str
    exit_code: int
    signal: int
    limit: str
    def __init__(self, message: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., limit: _Optional[str] = ...) -> None: ...

class GetLogRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...
