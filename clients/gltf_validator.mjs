// What validate.mjs (one GLB per process) and validate_server.mjs (a long-lived process) share:
// loading the Khronos validator package, and the order its messages are reported in.
import { createRequire } from "node:module";

/** The gltf-validator package at `path`, or exit 3 (the validator itself cannot run). */
export function loadValidator(path) {
  try {
    return createRequire(import.meta.url)(path);
  } catch (error) {
    process.stderr.write(`cannot load ${path}: ${error.message}\n`);
    return process.exit(3);
  }
}

/** The report's messages, the worst first, at most 20. */
export function worstFirst(messages) {
  return [...messages].sort((a, b) => a.severity - b.severity).slice(0, 20);
}
