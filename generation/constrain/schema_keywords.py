"""JSON Schema keywords as the compiler sorts them: annotations, keywords whose values are subschemas
(for `$id` and anchor discovery), every keyword it knows, the metaschemas it accepts, the JSON types.
The exact support of each keyword is described in `jsonschema.py`."""

from __future__ import annotations

ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "$defs",
        "definitions",
    }
)

# keywords whose value is a schema / list of schemas / map of schemas (for $id and anchor discovery)
SINGLE_KW = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
)
LIST_KW = ("allOf", "anyOf", "oneOf", "prefixItems")
MAP_KW = ("$defs", "definitions", "properties", "patternProperties", "dependentSchemas")

KNOWN = frozenset(
    ANNOTATIONS
    | set(SINGLE_KW)
    | set(LIST_KW)
    | set(MAP_KW)
    | {
        "type",
        "enum",
        "const",
        "required",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "$ref",
        "$dynamicRef",
        "dependencies",
    }
)

METASCHEMAS_2020 = frozenset(
    {"https://json-schema.org/draft/2020-12/schema", "http://json-schema.org/draft/2020-12/schema"}
)
METASCHEMAS = METASCHEMAS_2020 | frozenset(
    {
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-04/schema",
    }
)

TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
