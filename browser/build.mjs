// Builds the browser bundles with esbuild (no other build tool):
//
//   node build.mjs            dist/index.html + dist/checks.js: the page tests/browser.rs loads;
//                             dist/example.js: the example page's bundle, as it would be committed
//   node build.mjs --example  also writes ../examples/browser/app.js (commit it)
//
// The demo's descriptor set (../descriptors/demo.binpb) is embedded as bytes.
// The output depends only on the sources and the locked package versions, so
// tests/browser.rs can check that the committed examples/browser/app.js is
// what the sources build.

import { build } from "esbuild";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const exampleOut = join(here, "..", "examples", "browser", "app.js");

const common = {
  bundle: true,
  format: "iife",
  target: "es2022",
  platform: "browser",
  loader: { ".binpb": "binary" },
  legalComments: "eof",
  absWorkingDir: here,
  logLevel: "warning",
  write: false,
};

async function bundle(entry, options = {}) {
  const result = await build({ ...common, entryPoints: [join(here, entry)], outfile: "out.js", ...options });
  return result.outputFiles[0].contents;
}

await mkdir(dist, { recursive: true });
const [checks, example] = await Promise.all([
  bundle("src/checks.js"),
  bundle("src/example.js", { minify: true }),
]);
await writeFile(join(dist, "checks.js"), checks);
await writeFile(join(dist, "example.js"), example);
await copyFile(join(here, "src", "index.html"), join(dist, "index.html"));
if (process.argv.includes("--example")) {
  await writeFile(exampleOut, example);
  console.log(`wrote ${exampleOut} (${example.length} bytes)`);
}
console.log(`built ${dist}: checks.js (${checks.length} bytes), example.js (${example.length} bytes)`);
