// Load a VRM with @pixiv/three-vrm in headless Chromium (playwright-core + Debian's chromium),
// offline. Usage: node vrm_check.mjs FILE.vrm  -> one JSON object on stdout
//   {vrm: {...what three-vrm read (harness/vrm.js)...}, console: [...]}
import { parseCommandLine } from "./cli_args.mjs";
import { ORIGIN, localFiles, openOfflinePage } from "./offline_page.mjs";

const [vrmPath] = parseCommandLine("node vrm_check.mjs FILE.vrm").positionals;
const { browser, page, messages } = await openOfflinePage(localFiles({ "/avatar.vrm": vrmPath }));
try {
  await page.goto(`${ORIGIN}/harness/vrm.html`);
  await page.waitForFunction(() => window.vrmHarness && window.vrmHarness.ready, null, { timeout: 30000 });
  const vrm = await page.evaluate((url) => window.vrmHarness.load(url), `${ORIGIN}/avatar.vrm`);
  console.log(JSON.stringify({ vrm, console: messages }));
} catch (error) {
  console.log(JSON.stringify({ error: String((error && error.stack) || error), console: messages }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
