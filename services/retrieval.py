"""The `ragloom.v1.Retrieval` servicer: protobuf in, CollectionManager calls, protobuf back.

The CollectionManager is synchronous and may be slow (embedding, index writes), so every call
runs in a worker thread (`asyncio.to_thread`) and the event loop keeps serving other RPCs.
Errors come from the library as RagloomError and become status codes in services/status.py,
as in services/generation.py. A cancelled call stops waiting, but a call already running in a
worker thread finishes there (an Upsert batch is stored or not as a whole).

`Upsert(precompute_kv=true)` hands the upserted documents to a `precompute(collection, doc_ids)`
callback once every batch is stored (the Rag service's, which prefills their chunk KV on the
engine thread); a server without one (no model) refuses it with FAILED_PRECONDITION up front.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from ragloom.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from ragloom.retrieval.collections import CollectionInfo, CollectionManager, Document, Hit
from ragloom.services._proto import retrieval_pb2 as pb
from ragloom.services._proto import retrieval_pb2_grpc as pb_grpc
from ragloom.services.status import unary
from ragloom.structs import dict_to_struct, struct_to_dict

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Retrieval"].full_name  # "ragloom.v1.Retrieval"

DEFAULT_K = 10


def info_to_proto(info: CollectionInfo) -> pb.CollectionInfo:
    msg = pb.CollectionInfo(
        name=info.name,
        dim=int(info.dim or 0),
        model=info.model or "",
        documents=int(info.documents),
        chunks=int(info.chunks),
        index=info.index or "",
        index_requested=info.index_requested or "",
        chunk_tokens=info.chunk_tokens,
        chunk_overlap=info.chunk_overlap,
        metadata=dict_to_struct(info.metadata),
    )
    if info.created_at is not None:
        msg.created_at.FromDatetime(info.created_at)
    return msg


def hit_to_proto(hit: Hit) -> pb.Hit:
    return pb.Hit(
        id=hit.id,
        chunk_id=str(hit.chunk_id),
        score=float(hit.score),
        text=hit.text,
        metadata=dict_to_struct(hit.metadata),
    )


def documents_from_proto(msgs: Sequence[pb.Document]) -> tuple[list[Document], np.ndarray | None]:
    """Documents of one UpsertRequest, plus their vectors when the batch carries them."""
    docs = [Document(id=m.id, text=m.text, metadata=struct_to_dict(m.metadata)) for m in msgs]
    with_vectors = sum(1 for m in msgs if m.vector)
    if with_vectors == 0:
        return docs, None
    if with_vectors != len(msgs):
        raise InvalidArgument(
            f"{with_vectors} of {len(msgs)} documents in this batch carry a vector: either all or none must"
        )
    sizes = {len(m.vector) for m in msgs}
    if len(sizes) != 1:
        raise InvalidArgument(f"vectors in one batch must have one length, got {sorted(sizes)}")
    return docs, np.asarray([list(m.vector) for m in msgs], dtype=np.float32)


# (collection, document ids) -> chunks whose KV was computed
Precompute = Callable[[str, Sequence[str]], Awaitable[int]]


class RetrievalServicer(pb_grpc.RetrievalServicer):
    def __init__(self, collections: CollectionManager, precompute: Precompute | None = None) -> None:
        self._mgr = collections
        self._precompute = precompute

    # -- collections -----------------------------------------------------------------------

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        async def work() -> pb.CreateCollectionResponse:
            options: dict[str, Any] = {"index": request.index or "auto"}
            for name in ("chunk_tokens", "chunk_overlap"):
                if request.HasField(name):
                    options[name] = getattr(request, name)
            if request.HasField("metadata"):
                options["metadata"] = struct_to_dict(request.metadata)
            info = await asyncio.to_thread(self._mgr.create_collection, request.name, **options)
            log.info("created collection %r (index=%s, dim=%s)", info.name, info.index_requested, info.dim)
            return pb.CreateCollectionResponse(collection=info_to_proto(info))

        return await unary("CreateCollection", context, work)

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCollectionResponse:
        async def work() -> pb.DeleteCollectionResponse:
            await asyncio.to_thread(self._mgr.delete_collection, request.name)
            log.info("deleted collection %r", request.name)
            return pb.DeleteCollectionResponse()

        return await unary("DeleteCollection", context, work)

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        async def work() -> pb.ListCollectionsResponse:
            infos = await asyncio.to_thread(self._mgr.list_collections)
            return pb.ListCollectionsResponse(collections=[info_to_proto(i) for i in infos])

        return await unary("ListCollections", context, work)

    # -- documents -------------------------------------------------------------------------

    async def _open(self, name: str, create_if_missing: bool) -> None:
        """Check that the collection exists (NotFound otherwise), creating it if asked to."""
        if create_if_missing:
            try:
                await asyncio.to_thread(self._mgr.create_collection, name)
                log.info("created collection %r (Upsert create_if_missing)", name)
                return
            except AlreadyExists:
                pass
        await asyncio.to_thread(self._mgr.get_collection, name)

    async def Upsert(
        self, request_iterator: AsyncIterator[pb.UpsertRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertResponse:
        async def work() -> pb.UpsertResponse:
            totals = {"documents": 0, "chunks": 0}
            name: str | None = None
            precompute = False
            doc_ids: list[str] = []
            async for req in request_iterator:
                if name is None:
                    if not req.collection:
                        raise InvalidArgument("the first UpsertRequest must name the collection")
                    precompute = req.precompute_kv
                    if precompute and self._precompute is None:
                        raise FailedPrecondition("precompute_kv needs a server with a model loaded; this one has none")
                    name = req.collection
                    await self._open(name, req.create_if_missing)
                elif req.collection and req.collection != name:
                    raise InvalidArgument(
                        f"this Upsert stream writes to {name!r}; a later message names {req.collection!r}"
                    )
                if not req.documents:
                    continue
                docs, vectors = documents_from_proto(req.documents)
                if vectors is None:
                    result = await asyncio.to_thread(self._mgr.upsert, name, docs)
                else:
                    result = await asyncio.to_thread(self._mgr.upsert_vectors, name, docs, vectors)
                totals["documents"] += result.documents
                totals["chunks"] += result.chunks
                if precompute:
                    doc_ids.extend(d.id for d in docs)
            if name is None:
                raise InvalidArgument("empty Upsert stream: the first message must name the collection")
            log.info("Upsert %r: %d documents, %d chunks", name, totals["documents"], totals["chunks"])
            kv = 0
            if precompute and doc_ids:
                assert self._precompute is not None
                kv = await self._precompute(name, doc_ids)
            return pb.UpsertResponse(**totals, kv_precomputed=kv)

        return await unary("Upsert", context, work)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        async def work() -> pb.DeleteResponse:
            deleted = await asyncio.to_thread(self._mgr.delete, request.collection, list(request.ids))
            return pb.DeleteResponse(deleted=deleted)

        return await unary("Delete", context, work)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async def work() -> pb.SearchResponse:
            hits = await asyncio.to_thread(
                self._mgr.search,
                request.collection,
                request.query,
                k=request.k if request.HasField("k") else DEFAULT_K,
                filter=struct_to_dict(request.filter) or None,
                oversample=request.oversample if request.HasField("oversample") else None,
            )
            return pb.SearchResponse(hits=[hit_to_proto(h) for h in hits])

        return await unary("Search", context, work)
