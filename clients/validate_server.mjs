// A long-lived Khronos glTF validator (npm gltf-validator) for a warm worker: the package is
// loaded once, then GLBs are validated one after the other, as they come.
// Usage: node validate_server.mjs --package DIR
// Protocol (stdin → stdout): each request is a 4-byte little-endian length, then that many bytes
// of GLB; each answer is one JSON line, in request order:
//   {"ok": true, "issues": {numErrors, numWarnings, numInfos, numHints, messages}}  (the worst first)
//   {"ok": false, "error": "..."}  (the validator threw on these bytes; the process lives on)
// The first line, before any request, is {"ready": true} (or the process exits 3: cannot load).
// It exits 0 when stdin ends (its worker went away), so it never outlives the worker.
// The one-shot path (validate.mjs, one process per GLB) stays for the other placements.
import { loadValidator, worstFirst } from "./gltf_validator.mjs";

const [flag, packageDir] = process.argv.slice(2);
const packagePath = flag === "--package" && packageDir ? packageDir : "gltf-validator";

const validator = loadValidator(packagePath);

const answer = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

async function validate(bytes) {
  try {
    // the container is detected from the bytes, as validate.mjs does for stdin
    const report = await validator.validateBytes(new Uint8Array(bytes), { maxIssues: 200 });
    const issues = report.issues;
    answer({ ok: true, issues: { ...issues, messages: worstFirst(issues.messages) } });
  } catch (error) {
    answer({ ok: false, error: String(error?.stack ?? error).slice(0, 500) });
  }
}

let chunks = [];
let buffered = 0;
let chain = Promise.resolve(); // requests are answered in order, one at a time
process.stdin.on("data", (chunk) => {
  chunks.push(chunk);
  buffered += chunk.length;
  // joined only when a whole request may be there (a GLB arrives in many 64 kB chunks)
  while (buffered >= 4) {
    let pending = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    chunks = [pending];
    const length = pending.readUInt32LE(0);
    if (buffered < 4 + length) break;
    const bytes = pending.subarray(4, 4 + length);
    pending = pending.subarray(4 + length);
    chunks = pending.length ? [pending] : [];
    buffered = pending.length;
    chain = chain.then(() => validate(bytes));
  }
});
process.stdin.on("end", () => chain.then(() => process.exit(0)));
answer({ ready: true });
