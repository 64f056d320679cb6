// Validates an AsyncAPI document with the official parser: reads the document from
// stdin, prints the parser's diagnostics as JSON lines, exits 1 on any error.
import { Parser } from "@asyncapi/parser";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const parser = new Parser();
const { document, diagnostics } = await parser.parse(Buffer.concat(chunks).toString("utf8"));
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, path: d.path, message: d.message }));
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length > 0) {
  console.error(`${errors.length} error(s)`);
  process.exit(1);
}
console.log(JSON.stringify({ valid: true, version: document.version(), messages: document.allMessages().length }));
