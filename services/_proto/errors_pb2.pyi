from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    INVALID_FIELD: _ClassVar[ErrorReason]
    SCHEMA_INVALID: _ClassVar[ErrorReason]
    SCHEMA_KEYWORD_UNSUPPORTED: _ClassVar[ErrorReason]
    GRAMMAR_INVALID: _ClassVar[ErrorReason]
    SQL_INVALID: _ClassVar[ErrorReason]
    CONNECTOR_URL_INVALID: _ClassVar[ErrorReason]
    SQL_NOT_READ_ONLY: _ClassVar[ErrorReason]
    CONNECTOR_NOT_ALLOWED: _ClassVar[ErrorReason]
    SCOPE_MISSING: _ClassVar[ErrorReason]
    API_KEY_INVALID: _ClassVar[ErrorReason]
    MODEL_NOT_FOUND: _ClassVar[ErrorReason]
    COLLECTION_NOT_FOUND: _ClassVar[ErrorReason]
    CONNECTOR_NOT_FOUND: _ClassVar[ErrorReason]
    FILE_NOT_FOUND: _ClassVar[ErrorReason]
    NOT_FOUND: _ClassVar[ErrorReason]
    COLLECTION_EXISTS: _ClassVar[ErrorReason]
    CONNECTOR_EXISTS: _ClassVar[ErrorReason]
    ALREADY_EXISTS: _ClassVar[ErrorReason]
    OVERLOADED: _ClassVar[ErrorReason]
    REQUEST_TOO_LARGE: _ClassVar[ErrorReason]
    RATE_LIMITED: _ClassVar[ErrorReason]
    DEADLINE_EXCEEDED: _ClassVar[ErrorReason]
    CONSTRAINT_COMPILE_TIMEOUT: _ClassVar[ErrorReason]
    SQL_TIMEOUT: _ClassVar[ErrorReason]
    SERVER_UNAVAILABLE: _ClassVar[ErrorReason]
    DATABASE_UNAVAILABLE: _ClassVar[ErrorReason]
    FAILED_PRECONDITION: _ClassVar[ErrorReason]
    MODEL_UNAVAILABLE: _ClassVar[ErrorReason]
    CANCELLED: _ClassVar[ErrorReason]
    UNIMPLEMENTED: _ClassVar[ErrorReason]
    INTERNAL: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
INVALID_FIELD: ErrorReason
SCHEMA_INVALID: ErrorReason
SCHEMA_KEYWORD_UNSUPPORTED: ErrorReason
GRAMMAR_INVALID: ErrorReason
SQL_INVALID: ErrorReason
CONNECTOR_URL_INVALID: ErrorReason
SQL_NOT_READ_ONLY: ErrorReason
CONNECTOR_NOT_ALLOWED: ErrorReason
SCOPE_MISSING: ErrorReason
API_KEY_INVALID: ErrorReason
MODEL_NOT_FOUND: ErrorReason
COLLECTION_NOT_FOUND: ErrorReason
CONNECTOR_NOT_FOUND: ErrorReason
FILE_NOT_FOUND: ErrorReason
NOT_FOUND: ErrorReason
COLLECTION_EXISTS: ErrorReason
CONNECTOR_EXISTS: ErrorReason
ALREADY_EXISTS: ErrorReason
OVERLOADED: ErrorReason
REQUEST_TOO_LARGE: ErrorReason
RATE_LIMITED: ErrorReason
DEADLINE_EXCEEDED: ErrorReason
CONSTRAINT_COMPILE_TIMEOUT: ErrorReason
SQL_TIMEOUT: ErrorReason
SERVER_UNAVAILABLE: ErrorReason
DATABASE_UNAVAILABLE: ErrorReason
FAILED_PRECONDITION: ErrorReason
MODEL_UNAVAILABLE: ErrorReason
CANCELLED: ErrorReason
UNIMPLEMENTED: ErrorReason
INTERNAL: ErrorReason
