#!/usr/bin/env node
// Validates JSON values against the checked-in JSON Schemas as a Node.js producer would,
// with npm's `ajv` (draft 2020-12, patterns compiled with the u flag as ajv does by default;
// allowUnionTypes, since pydantic writes "type": [...] unions that ajv's strict mode would
// otherwise only warn about).
//
//   node tests/node/validate_schema.mjs SCHEMA.json [SCHEMA.json ...] < VALUES.json
//
// VALUES.json (standard input): a JSON array of the values to validate. Lone surrogates
// written as \udXXX escapes stay lone surrogates, as JSON.parse reads them.
//
// Prints one JSON array per schema, in argument order, wrapped in an outer array: for each
// value `true` when the schema accepts it, otherwise the first error as
// "<instancePath> <message>". Exit 0 whenever every value got an answer; exit 2 when the
// arguments, a schema or the values cannot be read or compiled, so a broken test is not
// taken for a refusal.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

function fail(message) {
  console.error(`validate_schema: ${message}`);
  console.error("usage: node validate_schema.mjs SCHEMA.json [SCHEMA.json ...] < VALUES.json");
  process.exit(2);
}

const paths = process.argv.slice(2);
if (paths.length === 0) {
  fail("at least one schema file");
}
let values;
try {
  values = JSON.parse(readFileSync(0, "utf8"));
} catch (error) {
  fail(`cannot read the values on standard input: ${error.message}`);
}
if (!Array.isArray(values)) {
  fail("the values must be a JSON array");
}

const answers = [];
for (const path of paths) {
  let validate;
  try {
    // A fresh instance per schema: the schemas share $defs names but not their contents.
    const ajv = new Ajv2020({ allowUnionTypes: true });
    validate = ajv.compile(JSON.parse(readFileSync(path, "utf8")));
  } catch (error) {
    fail(`${path}: ${error.message}`);
  }
  answers.push(
    values.map((value) => {
      if (validate(value)) {
        return true;
      }
      const [first] = validate.errors;
      return `${first.instancePath || "/"} ${first.message.slice(0, 100)}`;
    }),
  );
}
console.log(JSON.stringify(answers));
