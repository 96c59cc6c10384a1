from google.protobuf import struct_pb2 as _struct_pb2
from . import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AskMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASK_MODE_UNSPECIFIED: _ClassVar[AskMode]
    ASK_MODE_FULL: _ClassVar[AskMode]
    ASK_MODE_PREFIX: _ClassVar[AskMode]
    ASK_MODE_BLEND: _ClassVar[AskMode]
    ASK_MODE_EPIC: _ClassVar[AskMode]

class KvSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_SOURCE_UNSPECIFIED: _ClassVar[KvSource]
    KV_SOURCE_COMPUTED: _ClassVar[KvSource]
    KV_SOURCE_MEMORY: _ClassVar[KvSource]
    KV_SOURCE_DISK: _ClassVar[KvSource]
    KV_SOURCE_REDIS: _ClassVar[KvSource]

class TierKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_KIND_UNSPECIFIED: _ClassVar[TierKind]
    TIER_KIND_MEMORY: _ClassVar[TierKind]
    TIER_KIND_DISK: _ClassVar[TierKind]
    TIER_KIND_REDIS: _ClassVar[TierKind]
ASK_MODE_UNSPECIFIED: AskMode
ASK_MODE_FULL: AskMode
ASK_MODE_PREFIX: AskMode
ASK_MODE_BLEND: AskMode
ASK_MODE_EPIC: AskMode
KV_SOURCE_UNSPECIFIED: KvSource
KV_SOURCE_COMPUTED: KvSource
KV_SOURCE_MEMORY: KvSource
KV_SOURCE_DISK: KvSource
KV_SOURCE_REDIS: KvSource
TIER_KIND_UNSPECIFIED: TierKind
TIER_KIND_MEMORY: TierKind
TIER_KIND_DISK: TierKind
TIER_KIND_REDIS: TierKind

class AskRequest(_message.Message):
    __slots__ = ("request_id", "question", "collection", "k", "filter", "mode", "recompute_ratio", "epic_tokens", "sampling", "json_schema", "strict", "system_prompt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_RATIO_FIELD_NUMBER: _ClassVar[int]
    EPIC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    question: str
    collection: str
    k: int
    filter: _struct_pb2.Struct
    mode: AskMode
    recompute_ratio: float
    epic_tokens: int
    sampling: _generation_pb2.SamplingParams
    json_schema: str
    strict: bool
    system_prompt: str
    def __init__(self, request_id: _Optional[str] = ..., question: _Optional[str] = ..., collection: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., mode: _Optional[_Union[AskMode, str]] = ..., recompute_ratio: _Optional[float] = ..., epic_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., json_schema: _Optional[str] = ..., strict: _Optional[bool] = ..., system_prompt: _Optional[str] = ...) -> None: ...

class Passage(_message.Message):
    __slots__ = ("id", "chunk_id", "score", "text", "metadata", "kv_source", "tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    KV_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    chunk_id: str
    score: float
    text: str
    metadata: _struct_pb2.Struct
    kv_source: KvSource
    tokens: int
    def __init__(self, id: _Optional[str] = ..., chunk_id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., kv_source: _Optional[_Union[KvSource, str]] = ..., tokens: _Optional[int] = ...) -> None: ...

class Passages(_message.Message):
    __slots__ = ("passages",)
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    passages: _containers.RepeatedCompositeFieldContainer[Passage]
    def __init__(self, passages: _Optional[_Iterable[_Union[Passage, _Mapping]]] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("id", "chunk_id", "score", "rank")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    id: str
    chunk_id: str
    score: float
    rank: int
    def __init__(self, id: _Optional[str] = ..., chunk_id: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class AskUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "reused_tokens", "recomputed_tokens", "chunks_computed", "tier_hits")
    class TierHitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    TIER_HITS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int
    recomputed_tokens: int
    chunks_computed: int
    tier_hits: _containers.ScalarMap[str, int]
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., reused_tokens: _Optional[int] = ..., recomputed_tokens: _Optional[int] = ..., chunks_computed: _Optional[int] = ..., tier_hits: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AskComplete(_message.Message):
    __slots__ = ("answer", "citations", "finish_reason", "usage", "request_id", "warnings", "mode")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    answer: str
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    finish_reason: _generation_pb2.FinishReason
    usage: AskUsage
    request_id: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    mode: AskMode
    def __init__(self, answer: _Optional[str] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., finish_reason: _Optional[_Union[_generation_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[AskUsage, _Mapping]] = ..., request_id: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[AskMode, str]] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("passages", "chunk", "complete")
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    passages: Passages
    chunk: _generation_pb2.Chunk
    complete: AskComplete
    def __init__(self, passages: _Optional[_Union[Passages, _Mapping]] = ..., chunk: _Optional[_Union[_generation_pb2.Chunk, _Mapping]] = ..., complete: _Optional[_Union[AskComplete, _Mapping]] = ...) -> None: ...

class GetCacheStatsRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("name", "kind", "available", "entries", "bytes", "hits", "misses", "puts", "evictions", "errors", "corrupt", "mismatches", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: TierKind
    available: bool
    entries: int
    bytes: int
    hits: int
    misses: int
    puts: int
    evictions: int
    errors: int
    corrupt: int
    mismatches: int
    detail: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[TierKind, str]] = ..., available: _Optional[bool] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., puts: _Optional[int] = ..., evictions: _Optional[int] = ..., errors: _Optional[int] = ..., corrupt: _Optional[int] = ..., mismatches: _Optional[int] = ..., detail: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetCacheStatsResponse(_message.Message):
    __slots__ = ("hits", "misses", "redis_errors", "tiers", "codec_bits", "codec_group_size", "codec_entropy")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    REDIS_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    CODEC_BITS_FIELD_NUMBER: _ClassVar[int]
    CODEC_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CODEC_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    hits: int
    misses: int
    redis_errors: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    codec_bits: int
    codec_group_size: int
    codec_entropy: bool
    def __init__(self, hits: _Optional[int] = ..., misses: _Optional[int] = ..., redis_errors: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., codec_bits: _Optional[int] = ..., codec_group_size: _Optional[int] = ..., codec_entropy: _Optional[bool] = ...) -> None: ...
