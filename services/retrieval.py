"""The `ragloom.v1.RetrievalService` servicer: protobuf in, CollectionManager calls, protobuf back.

The CollectionManager is synchronous and may be slow (embedding, index writes), so every call
runs in a worker thread (`asyncio.to_thread`) and the event loop keeps serving other RPCs.
Errors come from the library as RagloomError (with the reason and field path the proto
promises) and become status codes with google.rpc details in services/status.py, as in
services/generation.py. Index kinds are strings in the library ("auto", "flat", "ivf") and the
IndexKind enum on the wire; the conversion is here.

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
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from ragloom.errors import AlreadyExists, FailedPrecondition, InvalidArgument, RagloomError
from ragloom.retrieval.collections import MAX_K, CollectionInfo, CollectionManager, Document, Hit
from ragloom.retrieval.upsert import UpsertTransaction
from ragloom.services._proto import retrieval_pb2 as pb
from ragloom.services._proto import retrieval_pb2_grpc as pb_grpc
from ragloom.services.metrics import Metrics
from ragloom.services.status import abort_on_failure, unary
from ragloom.structs import dict_to_struct, struct_to_dict

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name  # "ragloom.v1.RetrievalService"

DEFAULT_K = 10

# IndexKind <-> the library's kind names; UNSPECIFIED means AUTO on create and is never returned
_KIND_NAMES: dict[int, str] = {
    pb.INDEX_KIND_UNSPECIFIED: "auto",
    pb.INDEX_KIND_AUTO: "auto",
    pb.INDEX_KIND_FLAT: "flat",
    pb.INDEX_KIND_IVF: "ivf",
}
_KINDS: dict[str, pb.IndexKind] = {
    "auto": pb.INDEX_KIND_AUTO,
    "flat": pb.INDEX_KIND_FLAT,
    "ivf": pb.INDEX_KIND_IVF,
}


def kind_from_proto(value: int) -> str:
    """CreateCollectionRequest.index as the library's kind; InvalidArgument (field "index") for a
    number this server does not know (proto3 enums carry unknown values from newer clients)."""
    name = _KIND_NAMES.get(value)
    if name is None:
        raise InvalidArgument(f"index must be one of INDEX_KIND_AUTO, _FLAT or _IVF, got the number {value}", field="index")
    return name


def kind_to_proto(kind: str) -> pb.IndexKind:
    return _KINDS[kind]


def info_to_proto(info: CollectionInfo) -> pb.CollectionInfo:
    msg = pb.CollectionInfo(
        name=info.name,
        dim=int(info.dim or 0),
        model=info.model or "",
        documents=int(info.documents),
        chunks=int(info.chunks),
        index=kind_to_proto(info.index),
        index_requested=kind_to_proto(info.index_requested),
        chunk_tokens=info.chunk_tokens,
        chunk_overlap=info.chunk_overlap,
        metadata=dict_to_struct(info.metadata),
    )
    if info.created_at is not None:
        msg.created_at.FromDatetime(info.created_at)
    return msg


def hit_to_proto(hit: Hit) -> pb.Hit:
    # A chunk stored before the store kept offsets has none (see retrieval/store.py): it goes out
    # as 0/0, an empty span no real chunk has (every chunk's text is non-empty).
    start, end = (0, 0) if hit.start_char is None or hit.end_char is None else (hit.start_char, hit.end_char)
    return pb.Hit(
        id=hit.id,
        chunk_id=str(hit.chunk_id),
        score=float(hit.score),
        text=hit.text,
        metadata=dict_to_struct(hit.metadata),
        chunk_index=int(hit.chunk_index),
        start_char=int(start),
        end_char=int(end),
    )


def documents_from_proto(msgs: Sequence[pb.Document]) -> tuple[list[Document], np.ndarray | None]:
    """Documents of one UpsertRequest, plus their vectors when the batch carries them."""
    docs = [Document(id=m.id, text=m.text, metadata=struct_to_dict(m.metadata, f"documents[{i}].metadata"))
            for i, m in enumerate(msgs)]
    with_vectors = sum(1 for m in msgs if m.vector)
    if with_vectors == 0:
        return docs, None
    if with_vectors != len(msgs):
        first = bool(msgs[0].vector)
        mixed = next(i for i, m in enumerate(msgs) if bool(m.vector) != first)
        raise InvalidArgument(
            f"{with_vectors} of {len(msgs)} documents in this batch carry a vector: either all or none must",
            field=f"documents[{mixed}].vector",
        )
    size = len(msgs[0].vector)
    odd = next((i for i, m in enumerate(msgs) if len(m.vector) != size), None)
    if odd is not None:
        sizes = sorted({len(m.vector) for m in msgs})
        raise InvalidArgument(f"vectors in one batch must have one length, got {sizes}", field=f"documents[{odd}].vector")
    return docs, np.asarray([list(m.vector) for m in msgs], dtype=np.float32)


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required: the collection's name", field=field)
    return value


def _rolled_back(tx: UpsertTransaction | None) -> str:
    return "" if tx is None or tx.state == "committed" else "; rolled back, nothing stored"


# (collection, document ids) -> chunks whose KV was computed
Precompute = Callable[[str, Sequence[str]], Awaitable[int]]


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    def __init__(
        self,
        collections: CollectionManager,
        precompute: Precompute | None = None,
        *,
        max_k: int = MAX_K,
        metrics: Metrics | None = None,
    ) -> None:
        self._mgr = collections
        self._precompute = precompute
        self.max_k = max_k  # Settings.search_max_k; the manager's own limit (MAX_K) still holds
        self._metrics = metrics or Metrics()

    # -- collections -----------------------------------------------------------------------

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        async def work() -> pb.CreateCollectionResponse:
            options: dict[str, Any] = {"index": kind_from_proto(request.index)}
            for name in ("chunk_tokens", "chunk_overlap"):
                if request.HasField(name):
                    options[name] = getattr(request, name)
            if request.HasField("metadata"):
                options["metadata"] = struct_to_dict(request.metadata, "metadata")
            info = await asyncio.to_thread(self._mgr.create_collection, request.name, **options)
            log.info("created collection %r (index=%s, dim=%s)", info.name, info.index_requested, info.dim)
            return pb.CreateCollectionResponse(collection=info_to_proto(info))

        return await unary("CreateCollection", context, work, request.request_id)

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCollectionResponse:
        async def work() -> pb.DeleteCollectionResponse:
            await asyncio.to_thread(self._mgr.delete_collection, _required(request.name, "name"))
            log.info("deleted collection %r", request.name)
            return pb.DeleteCollectionResponse()

        return await unary("DeleteCollection", context, work, request.request_id)

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        async def work() -> pb.ListCollectionsResponse:
            infos = await asyncio.to_thread(self._mgr.list_collections)
            return pb.ListCollectionsResponse(collections=[info_to_proto(i) for i in infos])

        return await unary("ListCollections", context, work, request.request_id)

    # -- documents -------------------------------------------------------------------------

    async def _open(self, name: str, create_if_missing: bool, what: str) -> None:
        """Check that the collection exists (NotFound otherwise), creating it if asked to."""
        if create_if_missing:
            try:
                await asyncio.to_thread(self._mgr.create_collection, name)
                log.info("%s: created the collection (create_if_missing)", what)
                return
            except AlreadyExists:
                pass
        await asyncio.to_thread(self._mgr.get_collection, name)

    async def Upsert(
        self, request_iterator: AsyncIterable[pb.UpsertRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.UpsertResponse]:
        # The first message carries the call's request_id, so it is read before the id is set up;
        # a failure to read it is reported under a generated id.
        requests = aiter(request_iterator)
        first: pb.UpsertRequest | None = None
        unread: Exception | None = None
        try:
            first = await anext(requests, None)
        except Exception as exc:  # noqa: BLE001 - answered through abort_on_failure below
            unread = exc
        async with abort_on_failure("Upsert", context, first.request_id if first is not None else "") as rid:
            if unread is not None:
                raise unread
            tx: UpsertTransaction | None = None
            what = f"Upsert {rid}"
            message = 0  # the position in the stream of the message being handled
            try:
                if first is None:
                    raise InvalidArgument(
                        "empty Upsert stream: the first message must name the collection", field="collection"
                    )
                if not first.collection:
                    raise InvalidArgument("the first UpsertRequest must name the collection", field="collection")
                precompute, progress = first.precompute_kv, first.progress
                if precompute and self._precompute is None:
                    raise FailedPrecondition("precompute_kv needs a server with a model loaded; this one has none")
                what = f"Upsert {rid} into {first.collection!r}"
                await self._open(first.collection, first.create_if_missing, what)
                opened: UpsertTransaction = await asyncio.to_thread(self._mgr.begin_upsert, first.collection)
                tx = opened  # for the handlers below; `opened` is never None
                req: pb.UpsertRequest | None = first
                acked = 0
                while req is not None:
                    if req.collection and req.collection != opened.name:
                        raise InvalidArgument(
                            f"this Upsert stream writes to {opened.name!r}; message {message} names {req.collection!r} "
                            "(a later message leaves collection empty or repeats it)",
                            field="collection",
                        )
                    if req.documents:
                        await self._stage(opened, req, message)
                    req = await anext(requests, None)
                    if req is not None:
                        message += 1
                        if progress and acked < opened.documents:
                            # The previous batch is staged and another message came: acknowledge
                            # it. The last batch is acknowledged by the commit, so the counts reach
                            # the call's total only with committed=true (a bar at 100% means stored).
                            acked = opened.documents
                            yield pb.UpsertResponse(documents=opened.documents, chunks=opened.chunks)
                result = await asyncio.to_thread(opened.commit)
                log.info("%s: committed %d documents, %d chunks", what, result.documents, result.chunks)
                done = pb.UpsertResponse(documents=result.documents, chunks=result.chunks, committed=True)
                if precompute and opened.documents:
                    if progress:  # the data is stored whatever precomputing does next
                        yield done
                    assert self._precompute is not None
                    done.kv_precomputed = await self._precompute(opened.name, list(opened.document_ids))
                yield done
            except asyncio.CancelledError:
                if tx is not None and tx.state != "committed":
                    log.info("%s: cancelled%s", what, _rolled_back(tx))
                raise
            except Exception:
                if tx is not None and tx.state != "committed":
                    log.info("%s: failed at message %d%s", what, message, _rolled_back(tx))
                raise
            finally:
                if tx is not None:
                    tx.rollback()  # a no-op once committed; otherwise stops a batch still embedding

    @staticmethod
    async def _stage(tx: UpsertTransaction, req: pb.UpsertRequest, message: int) -> None:
        """Embed and stage one message's documents. An error names the field within that message
        ("documents[3].id"); which message of the stream it was goes into the error's metadata."""
        try:
            docs, vectors = documents_from_proto(req.documents)
            if vectors is None:
                await asyncio.to_thread(tx.add, docs)
            else:
                await asyncio.to_thread(tx.add_vectors, docs, vectors)
        except RagloomError as exc:
            if exc.field is not None:
                exc.metadata.setdefault("stream_message", str(message))
            raise

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        async def work() -> pb.DeleteResponse:
            name = _required(request.collection, "collection")
            deleted = await asyncio.to_thread(self._mgr.delete, name, list(request.ids))
            return pb.DeleteResponse(deleted=deleted)

        return await unary("Delete", context, work, request.request_id)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async def work() -> pb.SearchResponse:
            k = request.k if request.HasField("k") else DEFAULT_K
            if k > self.max_k:
                raise InvalidArgument(f"k must be in [1, {self.max_k}], got {k}", field="k")
            with self._metrics.search_seconds.time():
                hits = await asyncio.to_thread(
                    self._mgr.search,
                    _required(request.collection, "collection"),
                    request.query,
                    k=k,
                    filter=struct_to_dict(request.filter, "filter") or None,
                    oversample=request.oversample if request.HasField("oversample") else None,
                    group_by_document=request.group_by_document,
                )
            return pb.SearchResponse(hits=[hit_to_proto(h) for h in hits])

        return await unary("Search", context, work, request.request_id)
