"""ragloom: retrieval, cached-chunk RAG, structured generation and text-to-SQL over gRPC."""

from ragloom.errors import RagloomError

__version__ = "0.1.0"

__all__ = ["RagloomError", "__version__", "Client", "AsyncClient"]


def __getattr__(name: str):  # lazy: importing ragloom must not pull in grpc stubs or torch
    if name in ("Client", "AsyncClient"):
        from ragloom import client

        return getattr(client, name)
    raise AttributeError(name)
