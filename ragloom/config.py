"""Settings: defaults < config file (TOML) < RAGLOOM_* environment < command-line flags."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ragloom.errors import InvalidArgument

BUNDLED_LLM = "smollm2-135m-instruct"


def default_data_dir() -> Path:
    return Path(os.environ.get("RAGLOOM_DATA_DIR", Path.home() / ".cache" / "ragloom"))


def _split_list(sep: str) -> Any:
    """A list setting from the environment: a JSON list, or items separated by `sep`."""

    def split(value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(sep) if item.strip()]
        return value

    return split


class EngineSettings(BaseSettings):
    """What the model runner needs; also usable on its own (offline generation, benchmarks)."""

    model_config = SettingsConfigDict(env_prefix="RAGLOOM_", extra="ignore")

    model: str = Field(BUNDLED_LLM, description="bundled model name, or a local HF model folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    weights: Literal["auto", "float32", "bf16", "int8", "int4"] = Field(
        "auto",
        description="weight format of the linears: auto keeps a GGUF model's 4-bit blocks as int4 "
        "(int8 for wider blocks) on CPU, bf16 dense on CUDA; float32/bf16 dense; "
        "int8/int4 quantized (requantizing what does not map exactly)",
    )
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV block")
    kv_cache_tokens: int = Field(
        16384, ge=16, description="KV cache capacity in tokens, all sequences together (bundled model: 45 KiB each in float32)"
    )
    max_num_seqs: int = Field(32, ge=1, description="sequences decoded together in one step")
    max_num_batched_tokens: int = Field(
        512, ge=16, description="tokens one engine step runs, decodes and prompt chunks together (with "
        "chunked prefill), or prompt tokens prefilled in one step (without)",
    )
    kv_dtype: Literal["auto", "float32", "bf16", "fp16", "int8", "int4"] = Field(
        "auto", description="how the KV cache stores keys and values: auto = the model's dtype; bf16/fp16 "
        "halve float32's memory; int8 (3.8x the tokens per GiB of float32) and int4 (int4 values, int8 "
        "keys: 4.4x) are quantized per token",
    )
    max_prefill_tokens: int = Field(
        4096, ge=16, description="with chunked prefill, prompt tokens a step may run when no request "
        "is decoding (nobody's stream stalls, and larger chunks prefill faster)",
    )
    chunked_prefill: bool = Field(
        True, description="split prompts into chunks that run beside the decodes of other requests, "
        "so that a long prompt never stalls their streams (Sarathi-Serve)",
    )
    max_model_len: int | None = Field(None, description="context limit; default: the model's own")
    constraint_timeout_s: float = Field(
        30.0, gt=0, description="longest a grammar / JSON Schema may take to compile before DEADLINE_EXCEEDED"
    )
    jump_forward: bool = Field(True, description="append the tokens a constraint forces without sampling them")
    overlap_masks: bool = Field(
        True, description="compute constrained sequences' token masks on a worker thread during the forward pass"
    )
    prefix_caching: bool = Field(
        True, description="reuse the KV of earlier requests' full blocks for the same leading tokens"
    )
    speculative: Literal["off", "auto", "lookup", "recycling"] = Field(
        "lookup", description="speculative decoding for plain greedy requests, verified in one forward pass; the "
        "output is plain greedy decoding's. lookup: the tokens that followed the latest earlier occurrence of "
        "the last 2-3 tokens in prompt or output (prompt lookup); recycling: a tree of the model's own top "
        "guesses after each token from earlier steps (Token Recycling); auto: lookup where it matches, else "
        "recycling",
    )
    num_speculative_tokens: int = Field(8, ge=0, le=64, description="most draft tokens verified per step and sequence")
    speculative_max_batch: int = Field(
        4, ge=1, description="speculate only in steps where at most this many sequences decode: a batched "
        "step already shares each weight read, so drafts cost more there than they save",
    )
    # -- admission and bounds (#21): work a request may bring, refused before it costs anything --
    max_queued: int = Field(
        256, ge=1, description="requests waiting for the engine (not yet running); beyond this, Generate, Ask "
        "and Query get RESOURCE_EXHAUSTED (OVERLOADED) with a retry delay estimated from recent throughput",
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="longest prompt in tokens (RESOURCE_EXHAUSTED, REQUEST_TOO_LARGE); "
        "default: the model's context",
    )
    max_constraint_bytes: int = Field(
        256 * 1024, ge=1, description="largest json_schema / lark_grammar / regex, or all choices together, "
        "in UTF-8 bytes (INVALID_ARGUMENT on the field)",
    )
    data_dir: Path = Field(default_factory=default_data_dir)


class Settings(EngineSettings):
    """The server's settings."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    max_concurrent_rpcs: int = Field(64, ge=1, description="beyond this, callers get RESOURCE_EXHAUSTED")
    max_loop_lag_s: float | None = Field(
        None, gt=0, description="while the server's event loop runs more than this many seconds late, new calls "
        "get RESOURCE_EXHAUSTED (OVERLOADED) at once instead of waiting in gRPC's queue; None = off",
    )
    max_sql_running: int = Field(
        4, ge=1, description="ExecuteSql statements running at once; the guard's parse, the reads and the row "
        "encoding share the server's interpreter with its event loop, so more than the cores only queues",
    )
    max_sql_queued: int = Field(
        32, ge=0, description="ExecuteSql calls waiting for a running slot; beyond this, RESOURCE_EXHAUSTED "
        "(OVERLOADED) with a retry delay, before the request is decoded",
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(5.0, ge=0)
    store_url: str | None = Field(
        None, description="SQLAlchemy URL for collections and documents; default: SQLite in data_dir"
    )
    secret_key: SecretStr | None = Field(
        None, description="encrypts the connector URLs (passwords) kept in a shared store (store_url set): a "
        "Fernet key, or any passphrase (its SHA-256 becomes the key); every replica needs the same one. "
        "Env RAGLOOM_SECRET_KEY or the config file; never a flag (command lines are visible to all users)",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (time, level, logger, message, request_id)"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics over HTTP on this port (on the gRPC host); "
        "None = off",
    )
    search_max_k: int = Field(1000, ge=1, le=1000, description="largest k a Search may ask for (at most 1000)")
    ask_max_k: int = Field(50, ge=1, description="most passages an Ask may retrieve (k)")
    sql_max_rows: int = Field(100_000, ge=1, description="largest max_rows of Query and ExecuteSql")
    sql_max_timeout_s: float = Field(300.0, gt=0, description="longest timeout_s of Query and ExecuteSql")

    # -- transport security and API keys (services/auth.py) -------------------------------------
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) of the server: serve TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: mTLS, clients must present a certificate it signed (needs tls_cert)"
    )
    api_keys: Path | None = Field(
        None, description='JSON/YAML key file {"keys": [{"name", "sha256", "scopes"}]}: every call needs a key '
        "(reloaded on SIGHUP)",
    )
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="with api_keys: calls per second each key may make (a key's own rate_per_s "
        "in the key file wins); unset = no limit"
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="calls a key may make at once above its rate; unset = max(1, the rate)"
    )
    insecure: bool = Field(
        False, description="allow listening beyond loopback without TLS and API keys"
    )
    reflection: bool = Field(True, description="serve gRPC server reflection (describes the API to anyone)")

    # -- connector sandbox (connectors/sandbox.py): what RegisterConnector may open --------------
    connector_roots: Annotated[list[Path], NoDecode, BeforeValidator(_split_list(os.pathsep))] = Field(
        default_factory=list, description="folders that connector files, folders and SQLite databases must "
        "resolve under (after symlinks); empty = the data dir and the working directory. Env: a JSON list or "
        "paths separated by os.pathsep",
    )
    connector_hosts: Annotated[list[str], NoDecode, BeforeValidator(_split_list(","))] = Field(
        default_factory=list, description="host[:port] patterns (fnmatch; [ipv6]:port) that PostgreSQL and "
        "MySQL connectors may connect to; empty = loopback only (127.0.0.1, ::1, localhost). Env: a JSON list "
        "or comma-separated",
    )

    # -- chunk KV for Ask (cache/chunk_kv.py): memory -> disk -> Redis --------------------------
    chunk_kv_memory_bytes: int = Field(
        1 << 30, ge=0, description="memory tier of decoded chunk KV (LRU by bytes); 0 = no memory tier"
    )
    chunk_kv_disk_dir: Path | None = Field(None, description="disk tier folder; default: <data_dir>/chunk_kv")
    chunk_kv_disk_bytes: int | None = Field(
        None, ge=0, description="disk tier budget (LRU by last use); None = unbounded"
    )
    chunk_kv_redis_url: str | None = Field(
        None, description="redis://host:port/db of a tier shared by replicas; None = no Redis tier"
    )
    chunk_kv_redis_prefix: str = Field("ragloom:chunk_kv:", description="key prefix of the Redis tier")
    chunk_kv_redis_ttl_s: float | None = Field(None, gt=0, description="expiry of Redis entries; None = none")
    # the codec's own defaults (cache/codec.py CodecConfig): KIVI-style 8-bit, groups of 32
    chunk_kv_codec_bits: Literal[16, 8, 4, 2] = Field(8, description="bits per stored K/V value (16 = no quantization)")
    chunk_kv_codec_group_size: int = Field(32, ge=1, le=65536, description="values sharing one scale and minimum")
    chunk_kv_codec_entropy: bool = Field(False, description="zlib on top of the quantized codes (lossless)")
    ask_mode: Literal["full", "prefix", "blend", "epic"] = Field(
        "blend", description="how Ask builds the prompt's KV from stored chunks when a request names no mode"
    )
    ask_recompute_ratio: float = Field(
        0.15, ge=0.0, le=1.0, description="blend mode: share of reused tokens recomputed when a request names none"
    )

    config_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Flags that are None were not given on the command line and do not override anything."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        raise InvalidArgument(f"config file not found: {path}")

    class _FromFile(Settings):
        config_file = path

    try:
        return Settings.model_validate(_FromFile(**overrides).model_dump())
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidArgument(f"invalid settings: {exc}") from exc
