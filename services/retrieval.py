"""The `ragloom.v1.Retrieval` servicer: protobuf in, CollectionManager calls, protobuf back.

The CollectionManager is synchronous and may be slow (embedding, index writes), so every call
runs in a worker thread (`asyncio.to_thread`) and the event loop keeps serving other RPCs.
Errors come from the library as RagloomError and become status codes in services/status.py,
as in services/generation.py.

`Upsert` is one UpsertTransaction per call (retrieval/upsert.py): each message's documents are
embedded and staged in a worker thread (acknowledged when the first message asked for
`progress`), and the half-close commits them all. When the call ends any other way (client
cancel, deadline, error, server shutdown) the transaction is rolled back, which also stops a
batch still embedding in its thread at its next embedder batch: nothing of the call is stored.

`Upsert(precompute_kv=true)` hands the upserted documents to a `precompute(collection, doc_ids)`
callback once the call has committed (the Rag service's, which prefills their chunk KV on the
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
from ragloom.retrieval.upsert import UpsertTransaction
from ragloom.services._proto import retrieval_pb2 as pb
from ragloom.services._proto import retrieval_pb2_grpc as pb_grpc
from ragloom.services.status import failure_status, unary
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


def _rolled_back(tx: UpsertTransaction | None) -> str:
    return "" if tx is None or tx.state == "committed" else "; rolled back, nothing stored"


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
    ) -> AsyncIterator[pb.UpsertResponse]:
        # context.abort() raises, so it is called outside the try (as in generation.py)
        failure: tuple[grpc.StatusCode, str] | None = None
        tx: UpsertTransaction | None = None
        what = "Upsert"
        try:
            progress = precompute = False
            acked = 0
            async for req in request_iterator:
                if progress and tx is not None and acked < tx.documents:
                    # The previous batch is staged and another message came: acknowledge it. The
                    # last batch is acknowledged by the commit, so the counts reach the call's total
                    # only with committed=true (a bar at 100% means stored).
                    acked = tx.documents
                    yield pb.UpsertResponse(documents=tx.documents, chunks=tx.chunks)
                if tx is None:
                    if not req.collection:
                        raise InvalidArgument("the first UpsertRequest must name the collection")
                    precompute, progress = req.precompute_kv, req.progress
                    if precompute and self._precompute is None:
                        raise FailedPrecondition("precompute_kv needs a server with a model loaded; this one has none")
                    what = f"Upsert {req.collection!r}"
                    await self._open(req.collection, req.create_if_missing)
                    tx = await asyncio.to_thread(self._mgr.begin_upsert, req.collection)
                elif req.collection and req.collection != tx.name:
                    raise InvalidArgument(
                        f"this Upsert stream writes to {tx.name!r}; a later message names {req.collection!r}"
                    )
                if not req.documents:
                    continue
                assert tx is not None  # opened by the first message
                docs, vectors = documents_from_proto(req.documents)
                if vectors is None:
                    await asyncio.to_thread(tx.add, docs)
                else:
                    await asyncio.to_thread(tx.add_vectors, docs, vectors)
            if tx is None:
                raise InvalidArgument("empty Upsert stream: the first message must name the collection")
            result = await asyncio.to_thread(tx.commit)
            log.info("Upsert %r: committed %d documents, %d chunks", tx.name, result.documents, result.chunks)
            done = pb.UpsertResponse(documents=result.documents, chunks=result.chunks, committed=True)
            if precompute and tx.documents:
                if progress:  # the data is stored whatever precomputing does next
                    yield done
                assert self._precompute is not None
                done.kv_precomputed = await self._precompute(tx.name, list(tx.document_ids))
            yield done
        except asyncio.CancelledError:
            log.info("%s: cancelled by the client or its deadline%s", what, _rolled_back(tx))
            raise
        except Exception as exc:
            failure = failure_status(exc, what)
            if tx is not None and tx.state != "committed":
                log.info("%s: rolled back, nothing stored", what)
        finally:
            if tx is not None:
                tx.rollback()  # a no-op once committed; otherwise stops a batch still embedding
        if failure is not None:
            await context.abort(*failure)

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
