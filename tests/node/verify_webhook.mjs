#!/usr/bin/env node
// Verifies one webhook as a Node.js receiver would, with npm's `standardwebhooks`.
//
//   node tests/node/verify_webhook.mjs CASE.json
//
// CASE.json: {"secret": "whsec_...", "headers": {"webhook-id": ..., "webhook-timestamp": ...,
//             "webhook-signature": ..., ...}, "body": "<the raw body, exactly as received>"}
//
// Exit 0 when `new Webhook(secret).verify(body, headers)` succeeds, printing the parsed
// payload's `type` on stdout; exit 1 when it throws (the reason on stderr); exit 2 when
// CASE.json cannot be read or lacks a field, so a broken test is not taken for a refusal.
// The library checks the timestamp too: within 5 minutes of now.
import { readFileSync } from "node:fs";
import standardwebhooks from "standardwebhooks";

const { Webhook } = standardwebhooks;

function usage(message) {
  console.error(`verify_webhook: ${message}`);
  console.error("usage: node verify_webhook.mjs CASE.json  (CASE: {secret, headers, body})");
  process.exit(2);
}

const path = process.argv[2];
if (!path || process.argv.length > 3) {
  usage("one argument: the case file");
}
let testCase;
try {
  testCase = JSON.parse(readFileSync(path, "utf8"));
} catch (error) {
  usage(`cannot read ${path}: ${error.message}`);
}
const { secret, headers, body } = testCase ?? {};
if (typeof secret !== "string" || typeof body !== "string") {
  usage("secret and body must be strings");
}
if (headers === null || typeof headers !== "object" || Array.isArray(headers)) {
  usage("headers must be an object");
}

let payload;
try {
  payload = new Webhook(secret).verify(body, headers);
} catch (error) {
  console.error(`verify_webhook: not verified: ${error.name}: ${error.message}`);
  process.exit(1);
}
console.log(payload?.type ?? "");
