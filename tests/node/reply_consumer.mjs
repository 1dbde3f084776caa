// A Node.js backend receiving reply_to deliveries with a plain Redis client: it pops the
// Celery protocol-2 messages this service sends onto the backend's own queue, decodes
// them, and prints one JSON line per message: {"task", "id", "job"}.
//
//   node reply_consumer.mjs REDIS_URL QUEUE COUNT TIMEOUT_SECONDS
import { createClient } from "redis";

const [url, queue, countText, timeoutText] = process.argv.slice(2);
const wanted = Number(countText);
const deadline = Date.now() + Number(timeoutText) * 1000;
const client = createClient({ url });
await client.connect();
let seen = 0;
while (seen < wanted && Date.now() < deadline) {
  const popped = await client.brPop(queue, 1);
  if (!popped) continue;
  const envelope = JSON.parse(popped.element);
  const raw = envelope.properties.body_encoding === "base64"
    ? Buffer.from(envelope.body, "base64").toString("utf8")
    : envelope.body;
  const [args, kwargs] = JSON.parse(raw);
  console.log(JSON.stringify({ task: envelope.headers.task, id: envelope.headers.id, args, job: kwargs.job }));
  seen += 1;
}
await client.quit();
process.exit(seen === wanted ? 0 : 1);
