#!/usr/bin/env node
// Calling ragloom from Node.js: @grpc/grpc-js stubs built at run time from the repo's own .proto
// files (proto/ragloom/v1/*.proto) by @grpc/proto-loader, with no generated code and no ragloom
// package. It walks through the API against a running server and prints one JSON line per step,
// so that tests/integration/test_node_client.py can check it; the streamed text goes to stderr.
//
//   npm ci --prefix examples/node
//   ragloom serve &                      # or any ragloom server, on 127.0.0.1:50051
//   node examples/node/client.mjs --address 127.0.0.1:50051 --sqlite examples/shop.db
//
// Steps: generate_stream, generate_json, retrieval (create, upsert, search), ask, tables
// (register, ExecuteSql, Query) and error (a NOT_FOUND with its google.rpc.Status details).
// Every step runs even when an earlier one failed; the exit status is 1 if any failed.

import { randomUUID } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual, parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    address: { type: "string", default: "127.0.0.1:50051" },
    sqlite: { type: "string" }, // a SQLite file for the tables step; without it the step is skipped
    "proto-dir": { type: "string", default: path.resolve(HERE, "../../proto") },
    timeout: { type: "string", default: "120" }, // seconds, the deadline of each call
  },
});
const TIMEOUT_S = Number(args.timeout);

// The options that make proto-loader's objects match the proto3 JSON mapping closely:
// keepCase keeps snake_case field names as in the .proto; longs: String keeps int64 exact
// (a JS number loses integers beyond 2^53); enums: String gives enum value names
// ("FINISH_REASON_STOP"); defaults fills in unset fields; oneofs adds a field naming which
// member of a oneof is set (e.g. response: "chunk"). google/protobuf/*.proto (Struct,
// Timestamp) come bundled with proto-loader.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [args["proto-dir"]],
};
const definition = protoLoader.loadSync(
  ["errors", "generation", "retrieval", "rag", "tables"].map((f) => `ragloom/v1/${f}.proto`),
  LOADER_OPTIONS,
);
const v1 = grpc.loadPackageDefinition(definition).ragloom.v1;
const ERROR_REASONS = new Set(definition["ragloom.v1.ErrorReason"].type.value.map((v) => v.name));

// The google.rpc messages of the `grpc-status-details-bin` trailer (errors.proto lists them),
// declared inline in protobuf.js's JSON form rather than shipping googleapis' .proto files:
// only the fields read here, with their real field numbers.
const RPC = protoLoader.fromJSON(
  {
    nested: {
      google: {
        nested: {
          protobuf: { nested: { Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } } } },
          rpc: {
            nested: {
              Status: {
                fields: {
                  code: { type: "int32", id: 1 },
                  message: { type: "string", id: 2 },
                  details: { rule: "repeated", type: "google.protobuf.Any", id: 3 },
                },
              },
              ErrorInfo: {
                fields: {
                  reason: { type: "string", id: 1 },
                  domain: { type: "string", id: 2 },
                  metadata: { keyType: "string", type: "string", id: 3 },
                },
              },
              BadRequest: {
                fields: { field_violations: { rule: "repeated", type: "FieldViolation", id: 1 } },
                nested: {
                  FieldViolation: {
                    fields: { field: { type: "string", id: 1 }, description: { type: "string", id: 2 } },
                  },
                },
              },
              RequestInfo: {
                fields: { request_id: { type: "string", id: 1 }, serving_data: { type: "string", id: 2 } },
              },
            },
          },
        },
      },
    },
  },
  { keepCase: true, defaults: true },
);

// ---------------------------------------------------------------------------------------------
// Helpers

/** The deadline of one call: every call gets one, so a stuck server cannot hang the client. */
function deadline() {
  return new Date(Date.now() + TIMEOUT_S * 1000);
}

/**
 * A plain JS value as a google.protobuf.Value message. proto-loader encodes a Struct field from
 * the message form ({fields: {lang: {stringValue: "en"}}}); a plain object given there is
 * silently encoded as an empty Struct, which the server cannot tell from "no metadata". The
 * well-known types come from protobuf.js's bundled definitions, whose field names are camelCase
 * (stringValue, not string_value) whatever keepCase says.
 */
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof v === "number") return { numberValue: v };
  if (typeof v === "string") return { stringValue: v };
  if (typeof v === "boolean") return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === "object") return { structValue: toStruct(v) };
  throw new TypeError(`cannot put a ${typeof v} in a google.protobuf.Struct`);
}

/** A plain JS object as a google.protobuf.Struct message (for metadata and filters). */
export function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}

/** The reverse of toValue, for Struct fields in responses (with oneofs: true, `kind` names the set member). */
function fromValue(v) {
  switch (v.kind) {
    case "nullValue":
      return null;
    case "numberValue":
      return v.numberValue;
    case "stringValue":
      return v.stringValue;
    case "boolValue":
      return v.boolValue;
    case "listValue":
      return (v.listValue.values ?? []).map(fromValue);
    case "structValue":
      return fromStruct(v.structValue);
    default:
      return undefined;
  }
}

/** A google.protobuf.Struct message as a plain JS object (null for an unset Struct). */
export function fromStruct(s) {
  if (!s) return null;
  return Object.fromEntries(Object.entries(s.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

/**
 * A result Cell as a JS value: the oneof `value` names the field that is set. int_value arrives
 * as a decimal string (longs: String), so integers beyond 2^53 stay exact; use BigInt(...) to
 * compute with them.
 */
function cellValue(cell) {
  if (cell.value === "null_value" || !cell.value) return null;
  return cell[cell.value];
}

/** Unary call as a promise. */
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/** Server-streaming call: every message, in order, and the response headers. */
function collect(call) {
  return new Promise((resolve, reject) => {
    const messages = [];
    let headers = null;
    call.on("metadata", (md) => {
      headers = md;
    });
    call.on("data", (m) => messages.push(m));
    call.on("error", reject);
    call.on("end", () => resolve({ messages, headers }));
  });
}

/** The google.rpc.Status details of a failed call, decoded from the `grpc-status-details-bin` trailer. */
function statusDetails(err) {
  const raw = err.metadata?.get("grpc-status-details-bin")?.[0];
  if (!raw) return null;
  const status = RPC["google.rpc.Status"].deserialize(raw);
  const out = { code: status.code, message: status.message, details: [] };
  for (const any of status.details) {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = RPC[name];
    out.details.push({ type: name, ...(type ? type.deserialize(any.value) : {}) });
  }
  return out;
}

/** A status code's name ("NOT_FOUND"). */
function codeName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? String(code);
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

let failed = false;

/** Runs one step; its result (or its error, with the gRPC status and ErrorInfo reason) is one JSON line. */
async function step(name, fn) {
  try {
    emit({ step: name, ok: true, ...(await fn()) });
  } catch (err) {
    failed = true;
    const line = { step: name, ok: false, error: err.message };
    if (err.code !== undefined) {
      line.code = codeName(err.code);
      line.reason = statusDetails(err)?.details.find((d) => d.type === "google.rpc.ErrorInfo")?.reason;
    }
    emit(line);
  }
}

// ---------------------------------------------------------------------------------------------
// The walkthrough

const creds = grpc.credentials.createInsecure();
const generation = new v1.GenerationService(args.address, creds);
const retrieval = new v1.RetrievalService(args.address, creds);
const rag = new v1.RagService(args.address, creds);
const tables = new v1.TablesService(args.address, creds);
const FINISH_REASONS = ["FINISH_REASON_STOP", "FINISH_REASON_LENGTH"];
const suffix = randomUUID().slice(0, 8); // names of this run's own collection and connector

// 1. Streaming chat generation: chunks as they come, then exactly one Complete.
await step("generate_stream", async () => {
  const requestId = `node-gen-${suffix}`;
  const call = generation.Generate(
    {
      request_id: requestId,
      messages: [{ role: "ROLE_USER", content: "Name three colours of the rainbow." }],
      sampling: { max_tokens: 24, temperature: 0 },
    },
    { deadline: deadline() },
  );
  call.on("data", (m) => m.response === "chunk" && process.stderr.write(m.chunk.text));
  const { messages, headers } = await collect(call);
  process.stderr.write("\n");
  const chunks = messages.filter((m) => m.response === "chunk");
  const last = messages.at(-1);
  check(last?.response === "complete", "the stream ends with a Complete");
  check(messages.filter((m) => m.response === "complete").length === 1, "exactly one Complete");
  const complete = last.complete;
  check(FINISH_REASONS.includes(complete.finish_reason), `finish_reason ${complete.finish_reason}`);
  check(complete.request_id === requestId, "Complete.request_id is the id sent");
  return {
    text: chunks.map((m) => m.chunk.text).join(""),
    chunks: chunks.length,
    finish_reason: complete.finish_reason,
    usage: complete.usage,
    request_id: complete.request_id,
    x_request_id: headers?.get("x-request-id")?.[0] ?? null,
  };
});

// 2. Constrained generation: the output is JSON valid for the schema (given enough max_tokens to
// end by itself, finish_reason STOP).
await step("generate_json", async () => {
  const schema = {
    type: "object",
    properties: {
      name: { type: "string", minLength: 1, maxLength: 16 },
      age: { type: "integer", minimum: 0, maximum: 130 },
      city: { type: "string", maxLength: 16 },
    },
    required: ["name", "age", "city"],
    additionalProperties: false,
  };
  const call = generation.Generate(
    {
      messages: [{ role: "ROLE_USER", content: "Tom is 42 and lives in Oslo. Give his name, age and city as JSON." }],
      sampling: { max_tokens: 96, temperature: 0 },
      json_schema: JSON.stringify(schema),
    },
    { deadline: deadline() },
  );
  const { messages } = await collect(call);
  const text = messages.filter((m) => m.response === "chunk").map((m) => m.chunk.text).join("");
  check(messages.at(-1)?.response === "complete", "the stream ends with a Complete");
  const complete = messages.at(-1).complete;
  check(complete.finish_reason === "FINISH_REASON_STOP", `finish_reason ${complete.finish_reason} (STOP expected)`);
  const value = JSON.parse(text);
  check(value && typeof value === "object" && !Array.isArray(value), "an object");
  check(Object.keys(value).sort().join(",") === "age,city,name", `keys ${Object.keys(value)}`);
  check(typeof value.name === "string" && value.name.length >= 1 && value.name.length <= 16, "name");
  check(Number.isInteger(value.age) && value.age >= 0 && value.age <= 130, "age");
  check(typeof value.city === "string" && value.city.length <= 16, "city");
  return { text, value, finish_reason: complete.finish_reason };
});

// 3. Retrieval: a collection of this run's own, documents upserted over a client stream (two
// batches), and a search grouped by document. Struct metadata and filters go through toStruct.
const collection = `node-example-${suffix}`;
const DOCS = [
  { id: "eiffel", text: "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.", metadata: { topic: "city", year: 1889 } },
  { id: "everest", text: "Mount Everest is the highest mountain on Earth, in the Himalayas.", metadata: { topic: "nature", tags: ["mountain", "asia"] } },
  { id: "danube", text: "The Danube river flows through Vienna, Bratislava and Budapest.", metadata: { topic: "nature", reviewed: true } },
  { id: "colosseum", text: "The Colosseum is an ancient amphitheatre in the centre of Rome.", metadata: { topic: "city", year: 80 } },
];
let collectionReady = false;

await step("retrieval", async () => {
  const created = await unary(retrieval, "CreateCollection", { name: collection });
  check(created.collection.name === collection, "CreateCollection answers the collection");

  const upsert = retrieval.Upsert({ deadline: deadline() });
  const done = collect(upsert);
  const docs = DOCS.map((d) => ({ id: d.id, text: d.text, metadata: toStruct(d.metadata) }));
  upsert.write({ collection, documents: docs.slice(0, 2) }); // the first message names the collection
  upsert.write({ documents: docs.slice(2) });
  upsert.end(); // half-close: the server commits the whole call
  const { messages: acks } = await done;
  const commit = acks.at(-1);
  check(commit?.committed === true, "Upsert ends with the committed message");
  check(commit.documents === String(DOCS.length), `committed ${commit.documents} documents`); // int64: a string
  collectionReady = true;

  const search = await unary(retrieval, "Search", {
    collection,
    query: "Which river flows through Vienna?",
    k: 3,
    group_by_document: true,
  });
  const ids = search.hits.map((h) => h.id);
  check(ids.length > 0, "Search returned hits");
  check(new Set(ids).size === ids.length, "group_by_document: one hit per document");
  check(ids[0] === "danube", `the best hit is danube, not ${ids[0]}`);
  for (const h of search.hits) {
    const original = DOCS.find((d) => d.id === h.id).metadata;
    // a Struct is a map: its keys may come back in another order
    check(isDeepStrictEqual(fromStruct(h.metadata), original), `metadata of ${h.id} round-trips`);
  }

  const filtered = await unary(retrieval, "Search", {
    collection,
    query: "famous places",
    k: 10,
    group_by_document: true,
    filter: toStruct({ topic: "city" }),
  });
  const cityIds = filtered.hits.map((h) => h.id).sort();
  check(cityIds.join(",") === "colosseum,eiffel", `filter {topic: city} gives ${cityIds}`);

  return {
    collection,
    upserted: commit.documents,
    chunks: commit.chunks,
    hits: search.hits.map((h) => ({ id: h.id, chunk_id: h.chunk_id, score: h.score, metadata: fromStruct(h.metadata) })),
    filtered: cityIds,
  };
});

// RAG: one Passages message, the answer's chunks, one AskComplete.
await step("ask", async () => {
  check(collectionReady, "the retrieval step stored the documents");
  const call = rag.Ask(
    {
      collection,
      question: "In which city is the Eiffel Tower?",
      k: 2,
      sampling: { max_tokens: 16, temperature: 0 },
    },
    { deadline: deadline() },
  );
  call.on("data", (m) => m.response === "chunk" && process.stderr.write(m.chunk.text));
  const { messages } = await collect(call);
  process.stderr.write("\n");
  check(messages[0]?.response === "passages", "Ask starts with the passages");
  check(messages.at(-1)?.response === "complete", "Ask ends with a Complete");
  const passages = messages[0].passages.passages;
  const complete = messages.at(-1).complete;
  const streamed = messages.filter((m) => m.response === "chunk").map((m) => m.chunk.text).join("");
  check(passages.length > 0, "at least one passage");
  check(complete.answer === streamed, "AskComplete.answer is the streamed text");
  check(FINISH_REASONS.includes(complete.finish_reason), `finish_reason ${complete.finish_reason}`);
  return {
    passages: passages.map((p) => ({ id: p.id, chunk_id: p.chunk_id, kv_source: p.kv_source, tokens: p.tokens })),
    answer: complete.answer,
    chunks: messages.length - 2,
    finish_reason: complete.finish_reason,
    mode: complete.mode,
    citations: complete.citations.map((c) => c.id),
    request_id: complete.request_id,
  };
});

if (collectionReady) {
  await unary(retrieval, "DeleteCollection", { name: collection }).catch((err) =>
    process.stderr.write(`could not delete collection ${collection}: ${err.message}\n`),
  );
}

// 4. Tables: a SQLite connector, guarded SQL with typed cells, and a question in plain language.
if (args.sqlite) {
  await step("tables", async () => {
    const connector = `node_shop_${suffix}`;
    // sqlite:// + an absolute path: four slashes. The path is the server's (same machine here).
    const url = `sqlite:///${path.resolve(args.sqlite)}`;
    const registered = await unary(tables, "RegisterConnector", { name: connector, url });
    check(registered.connector.dialect === "SQL_DIALECT_SQLITE", `dialect ${registered.connector.dialect}`);
    try {
      // 2^53 + 1: a JS number cannot hold it (it would read 9007199254740992); the string can.
      const BIG = "9007199254740993";
      const exec = await collect(
        tables.ExecuteSql({ connector, sql: `SELECT count(*) AS n, ${BIG} AS big FROM orders` }, { deadline: deadline() }),
      );
      const header = exec.messages.find((m) => m.response === "header")?.header;
      const rows = exec.messages.filter((m) => m.response === "rows").flatMap((m) => m.rows.rows);
      const done = exec.messages.at(-1)?.complete;
      check(header && done, "ExecuteSql sends a header and a complete");
      check(rows.length === 1, `one row, got ${rows.length}`);
      const [count, big] = rows[0].cells;
      check(count.value === "int_value" && big.value === "int_value", "integer cells arrive as int_value");
      check(cellValue(big) === BIG, `int64 stays exact: ${cellValue(big)}`);
      check(BigInt(cellValue(big)) === 2n ** 53n + 1n, "BigInt of the string is 2^53 + 1");

      const query = await collect(
        tables.Query({ connector, question: "How many orders are there?" }, { deadline: deadline() }),
      );
      const qdone = query.messages.at(-1)?.complete;
      check(qdone, "Query ends with a complete");
      const qrows = query.messages.filter((m) => m.response === "rows").flatMap((m) => m.rows.rows);
      // the tiny bundled model may write wrong SQL: that is QueryComplete.error, not an RPC error
      return {
        connector,
        url,
        columns: header.columns.map((c) => ({ name: c.name, kind: c.kind })),
        count: cellValue(count),
        big: cellValue(big),
        big_as_number: Number(cellValue(big)), // what a JS number would have made of it
        row_count: done.row_count,
        query: {
          sql: qdone.sql,
          valid: qdone.valid,
          error: qdone.error,
          rows: qrows.slice(0, 5).map((r) => r.cells.map(cellValue)),
          rows_received: qrows.length,
          row_count: qdone.row_count,
        },
      };
    } finally {
      await unary(tables, "RemoveConnector", { name: connector }).catch(() => {});
    }
  });
}

// 5. An error: Search on a collection that does not exist. The status code says NOT_FOUND; the
// trailer's google.rpc.Status carries an ErrorInfo whose reason says which kind of not found.
await step("error", async () => {
  const missing = `node-missing-${suffix}`;
  const requestId = `node-err-${suffix}`;
  try {
    await unary(retrieval, "Search", { request_id: requestId, collection: missing, query: "anything" });
  } catch (err) {
    const status = statusDetails(err);
    check(status, "the error carries grpc-status-details-bin");
    const info = status.details.find((d) => d.type === "google.rpc.ErrorInfo");
    const request = status.details.find((d) => d.type === "google.rpc.RequestInfo");
    check(err.code === grpc.status.NOT_FOUND, `status ${codeName(err.code)} (NOT_FOUND expected)`);
    check(info, "an ErrorInfo detail");
    check(ERROR_REASONS.has(info.reason), `${info.reason} is an ErrorReason of errors.proto`);
    check(info.reason === "COLLECTION_NOT_FOUND", `reason ${info.reason} (COLLECTION_NOT_FOUND expected)`);
    return {
      collection: missing,
      code: codeName(err.code),
      message: err.details,
      reason: info.reason,
      domain: info.domain,
      metadata: info.metadata,
      request_id: request?.request_id ?? null,
      sent_request_id: requestId,
      details: status.details.map((d) => d.type),
    };
  }
  throw new Error(`Search on ${missing} succeeded`);
});

for (const c of [generation, retrieval, rag, tables]) c.close();
// exitCode rather than process.exit(): the process ends once stdout is flushed (pipes may be async)
process.exitCode = failed ? 1 : 0;
