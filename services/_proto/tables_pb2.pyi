import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SqlDialect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SQL_DIALECT_UNSPECIFIED: _ClassVar[SqlDialect]
    SQL_DIALECT_SQLITE: _ClassVar[SqlDialect]
    SQL_DIALECT_POSTGRES: _ClassVar[SqlDialect]
    SQL_DIALECT_MYSQL: _ClassVar[SqlDialect]
    SQL_DIALECT_DUCKDB: _ClassVar[SqlDialect]

class CellKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CELL_KIND_UNSPECIFIED: _ClassVar[CellKind]
    CELL_KIND_INT: _ClassVar[CellKind]
    CELL_KIND_DOUBLE: _ClassVar[CellKind]
    CELL_KIND_DECIMAL: _ClassVar[CellKind]
    CELL_KIND_STRING: _ClassVar[CellKind]
    CELL_KIND_BYTES: _ClassVar[CellKind]
    CELL_KIND_BOOL: _ClassVar[CellKind]
    CELL_KIND_TIMESTAMP: _ClassVar[CellKind]
    CELL_KIND_DATETIME: _ClassVar[CellKind]
    CELL_KIND_DATE: _ClassVar[CellKind]
    CELL_KIND_TIME: _ClassVar[CellKind]
    CELL_KIND_JSON: _ClassVar[CellKind]

class QueryMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_MODE_UNSPECIFIED: _ClassVar[QueryMode]
    QUERY_MODE_SQL: _ClassVar[QueryMode]
    QUERY_MODE_TABLE: _ClassVar[QueryMode]
    QUERY_MODE_AUTO: _ClassVar[QueryMode]

class GroundingKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUNDING_KIND_UNSPECIFIED: _ClassVar[GroundingKind]
    GROUNDING_KIND_EXACT: _ClassVar[GroundingKind]
    GROUNDING_KIND_ABBREVIATION: _ClassVar[GroundingKind]
    GROUNDING_KIND_FUZZY: _ClassVar[GroundingKind]
    GROUNDING_KIND_PARTIAL: _ClassVar[GroundingKind]
SQL_DIALECT_UNSPECIFIED: SqlDialect
SQL_DIALECT_SQLITE: SqlDialect
SQL_DIALECT_POSTGRES: SqlDialect
SQL_DIALECT_MYSQL: SqlDialect
SQL_DIALECT_DUCKDB: SqlDialect
CELL_KIND_UNSPECIFIED: CellKind
CELL_KIND_INT: CellKind
CELL_KIND_DOUBLE: CellKind
CELL_KIND_DECIMAL: CellKind
CELL_KIND_STRING: CellKind
CELL_KIND_BYTES: CellKind
CELL_KIND_BOOL: CellKind
CELL_KIND_TIMESTAMP: CellKind
CELL_KIND_DATETIME: CellKind
CELL_KIND_DATE: CellKind
CELL_KIND_TIME: CellKind
CELL_KIND_JSON: CellKind
QUERY_MODE_UNSPECIFIED: QueryMode
QUERY_MODE_SQL: QueryMode
QUERY_MODE_TABLE: QueryMode
QUERY_MODE_AUTO: QueryMode
GROUNDING_KIND_UNSPECIFIED: GroundingKind
GROUNDING_KIND_EXACT: GroundingKind
GROUNDING_KIND_ABBREVIATION: GroundingKind
GROUNDING_KIND_FUZZY: GroundingKind
GROUNDING_KIND_PARTIAL: GroundingKind

class RegisterConnectorRequest(_message.Message):
    __slots__ = ("request_id", "name", "url", "replace")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    url: str
    replace: bool
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ..., url: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class ConnectorInfo(_message.Message):
    __slots__ = ("name", "url", "dialect", "tables", "examples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    dialect: SqlDialect
    tables: int
    examples: int
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., dialect: _Optional[_Union[SqlDialect, str]] = ..., tables: _Optional[int] = ..., examples: _Optional[int] = ...) -> None: ...

class RegisterConnectorResponse(_message.Message):
    __slots__ = ("connector",)
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    connector: ConnectorInfo
    def __init__(self, connector: _Optional[_Union[ConnectorInfo, _Mapping]] = ...) -> None: ...

class ListConnectorsRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ListConnectorsResponse(_message.Message):
    __slots__ = ("connectors",)
    CONNECTORS_FIELD_NUMBER: _ClassVar[int]
    connectors: _containers.RepeatedCompositeFieldContainer[ConnectorInfo]
    def __init__(self, connectors: _Optional[_Iterable[_Union[ConnectorInfo, _Mapping]]] = ...) -> None: ...

class RemoveConnectorRequest(_message.Message):
    __slots__ = ("request_id", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RemoveConnectorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeSchemaRequest(_message.Message):
    __slots__ = ("request_id", "connector", "refresh")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    connector: str
    refresh: bool
    def __init__(self, request_id: _Optional[str] = ..., connector: _Optional[str] = ..., refresh: _Optional[bool] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("null_value", "int_value", "double_value", "decimal_value", "string_value", "bytes_value", "bool_value", "timestamp_value", "datetime_value", "date_value", "time_value", "json_value")
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    DATETIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    DATE_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    JSON_VALUE_FIELD_NUMBER: _ClassVar[int]
    null_value: _struct_pb2.NullValue
    int_value: int
    double_value: float
    decimal_value: str
    string_value: str
    bytes_value: bytes
    bool_value: bool
    timestamp_value: _timestamp_pb2.Timestamp
    datetime_value: str
    date_value: str
    time_value: str
    json_value: str
    def __init__(self, null_value: _Optional[_Union[_struct_pb2.NullValue, str]] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., decimal_value: _Optional[str] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ..., bool_value: _Optional[bool] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., datetime_value: _Optional[str] = ..., date_value: _Optional[str] = ..., time_value: _Optional[str] = ..., json_value: _Optional[str] = ...) -> None: ...

class ColumnInfo(_message.Message):
    __slots__ = ("name", "type", "nullable", "primary_key", "description", "samples", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    nullable: bool
    primary_key: bool
    description: str
    samples: _containers.RepeatedCompositeFieldContainer[Cell]
    kind: CellKind
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., nullable: _Optional[bool] = ..., primary_key: _Optional[bool] = ..., description: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., kind: _Optional[_Union[CellKind, str]] = ...) -> None: ...

class ForeignKeyInfo(_message.Message):
    __slots__ = ("columns", "ref_table", "ref_columns")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    REF_TABLE_FIELD_NUMBER: _ClassVar[int]
    REF_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    ref_table: str
    ref_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., ref_table: _Optional[str] = ..., ref_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "columns", "primary_key", "foreign_keys", "row_count", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_KEYS_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedCompositeFieldContainer[ColumnInfo]
    primary_key: _containers.RepeatedScalarFieldContainer[str]
    foreign_keys: _containers.RepeatedCompositeFieldContainer[ForeignKeyInfo]
    row_count: int
    description: str
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[ColumnInfo, _Mapping]]] = ..., primary_key: _Optional[_Iterable[str]] = ..., foreign_keys: _Optional[_Iterable[_Union[ForeignKeyInfo, _Mapping]]] = ..., row_count: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class DescribeSchemaResponse(_message.Message):
    __slots__ = ("connector", "dialect", "tables")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    connector: str
    dialect: SqlDialect
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    def __init__(self, connector: _Optional[str] = ..., dialect: _Optional[_Union[SqlDialect, str]] = ..., tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ...) -> None: ...

class AddExampleRequest(_message.Message):
    __slots__ = ("request_id", "connector", "question", "sql")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    connector: str
    question: str
    sql: str
    def __init__(self, request_id: _Optional[str] = ..., connector: _Optional[str] = ..., question: _Optional[str] = ..., sql: _Optional[str] = ...) -> None: ...

class AddExampleResponse(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: int
    def __init__(self, examples: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("request_id", "connector", "question", "mode", "link", "grammar", "self_correct", "max_rows", "timeout_s", "instructions", "sampling", "batch_rows", "ground_values")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    SELF_CORRECT_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    GROUND_VALUES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    connector: str
    question: str
    mode: QueryMode
    link: bool
    grammar: bool
    self_correct: bool
    max_rows: int
    timeout_s: float
    instructions: str
    sampling: _generation_pb2.SamplingParams
    batch_rows: int
    ground_values: bool
    def __init__(self, request_id: _Optional[str] = ..., connector: _Optional[str] = ..., question: _Optional[str] = ..., mode: _Optional[_Union[QueryMode, str]] = ..., link: _Optional[bool] = ..., grammar: _Optional[bool] = ..., self_correct: _Optional[bool] = ..., max_rows: _Optional[int] = ..., timeout_s: _Optional[float] = ..., instructions: _Optional[str] = ..., sampling: _Optional[_Union[_generation_pb2.SamplingParams, _Mapping]] = ..., batch_rows: _Optional[int] = ..., ground_values: _Optional[bool] = ...) -> None: ...

class ExecuteSqlRequest(_message.Message):
    __slots__ = ("request_id", "connector", "sql", "max_rows", "timeout_s", "batch_rows")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    connector: str
    sql: str
    max_rows: int
    timeout_s: float
    batch_rows: int
    def __init__(self, request_id: _Optional[str] = ..., connector: _Optional[str] = ..., sql: _Optional[str] = ..., max_rows: _Optional[int] = ..., timeout_s: _Optional[float] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    kind: CellKind
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., kind: _Optional[_Union[CellKind, str]] = ...) -> None: ...

class GroundedValue(_message.Message):
    __slots__ = ("table", "column", "value", "span", "score", "kind")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    table: str
    column: str
    value: str
    span: str
    score: float
    kind: GroundingKind
    def __init__(self, table: _Optional[str] = ..., column: _Optional[str] = ..., value: _Optional[str] = ..., span: _Optional[str] = ..., score: _Optional[float] = ..., kind: _Optional[_Union[GroundingKind, str]] = ...) -> None: ...

class QueryHeader(_message.Message):
    __slots__ = ("sql", "columns", "tables", "linked_tables", "request_id", "grounded_values")
    SQL_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    LINKED_TABLES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GROUNDED_VALUES_FIELD_NUMBER: _ClassVar[int]
    sql: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    tables: _containers.RepeatedScalarFieldContainer[str]
    linked_tables: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    grounded_values: _containers.RepeatedCompositeFieldContainer[GroundedValue]
    def __init__(self, sql: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., tables: _Optional[_Iterable[str]] = ..., linked_tables: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., grounded_values: _Optional[_Iterable[_Union[GroundedValue, _Mapping]]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class RowBatch(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    def __init__(self, rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ...) -> None: ...

class QueryUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "seconds")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class QueryComplete(_message.Message):
    __slots__ = ("sql", "row_count", "truncated", "attempts", "valid", "error", "mode", "answer", "failed_sql", "usage", "columns")
    SQL_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    FAILED_SQL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    row_count: int
    truncated: bool
    attempts: int
    valid: bool
    error: str
    mode: QueryMode
    answer: str
    failed_sql: _containers.RepeatedScalarFieldContainer[str]
    usage: QueryUsage
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    def __init__(self, sql: _Optional[str] = ..., row_count: _Optional[int] = ..., truncated: _Optional[bool] = ..., attempts: _Optional[int] = ..., valid: _Optional[bool] = ..., error: _Optional[str] = ..., mode: _Optional[_Union[QueryMode, str]] = ..., answer: _Optional[str] = ..., failed_sql: _Optional[_Iterable[str]] = ..., usage: _Optional[_Union[QueryUsage, _Mapping]] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("header", "rows", "complete")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    header: QueryHeader
    rows: RowBatch
    complete: QueryComplete
    def __init__(self, header: _Optional[_Union[QueryHeader, _Mapping]] = ..., rows: _Optional[_Union[RowBatch, _Mapping]] = ..., complete: _Optional[_Union[QueryComplete, _Mapping]] = ...) -> None: ...

class ExecuteSqlResponse(_message.Message):
    __slots__ = ("header", "rows", "complete")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    header: QueryHeader
    rows: RowBatch
    complete: QueryComplete
    def __init__(self, header: _Optional[_Union[QueryHeader, _Mapping]] = ..., rows: _Optional[_Union[RowBatch, _Mapping]] = ..., complete: _Optional[_Union[QueryComplete, _Mapping]] = ...) -> None: ...
