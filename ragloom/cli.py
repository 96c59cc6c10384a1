"""The `ragloom` command: serve, generate, models.

Errors print one line to stderr and exit 1 (2 for usage errors, from argparse); no tracebacks
unless RAGLOOM_DEBUG=1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ragloom.client import DEFAULT_ADDRESS
from ragloom.errors import DeadlineExceeded, RagloomError

_EPILOG = "Settings precedence: defaults < --config TOML file < RAGLOOM_* environment < flags."


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
        help="run the gRPC server (Generation, health, reflection) until SIGTERM/Ctrl-C",
        description="Load the model and serve the gRPC API. Prints 'ragloom: serving MODEL on HOST:PORT' "
        "once ready (with --port 0, the port actually bound).",
        epilog=_EPILOG,
    )
    _add_config(serve)
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, help="port to bind (default 50051; 0 picks a free port)")
    serve.add_argument("--data-dir", type=Path, help="model conversion cache and data (default ~/.cache/ragloom)")
    serve.add_argument("--model", help="bundled model name or a local HF model folder (see `ragloom models`)")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")

    gen = sub.add_parser(
        "generate",
        help="generate text from a prompt, via a server or in-process (--local)",
        description="Send PROMPT as a user chat message (or raw text with --raw) and print the answer.",
        epilog=_EPILOG,
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
    _add_config(gen)
    gen.add_argument("--model", help="(--local) model to load")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(--local) where the model runs")
    gen.add_argument("--data-dir", type=Path, help="(--local) model conversion cache")

    models = sub.add_parser(
        "models",
        help="list bundled and cached models",
        description="List the models ragloom can serve and whether each is converted/cached locally.",
        epilog=_EPILOG,
    )
    _add_config(models)
    models.add_argument("--data-dir", type=Path, help="model conversion cache (default ~/.cache/ragloom)")
    return parser


# -- commands ----------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from ragloom.config import load_settings
    from ragloom.services.server import serve

    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        model=args.model,
        device=args.device,
        log_level=args.log_level,
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(settings))
    return 0


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}


def _input(args: argparse.Namespace) -> dict[str, object]:
    if args.raw:
        return {"prompt": args.prompt}
    return {"messages": [{"role": "user", "content": args.prompt}]}


def _print_usage(finish_reason: str | None, prompt: int, completion: int, cached: int) -> None:
    print(
        f"[finish_reason={finish_reason} prompt_tokens={prompt} completion_tokens={completion} cached_tokens={cached}]",
        file=sys.stderr,
    )


def _cmd_generate_remote(args: argparse.Namespace) -> int:
    from ragloom.client import Client

    with Client(args.address, timeout=args.timeout) as client:
        if args.stream:
            s = client.stream(**_input(args), **_sampling(args))  # type: ignore[arg-type]
            with s:
                for chunk in s:
                    print(chunk.text, end="", flush=True)
            print()
            result = s.completion
        else:
            result = client.generate(**_input(args), **_sampling(args))  # type: ignore[arg-type]
            print(result.text)
    if args.usage and result is not None:
        u = result.usage
        _print_usage(result.finish_reason, u.prompt_tokens, u.completion_tokens, u.cached_tokens)
    return 0


async def _generate_local(args: argparse.Namespace) -> int:
    import uuid

    from ragloom.config import load_settings
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.generation.runner.engine import LLMEngine, Request
    from ragloom.generation.runner.params import SamplingParams

    settings = load_settings(args.config, data_dir=args.data_dir, model=args.model, device=args.device)
    llm = await asyncio.to_thread(LLMEngine, settings)
    sampling = {k: v for k, v in _sampling(args).items() if v is not None}
    params = SamplingParams(**sampling)  # type: ignore[arg-type]
    params.validate(llm.vocab_size)
    ids = llm.encode(**_input(args))  # type: ignore[arg-type]
    engine = AsyncEngine(llm)
    await engine.start()
    last = None
    texts: list[str] = []
    try:
        async with asyncio.timeout(args.timeout):
            async for out in engine.generate(Request(uuid.uuid4().hex, ids, params)):
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
        _print_usage(last.finish_reason, last.prompt_tokens, last.completion_tokens, last.cached_tokens)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.local:
        return asyncio.run(_generate_local(args))
    return _cmd_generate_remote(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from ragloom.config import load_settings
    from ragloom.models import list_models

    settings = load_settings(args.config, data_dir=args.data_dir)
    infos = list_models(settings.data_dir)
    width = max(len(m.name) for m in infos) if infos else 4
    print(f"{'NAME':<{width}}  {'SOURCE':<8}  {'CACHED':<6}  DESCRIPTION")
    for m in infos:
        print(f"{m.name:<{width}}  {m.source:<8}  {'yes' if m.cached else 'no':<6}  {m.description}")
        print(f"{'':<{width}}  path: {m.path}")
    return 0


_COMMANDS = {"serve": _cmd_serve, "generate": _cmd_generate, "models": _cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
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
