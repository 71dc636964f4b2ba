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
import path from "node:path";
import { parseCommandLine } from "./cli_args.mjs";
import { ORIGIN, chromiumPath, localFiles, openOfflinePage } from "./offline_page.mjs";

const { values, positionals } = parseCommandLine(
  "node three_render.mjs GLB clip:time [clip:time ...] [--screenshot-dir DIR] [--clips CLIPS.json] [--probe]",
  { "screenshot-dir": { type: "string" }, clips: { type: "string" }, probe: { type: "boolean" } },
  2,
);
const screenshotDir = values["screenshot-dir"] ?? null;
const clipsPath = values.clips ?? null;
const withProbe = Boolean(values.probe);
const [glbPath, ...frameSpecs] = positionals;

if (!chromiumPath()) {
  console.error("no Chromium found: install Debian's chromium (make clients) or set CHROMIUM_PATH");
  process.exit(3);
}

const { browser, page, messages } = await openOfflinePage(localFiles({ "/avatar.glb": glbPath }));
try {
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
