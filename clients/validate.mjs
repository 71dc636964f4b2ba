// Validate glTF/GLB files with the Khronos glTF validator (npm gltf-validator).
// Usage: node validate.mjs [--package DIR] FILE... ; prints one JSON object {file: report summary}
// on stdout. FILE `-` reads one GLB from stdin (how models/quality.py runs it: the avatar never
// touches a temporary file). --package DIR: the gltf-validator package to load (default: the
// one next to this script, clients/node_modules).
// Exit status: 0 when every file has zero errors, 1 otherwise, 2 on usage / read errors,
// 3 when the validator itself fails.
import { readFile } from "node:fs/promises";
import { loadValidator, worstFirst } from "./gltf_validator.mjs";

const args = process.argv.slice(2);
let packagePath = "gltf-validator";
if (args[0] === "--package") {
  packagePath = args[1];
  args.splice(0, 2);
}
if (args.length === 0 || !packagePath) {
  console.error("usage: node validate.mjs [--package DIR] FILE...");
  process.exit(2);
}
const validator = loadValidator(packagePath);

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function bytesOf(file) {
  try {
    return new Uint8Array(file === "-" ? await readStdin() : await readFile(file));
  } catch (error) {
    console.error(`cannot read ${file}: ${error.message}`);
    process.exit(2);
  }
}

const out = {};
let failed = false;
for (const file of args) {
  const bytes = await bytesOf(file);
  // stdin: the container is detected from the bytes; a .glb file is read as GLB.
  const options = file.endsWith(".glb") ? { maxIssues: 200, format: "glb" } : { maxIssues: 200 };
  let report;
  try {
    report = await validator.validateBytes(bytes, options);
  } catch (error) {
    console.error(String(error?.stack ?? error));
    process.exit(3);
  }
  const issues = report.issues;
  out[file] = {
    numErrors: issues.numErrors,
    numWarnings: issues.numWarnings,
    numInfos: issues.numInfos,
    numHints: issues.numHints,
    messages: worstFirst(issues.messages),
    errors: issues.messages.filter((m) => m.severity === 0).slice(0, 20),
    warnings: issues.messages.filter((m) => m.severity === 1).slice(0, 20),
    extensionsUsed: report.info?.extensionsUsed ?? [],
    animationCount: report.info?.animationCount,
    drawCallCount: report.info?.drawCallCount,
    totalVertexCount: report.info?.totalVertexCount,
    maxInfluences: report.info?.maxInfluences,
  };
  failed ||= issues.numErrors > 0;
}
console.log(JSON.stringify(out));
process.exit(failed ? 1 : 0);
