from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_ROLE_UNSPECIFIED: _ClassVar[ModelRole]
    MODEL_ROLE_CHAMPION: _ClassVar[ModelRole]
    MODEL_ROLE_SHADOW: _ClassVar[ModelRole]
MODEL_ROLE_UNSPECIFIED: ModelRole
MODEL_ROLE_CHAMPION: ModelRole
MODEL_ROLE_SHADOW: ModelRole

class Envelope(_message.Message):
    __slots__ = ("schema_version", "id", "root_id", "tenant", "partition_key", "source", "created_at_us", "ingested_at_us", "attributes", "payload", "predictions", "lineage", "trace_id", "error", "parent_id", "fanout", "trace_parent")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_US_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    id: str
    root_id: str
    tenant: str
    partition_key: str
    source: str
    created_at_us: int
    ingested_at_us: int
    attributes: _containers.ScalarMap[str, str]
    payload: Payload
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    lineage: _containers.RepeatedCompositeFieldContainer[LineageStep]
    trace_id: str
    error: DeadLetter
    parent_id: str
    fanout: _containers.RepeatedCompositeFieldContainer[FanOut]
    trace_parent: str
    def __init__(self, schema_version: _Optional[int] = ..., id: _Optional[str] = ..., root_id: _Optional[str] = ..., tenant: _Optional[str] = ..., partition_key: _Optional[str] = ..., source: _Optional[str] = ..., created_at_us: _Optional[int] = ..., ingested_at_us: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., payload: _Optional[_Union[Payload, _Mapping]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., lineage: _Optional[_Iterable[_Union[LineageStep, _Mapping]]] = ..., trace_id: _Optional[str] = ..., error: _Optional[_Union[DeadLetter, _Mapping]] = ..., parent_id: _Optional[str] = ..., fanout: _Optional[_Iterable[_Union[FanOut, _Mapping]]] = ..., trace_parent: _Optional[str] = ...) -> None: ...

class FanOut(_message.Message):
    __slots__ = ("parent_id", "index", "count", "stage")
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    parent_id: str
    index: int
    count: int
    stage: str
    def __init__(self, parent_id: _Optional[str] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("content_type", "inline", "blob", "tensor")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    inline: bytes
    blob: BlobRef
    tensor: Tensor
    def __init__(self, content_type: _Optional[str] = ..., inline: _Optional[bytes] = ..., blob: _Optional[_Union[BlobRef, _Mapping]] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("uri", "sha256", "size")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size: int
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("model_name", "model_version", "role", "label", "scores", "predicted_at_us", "head")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AT_US_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    role: ModelRole
    label: str
    scores: _containers.ScalarMap[str, float]
    predicted_at_us: int
    head: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., role: _Optional[_Union[ModelRole, str]] = ..., label: _Optional[str] = ..., scores: _Optional[_Mapping[str, float]] = ..., predicted_at_us: _Optional[int] = ..., head: _Optional[str] = ...) -> None: ...

class LineageStep(_message.Message):
    __slots__ = ("stage", "at_us", "worker")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    AT_US_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    stage: str
    at_us: int
    worker: str
    def __init__(self, stage: _Optional[str] = ..., at_us: _Optional[int] = ..., worker: _Optional[str] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("stage", "error_type", "message", "attempts", "topic", "partition", "offset")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stage: str
    error_type: str
    message: str
    attempts: int
    topic: str
    partition: int
    offset: int
    def __init__(self, stage: _Optional[str] = ..., error_type: _Optional[str] = ..., message: _Optional[str] = ..., attempts: _Optional[int] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class EnvelopeBatch(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...
