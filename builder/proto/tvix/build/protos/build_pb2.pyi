from builder.proto.tvix.castore.protos import castore_pb2 as _castore_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildRequest(_message.Message):
    __slots__ = ("inputs", "command_args", "working_dir", "scratch_paths", "inputs_dir", "outputs", "environment_vars", "constraints", "additional_files", "refscan_needles")
    class EnvVar(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class BuildConstraints(_message.Message):
        __slots__ = ("system", "min_memory", "available_ro_paths", "network_access", "provide_bin_sh")
        SYSTEM_FIELD_NUMBER: _ClassVar[int]
        MIN_MEMORY_FIELD_NUMBER: _ClassVar[int]
        AVAILABLE_RO_PATHS_FIELD_NUMBER: _ClassVar[int]
        NETWORK_ACCESS_FIELD_NUMBER: _ClassVar[int]
        PROVIDE_BIN_SH_FIELD_NUMBER: _ClassVar[int]
        system: str
        min_memory: int
        available_ro_paths: _containers.RepeatedScalarFieldContainer[str]
        network_access: bool
        provide_bin_sh: bool
        def __init__(self, system: _Optional[str] = ..., min_memory: _Optional[int] = ..., available_ro_paths: _Optional[_Iterable[str]] = ..., network_access: _Optional[bool] = ..., provide_bin_sh: _Optional[bool] = ...) -> None: ...
    class AdditionalFile(_message.Message):
        __slots__ = ("path", "contents")
        PATH_FIELD_NUMBER: _ClassVar[int]
        CONTENTS_FIELD_NUMBER: _ClassVar[int]
        path: str
        contents: bytes
        def __init__(self, path: _Optional[str] = ..., contents: _Optional[bytes] = ...) -> None: ...
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ARGS_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    SCRATCH_PATHS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_VARS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_FILES_FIELD_NUMBER: _ClassVar[int]
    REFSCAN_NEEDLES_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[_castore_pb2.Node]
    command_args: _containers.RepeatedScalarFieldContainer[str]
    working_dir: str
    scratch_paths: _containers.RepeatedScalarFieldContainer[str]
    inputs_dir: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    environment_vars: _containers.RepeatedCompositeFieldContainer[BuildRequest.EnvVar]
    constraints: BuildRequest.BuildConstraints
    additional_files: _containers.RepeatedCompositeFieldContainer[BuildRequest.AdditionalFile]
    refscan_needles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, inputs: _Optional[_Iterable[_Union[_castore_pb2.Node, _Mapping]]] = ..., command_args: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., scratch_paths: _Optional[_Iterable[str]] = ..., inputs_dir: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., environment_vars: _Optional[_Iterable[_Union[BuildRequest.EnvVar, _Mapping]]] = ..., constraints: _Optional[_Union[BuildRequest.BuildConstraints, _Mapping]] = ..., additional_files: _Optional[_Iterable[_Union[BuildRequest.AdditionalFile, _Mapping]]] = ..., refscan_needles: _Optional[_Iterable[str]] = ...) -> None: ...

class Build(_message.Message):
    __slots__ = ("build_request", "outputs", "outputs_needles")
    class OutputNeedles(_message.Message):
        __slots__ = ("needles",)
        NEEDLES_FIELD_NUMBER: _ClassVar[int]
        needles: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, needles: _Optional[_Iterable[int]] = ...) -> None: ...
    BUILD_REQUEST_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_NEEDLES_FIELD_NUMBER: _ClassVar[int]
    build_request: BuildRequest
    outputs: _containers.RepeatedCompositeFieldContainer[_castore_pb2.Node]
    outputs_needles: _containers.RepeatedCompositeFieldContainer[Build.OutputNeedles]
    def __init__(self, build_request: _Optional[_Union[BuildRequest, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[_castore_pb2.Node, _Mapping]]] = ..., outputs_needles: _Optional[_Iterable[_Union[Build.OutputNeedles, _Mapping]]] = ...) -> None: ...
