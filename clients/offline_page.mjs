// A headless Chromium page that serves every request from local files (no network), shared by
// the Playwright drivers (three_render.mjs, vrm_check.mjs).
import { readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
                ".glb": "model/gltf-binary", ".vrm": "model/gltf-binary", ".wasm": "application/wasm" };

export const ORIGIN = "http://avatarpipe.test";
const here = path.dirname(new URL(import.meta.url).pathname);

// URL -> local file: `files` maps exact paths ("/avatar.glb") to files; /three/, /three-vrm/ and
// /harness/ are served from clients/node_modules and clients/harness.
export function localFiles(files) {
  const prefixes = {
    "/three/": path.join(here, "node_modules", "three"),
    "/three-vrm/": path.join(here, "node_modules", "@pixiv", "three-vrm"),
    "/harness/": path.join(here, "harness"),
  };
  return (url) => {
    const p = decodeURIComponent(new URL(url).pathname);
    if (p in files) return files[p];
    const prefix = Object.keys(prefixes).find((k) => p.startsWith(k));
    return prefix ? path.join(prefixes[prefix], p.slice(prefix.length)) : null;
  };
}

export function chromiumPath() {
  return process.env.CHROMIUM_PATH || ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);
}

// -> {browser, page, messages}; `localFile(url)` maps a request URL to a file path or null (404).
export async function openOfflinePage(localFile) {
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
           "--no-first-run"],
  });
  const messages = [];
  const page = await browser.newPage();
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  await page.route("**/*", async (route) => {
    const file = localFile(route.request().url());
    if (!file || !existsSync(file)) return route.fulfill({ status: 404, body: "not found" });
    const type = TYPES[path.extname(file)] || "application/octet-stream";
    return route.fulfill({ status: 200, contentType: type, body: await readFile(file) });
  });
  return { browser, page, messages };
}
