// Build the web app (web/) into web/dist/: one minified ES module bundle with three.js,
// plus the page and its style sheet. Usage: node clients/build_web.mjs [OUT_DIR]
import { copyFile, mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const clients = path.dirname(fileURLToPath(import.meta.url));
const web = path.resolve(clients, "..", "web");
const out = path.resolve(process.argv[2] || path.join(web, "dist"));

await mkdir(out, { recursive: true });
await build({
  entryPoints: [path.join(web, "src", "main.js")],
  outfile: path.join(out, "app.js"),
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["es2022"],
  nodePaths: [path.join(clients, "node_modules")],
  legalComments: "eof",
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) await copyFile(path.join(web, file), path.join(out, file));
console.error(`web app built into ${out}`);
