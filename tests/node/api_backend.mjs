#!/usr/bin/env node
// A Node.js backend integrating with imagegen-worker both ways, with nothing but Node's
// built-in fetch and node:crypto, and npm's `redis` client:
//
//   1. the HTTP API: POST /v1/jobs (bearer token, Idempotency-Key), poll GET /v1/jobs/{id}
//      until the job ends, download each image through its href and check its SHA-256 and
//      size against the JobView and the X-Checksum-SHA256 header;
//   2. the broker: LPUSH the checked-in raw message (api_schema/examples/
//      generate-message.json) onto imagegen.requests with only its job id changed (headers
//      id and root_id, properties correlation_id; the body as it is), then read that job
//      through the API with the broker tenant's token.
//
//   node api_backend.mjs CONFIG.json
//
// CONFIG.json: {"api_url", "token", "broker_token", "redis_url", "message_file",
// "timeout_seconds"}. Prints one JSON line with what it observed and exits 0; any failure
// (an HTTP error, a check that does not hold, the deadline) goes to stderr with exit 1.
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createClient } from "redis";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const deadline = Date.now() + Number(config.timeout_seconds) * 1000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

function remainingMs() {
  const left = deadline - Date.now();
  if (left <= 0) throw new Error("deadline passed");
  return left;
}

async function api(path, token, init = {}) {
  const url = new URL(path, config.api_url);
  const headers = { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) };
  const signal = AbortSignal.timeout(Math.min(remainingMs(), 30_000));
  return fetch(url, { ...init, headers, signal });
}

async function json(response, what) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${what}: ${response.status} answered non-JSON: ${text.slice(0, 200)}`);
  }
}

// Polls a job until it ends; 404 is allowed while `pending404` (a job pushed onto the broker
// exists only once a worker has recorded it).
async function waitJob(id, token, { pending404 = false } = {}) {
  let polls = 0;
  let notFound = 0;
  for (;;) {
    remainingMs();
    const response = await api(`/v1/jobs/${encodeURIComponent(id)}`, token);
    polls += 1;
    if (response.status === 404 && pending404) {
      await response.arrayBuffer();
      notFound += 1;
    } else {
      check(response.status === 200, `GET job ${id}: ${response.status}`);
      const view = await json(response, `GET job ${id}`);
      if (TERMINAL.has(view.status)) return { view, polls, notFound };
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function download(image) {
  const response = await api(image.href, config.token);
  check(response.status === 200, `GET ${image.href}: ${response.status}`);
  const bytes = Buffer.from(await response.arrayBuffer());
  const computed = createHash("sha256").update(bytes).digest("hex");
  const header = response.headers.get("x-checksum-sha256");
  check(computed === image.sha256, `image ${image.index}: sha256 ${computed} != ${image.sha256}`);
  check(header === image.sha256, `image ${image.index}: X-Checksum-SHA256 ${header}`);
  check(bytes.length === image.size_bytes, `image ${image.index}: ${bytes.length} bytes`);
  return {
    index: image.index,
    href: image.href,
    sha256: computed,
    header_sha256: header,
    size: bytes.length,
    size_bytes: image.size_bytes,
    content_type: response.headers.get("content-type"),
    png: bytes.subarray(0, 4).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47])),
  };
}

// --- 1. the HTTP API ------------------------------------------------------------------------
const request = {
  prompt: `node backend portrait ${randomUUID().slice(0, 12)}`,
  subject_reference_images: ["https://example.com/portrait.jpg"],
  n: 2,
  metadata: { backend: "node", order: 1001 },
};
const idempotencyKey = `node-order-${randomUUID()}`;
const submit = () =>
  api("/v1/jobs", config.token, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
    body: JSON.stringify(request),
  });
const posted = await submit();
const postedBody = await json(posted, "POST /v1/jobs");
check(posted.status === 202, `POST /v1/jobs: ${posted.status} ${JSON.stringify(postedBody)}`);
const location = posted.headers.get("location");
check(location === `/v1/jobs/${postedBody.id}`, `Location ${location}`);
const again = await submit(); // a retried POST (same key, same body): the same job
const againBody = await json(again, "POST /v1/jobs again");
const { view, polls } = await waitJob(postedBody.id, config.token);
check(view.status === "succeeded", `job ${view.id} ended ${view.status}: ${view.error_message}`);
const images = [];
for (const image of view.images) images.push(await download(image));

// --- 2. the raw broker message, read back through the API --------------------------------
const message = JSON.parse(readFileSync(config.message_file, "utf8"));
const rawId = randomUUID();
message.headers.id = rawId;
message.headers.root_id = rawId;
message.properties.correlation_id = rawId;
// No reconnecting here: a test fails at once when Redis is away (a real backend would keep
// the default reconnect strategy).
const redis = createClient({
  url: config.redis_url,
  socket: { connectTimeout: 5000, reconnectStrategy: false },
});
redis.on("error", (error) => console.error(`redis: ${error.message}`));
await redis.connect();
let queued;
try {
  queued = await redis.lPush("imagegen.requests", JSON.stringify(message));
} finally {
  await redis.quit();
}
const raw = await waitJob(rawId, config.broker_token, { pending404: true });
check(raw.view.status === "succeeded", `raw job ${rawId} ended ${raw.view.status}`);
// The broker's jobs belong to the broker tenant: another tenant's token does not see them.
const foreign = await api(`/v1/jobs/${rawId}`, config.token);
await foreign.arrayBuffer();

console.log(
  JSON.stringify({
    submitted: {
      status: posted.status,
      location,
      id: postedBody.id,
      replayed: postedBody.replayed,
      retry_status: again.status,
      retry_id: againBody.id,
      retry_replayed: againBody.replayed,
      idempotency_key: idempotencyKey,
    },
    job: {
      id: view.id,
      status: view.status,
      tenant: view.tenant,
      idempotency_key: view.idempotency_key,
      metadata: view.metadata,
      polls,
      images,
    },
    raw: {
      id: rawId,
      queue_length_after_push: queued,
      status: raw.view.status,
      tenant: raw.view.tenant,
      images: raw.view.images.map((i) => ({ index: i.index, sha256: i.sha256 })),
      polls: raw.polls,
      not_found_polls: raw.notFound,
      other_tenant_status: foreign.status,
    },
  }),
);
