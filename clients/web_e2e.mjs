// Drive the web app served by `avatarpipe serve` in headless Chromium (playwright-core + Debian's
// chromium), as a person would: save the key, drop a photo, wait for the avatar, look at the
// canvas, click a pose, download the GLB, try a bad file, and look at a phone-sized viewport.
//
// Usage: node web_e2e.mjs BASE_URL API_KEY PHOTO BAD_FILE OUT_DIR
//   Prints one JSON object: {ready, steps, canvas: {...}, poses: {...}, download, badFile, phone, console}
//   and writes screenshots (desktop.png, wave.png, phone.png, error.png) and avatar.glb into OUT_DIR.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";
import { chromiumPath } from "./offline_page.mjs";

const [base, apiKey, photo, badFile, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node web_e2e.mjs BASE_URL API_KEY PHOTO BAD_FILE OUT_DIR");
  process.exit(2);
}

// The avatar's silhouette: canvas pixels drawn nearly opaque (the ground shadow is translucent).
async function silhouette(page) {
  return page.evaluate(() => {
    const source = document.querySelector("#viewer canvas");
    const copy = document.createElement("canvas");
    copy.width = source.width;
    copy.height = source.height;
    const ctx = copy.getContext("2d");
    ctx.drawImage(source, 0, 0);
    const { data, width, height } = ctx.getImageData(0, 0, copy.width, copy.height);
    const mask = new Uint8Array(width * height);
    let n = 0, sx = 0, sy = 0;
    for (let i = 0; i < width * height; i++) {
      if (data[i * 4 + 3] > 200) {
        mask[i] = 1;
        n++;
        sx += i % width;
        sy += Math.floor(i / width);
      }
    }
    return { width, height, pixels: n, cx: n ? sx / n / width : null, cy: n ? sy / n / height : null,
             mask: Array.from(mask) };
  });
}

function maskDifference(a, b) {
  let differ = 0, union = 0;
  for (let i = 0; i < a.mask.length; i++) {
    if (a.mask[i] || b.mask[i]) union++;
    if (a.mask[i] !== b.mask[i]) differ++;
  }
  return union ? differ / union : 0;
}

const browser = await chromium.launch({
  executablePath: chromiumPath(),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--no-first-run"],
});
const result = { console: [] };
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  await page.goto(base);
  await page.waitForSelector("body[data-ready=true]");
  await page.fill("#api-key", apiKey);
  await page.click("#key-form button[type=submit]");

  // a bad file first: the error in words, nothing built
  await page.setInputFiles("#photo-input", badFile);
  await page.waitForSelector("#error:not([hidden])", { timeout: 30000 });
  result.badFile = { code: await page.getAttribute("#error", "data-code"), text: await page.textContent("#error") };
  await page.screenshot({ path: path.join(outDir, "error.png") });

  // the real photo: progress, then the avatar
  await page.setInputFiles("#photo-input", photo);
  await page.waitForSelector("#steps li", { timeout: 30000 });
  result.placeholder = await page.getAttribute("body", "data-avatar");
  await page.waitForFunction(() => ["loaded", "failed"].includes(document.body.dataset.avatar) || !document.querySelector("#error").hidden,
                             null, { timeout: 540000, polling: 1000 });  // fmt: skip
  result.ready = (await page.getAttribute("body", "data-avatar")) === "loaded";
  result.steps = await page.$$eval("#steps li", (items) => items.map((li) => [li.dataset.step, li.dataset.state]));
  if (!result.ready) {
    result.error = await page.textContent("#error");
  } else {
    await page.waitForTimeout(800);
    const still = await silhouette(page);
    await page.screenshot({ path: path.join(outDir, "desktop.png") });
    result.clips = await page.$$eval("#clips button", (bs) => bs.map((b) => b.dataset.clip));
    result.expressions = await page.$$eval("#faces button", (bs) => bs.map((b) => b.dataset.expression));
    await page.click('#clips button[data-clip="wave"]');
    await page.waitForTimeout(900);
    const wave = await silhouette(page);
    await page.screenshot({ path: path.join(outDir, "wave.png") });
    result.canvas = { width: still.width, height: still.height, pixels: still.pixels, cx: still.cx, cy: still.cy };
    result.poses = { wave_vs_photo_pose: maskDifference(still, wave), wave_pixels: wave.pixels };

    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    const glb = path.join(outDir, "avatar.glb");
    await download.saveAs(glb);
    result.download = glb;

    await page.click("#share");
    await page.waitForFunction(() => document.querySelector("#status-line").dataset.shareUrl, null, { timeout: 20000 });
    result.shareUrl = await page.getAttribute("#status-line", "data-share-url");
    result.uploadId = await page.evaluate(() => window.avatarApp.upload.upload_id);

    // the shared link on a phone-sized viewport, without a key
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const phonePage = await phone.newPage();
    await phonePage.goto(result.shareUrl);
    await phonePage.waitForFunction(() => document.body.dataset.avatar === "loaded", null, { timeout: 60000 });
    await phonePage.waitForTimeout(800);
    const small = await silhouette(phonePage);
    const overflow = await phonePage.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    await phonePage.screenshot({ path: path.join(outDir, "phone.png") });
    result.phone = { pixels: small.pixels, cx: small.cx, cy: small.cy, horizontalOverflow: overflow };
    await phone.close();
  }
} catch (error) {
  result.failure = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
await writeFile(path.join(outDir, "result.json"), JSON.stringify(result, null, 2));
process.stdout.write(JSON.stringify(result) + "\n");
