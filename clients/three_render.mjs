// Drive the three.js harness in headless Chromium (playwright-core + Debian's chromium),
// entirely offline: every request is answered from local files by a Playwright route.
//
// Usage: node three_render.mjs GLB clip:time [clip:time ...] [--screenshot-dir DIR]
//          [--clips CLIPS.json] [--probe]
//   ("bind" as the clip renders the bind pose). --clips adds clips (a JSON list of
//   {name, tracks: [{name, type, times, values}]}, bound by node name as any three.js app
//   binds a Mixamo clip); --probe adds skinned-mesh measurements to each frame.
//   Prints one JSON object on stdout:
//   {load: {...}, added: [...], frames: [{clip, time, pixels, width, height, mask, probe?}], console: [...]}
import { readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let screenshotDir = null;
const shotAt = args.indexOf("--screenshot-dir");
if (shotAt >= 0) {
  screenshotDir = args[shotAt + 1];
  args.splice(shotAt, 2);
}
let clipsPath = null;
const clipsAt = args.indexOf("--clips");
if (clipsAt >= 0) {
  clipsPath = args[clipsAt + 1];
  args.splice(clipsAt, 2);
}
const probeAt = args.indexOf("--probe");
const withProbe = probeAt >= 0;
if (withProbe) args.splice(probeAt, 1);
const [glbPath, ...frameSpecs] = args;
if (!glbPath || frameSpecs.length === 0) {
  console.error("usage: node three_render.mjs GLB clip:time [clip:time ...] [--screenshot-dir DIR]");
  process.exit(2);
}

const executablePath = process.env.CHROMIUM_PATH || ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);
if (!executablePath) {
  console.error("no Chromium found: install Debian's chromium (make clients) or set CHROMIUM_PATH");
  process.exit(3);
}

const ORIGIN = "http://avatarpipe.test";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".glb": "model/gltf-binary", ".wasm": "application/wasm" };
function localFile(url) {
  const p = decodeURIComponent(new URL(url).pathname);
  if (p === "/avatar.glb") return glbPath;
  if (p.startsWith("/three/")) return path.join(here, "node_modules", "three", p.slice("/three/".length));
  if (p.startsWith("/harness/")) return path.join(here, "harness", p.slice("/harness/".length));
  return null;
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
  ],
});
const messages = [];
try {
  const page = await browser.newPage();
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  await page.route("**/*", async (route) => {
    const file = localFile(route.request().url());
    if (!file || !existsSync(file)) return route.fulfill({ status: 404, body: "not found" });
    const type = TYPES[path.extname(file)] || "application/octet-stream";
    return route.fulfill({ status: 200, contentType: type, body: await readFile(file) });
  });
  await page.goto(`${ORIGIN}/harness/index.html`);
  await page.waitForFunction(() => window.avatarHarness && window.avatarHarness.ready, null, { timeout: 30000 });
  const load = await page.evaluate((url) => window.avatarHarness.load(url), `${ORIGIN}/avatar.glb`);
  const added = [];
  if (clipsPath) {
    for (const spec of JSON.parse(await readFile(clipsPath, "utf8"))) {
      added.push(await page.evaluate((s) => window.avatarHarness.addClip(s), spec));
    }
  }
  const frames = [];
  for (const spec of frameSpecs) {
    const cut = spec.lastIndexOf(":");
    const clip = spec.slice(0, cut);
    const time = Number(spec.slice(cut + 1));
    const frame = await page.evaluate(([c, t]) => window.avatarHarness.render(c === "bind" ? null : c, t), [clip, time]);
    if (withProbe) {
      frame.probe = await page.evaluate(([c, t]) => window.avatarHarness.probe(c === "bind" ? null : c, t), [clip, time]);
    }
    frames.push({ clip, time, ...frame });
    if (screenshotDir) {
      await page.locator("canvas").screenshot({ path: path.join(screenshotDir, `${clip}_${time}.png`) });
    }
  }
  console.log(JSON.stringify({ load, added, frames, console: messages }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error && error.stack || error), console: messages }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
