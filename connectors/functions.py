"""Which SQL functions the guard lets through.

Two lists, because sqlglot sees functions two ways. Functions it knows (COUNT, SUBSTR, DATE_TRUNC,
...) become typed nodes; the few of those that touch files or sequences are denied by name. Any
function it does not know becomes `exp.Anonymous`, and those must be on the dialect's allow list
below: the unknown is refused by default, since an unknown function can read files
(pg_read_file), run SQL (query_to_xml, dblink), sleep or write (nextval, lo_import).

The allow lists only hold ordinary scalar, aggregate and window functions. Adding a name here is
a security decision: check that it cannot read or write anything outside the query's own rows.
"""

from __future__ import annotations

# Refused in every dialect, whatever sqlglot makes of them.
DENIED = frozenset(
    {
        # PostgreSQL: files, large objects, other servers, settings, sessions, sequences, sleep
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir",
        "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "lo_import", "lo_export",
        "lo_get", "lo_put", "lo_from_bytea", "lo_create", "lo_unlink", "lo_open", "lo_write",
        "pg_sleep", "pg_sleep_for", "pg_sleep_until", "current_setting", "set_config",
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
        "pg_advisory_lock", "pg_advisory_xact_lock", "pg_try_advisory_lock", "nextval", "setval",
        "currval", "lastval", "txid_current", "query_to_xml", "query_to_xml_and_xmlschema",
        "table_to_xml", "cursor_to_xml", "database_to_xml", "schema_to_xml", "xpath",
        "pg_logical_emit_message", "pg_notify", "pg_switch_wal", "pg_create_restore_point",
        # MySQL / MariaDB
        "sleep", "benchmark", "load_file", "get_lock", "release_lock", "release_all_locks",
        "is_free_lock", "is_used_lock", "master_pos_wait", "source_pos_wait", "sys_exec", "sys_eval",
        "name_const",
        # SQLite
        "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zeroblob", "randomblob",
        # DuckDB: file readers and SQL-in-a-string
        "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
        "read_json_objects", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects", "read_text",
        "read_blob", "read_xlsx", "glob", "sniff_csv", "query", "query_table", "getenv",
        "parquet_metadata", "parquet_schema", "parquet_file_metadata", "iceberg_scan", "delta_scan",
        "sqlite_scan", "postgres_scan", "mysql_scan", "to_file",
    }
)
# Whole families refused by prefix: remote links and catalog/admin helpers.
DENIED_PREFIXES = ("dblink", "pg_", "lo_", "read_", "duckdb_", "sqlite_", "pragma_")

_COMMON = {
    # arithmetic and text
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "truncate", "mod", "power", "pow", "sqrt",
    "exp", "ln", "log", "log10", "log2", "sign", "pi", "degrees", "radians", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "cot", "greatest", "least", "coalesce", "nullif", "ifnull",
    "length", "char_length", "character_length", "octet_length", "bit_length", "lower", "upper",
    "trim", "ltrim", "rtrim", "lpad", "rpad", "substr", "substring", "left", "right", "replace",
    "reverse", "concat", "concat_ws", "instr", "position", "repeat", "ascii", "chr", "char",
    "initcap", "translate", "format", "md5", "hex",
    # aggregates and windows
    "count", "sum", "avg", "min", "max", "group_concat", "string_agg", "stddev", "stddev_pop",
    "stddev_samp", "variance", "var_pop", "var_samp", "row_number", "rank", "dense_rank",
    "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value",
    # dates
    "date", "time", "now", "current_date", "current_time", "current_timestamp", "extract",
}

ALLOWED: dict[str, frozenset[str]] = {
    "sqlite": frozenset(
        _COMMON
        | {
            "datetime", "julianday", "unixepoch", "strftime", "timediff", "printf", "iif", "typeof",
            "likelihood", "likely", "unlikely", "quote", "soundex", "unicode", "unhex", "total",
            "json", "json_extract", "json_array", "json_object", "json_type", "json_valid",
            "json_array_length", "json_group_array", "json_group_object", "json_quote", "random",
        }
    ),
    "postgres": frozenset(
        _COMMON
        | {
            "btrim", "strpos", "split_part", "regexp_replace", "regexp_match", "regexp_matches",
            "regexp_split_to_array", "regexp_like", "string_to_array", "array_to_string",
            "array_length", "array_agg", "cardinality", "to_char", "to_date", "to_timestamp",
            "to_number", "date_trunc", "date_part", "date_bin", "age", "clock_timestamp",
            "justify_days", "justify_hours", "justify_interval", "make_date", "make_time",
            "make_timestamp", "make_interval", "isfinite", "sha256", "encode", "decode",
            "json_build_object", "jsonb_build_object", "json_build_array", "jsonb_build_array",
            "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "to_json", "to_jsonb",
            "json_extract_path_text", "jsonb_extract_path_text", "json_array_length",
            "jsonb_array_length", "json_typeof", "jsonb_typeof", "row_to_json", "bool_and",
            "bool_or", "every", "corr", "covar_pop", "covar_samp", "regr_slope", "regr_intercept",
            "percentile_cont", "percentile_disc", "mode", "width_bucket", "div", "cbrt", "factorial",
            "gcd", "lcm", "random", "unnest", "num_nonnulls", "num_nulls", "quote_ident",
            "quote_literal", "starts_with",
        }
    ),
    "mysql": frozenset(
        _COMMON
        | {
            "if", "lcase", "ucase", "locate", "substring_index", "field", "find_in_set", "elt",
            "space", "unhex", "sha1", "sha2", "date_format", "str_to_date", "datediff", "date_add",
            "date_sub", "adddate", "subdate", "timestampdiff", "timestampadd", "year", "month",
            "day", "dayofmonth", "dayofweek", "dayofyear", "dayname", "monthname", "week",
            "weekofyear", "weekday", "quarter", "hour", "minute", "second", "last_day", "curdate",
            "curtime", "sysdate", "unix_timestamp", "from_unixtime", "makedate", "maketime",
            "to_days", "from_days", "period_diff", "time_format", "time_to_sec", "sec_to_time",
            "timediff", "convert_tz", "std", "bit_and", "bit_or", "bit_xor", "json_extract",
            "json_unquote", "json_object", "json_array", "json_length", "json_keys",
            "json_contains", "json_arrayagg", "json_objectagg", "json_value", "rand", "crc32",
            "regexp_replace", "regexp_substr", "regexp_instr", "oct", "bin", "conv",
        }
    ),
    "duckdb": frozenset(
        _COMMON
        | {
            "strftime", "strptime", "date_part", "datepart", "date_trunc", "datetrunc", "date_diff",
            "datediff", "date_sub", "date_add", "year", "month", "day", "dayname", "monthname",
            "dayofweek", "dayofyear", "week", "weekofyear", "quarter", "hour", "minute", "second",
            "epoch", "epoch_ms", "make_date", "make_time", "make_timestamp", "last_day", "age",
            "to_timestamp", "today", "string_split", "str_split", "split_part", "regexp_replace",
            "regexp_matches", "regexp_extract", "regexp_full_match", "contains", "starts_with",
            "ends_with", "prefix", "suffix", "strpos", "list", "list_value", "array_agg",
            "list_aggregate", "list_sort", "list_distinct", "len", "array_length", "median",
            "quantile", "quantile_cont", "quantile_disc", "mode", "approx_count_distinct",
            "arg_max", "arg_min", "argmax", "argmin", "max_by", "min_by", "bool_and", "bool_or",
            "corr", "covar_pop", "covar_samp", "product", "histogram", "first", "last", "any_value",
            "fsum", "favg", "ifnull", "nullif", "if", "typeof", "isnan", "isinf", "isfinite",
            "bit_count", "even", "gcd", "lcm", "factorial", "cbrt", "random", "hash", "sha256",
            "levenshtein", "jaccard", "jaro_winkler_similarity", "damerau_levenshtein", "lcase",
            "ucase", "array_to_string", "list_contains", "list_has", "unnest", "struct_pack",
            "json_extract", "json_extract_string", "to_json", "json_array_length", "bar",
            "format_bytes", "century", "decade", "millennium", "isodow", "isoyear", "yearweek",
            "time_bucket", "timezone",
        }
    ),
}


def is_denied(name: str) -> bool:
    low = name.lower()
    return low in DENIED or low.startswith(DENIED_PREFIXES)


def is_allowed_anonymous(name: str, dialect: str) -> bool:
    """An exp.Anonymous call may run only if the dialect's allow list names it (and it isn't denied)."""
    low = name.lower()
    return not is_denied(low) and low in ALLOWED.get(dialect, _COMMON)
