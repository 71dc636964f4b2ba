// Validate glTF/GLB files with the Khronos glTF validator (npm gltf-validator).
// Usage: node validate.mjs FILE... ; prints one JSON object {file: report summary} on stdout.
// Exit status: 0 when every file has zero errors, 1 otherwise, 2 on usage / read errors.
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs FILE...");
  process.exit(2);
}
const out = {};
let failed = false;
for (const file of files) {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, { maxIssues: 200, format: "glb" });
  const issues = report.issues;
  out[file] = {
    numErrors: issues.numErrors,
    numWarnings: issues.numWarnings,
    numInfos: issues.numInfos,
    numHints: issues.numHints,
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
