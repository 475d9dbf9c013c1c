// Bundles src/ into one dependency-free, minified file at tracker/static/s.js (served by the
// collector as /s.js), prints its size and fails when it grows past the gzip budget.
// esbuild bundles; terser squeezes harder than esbuild's minifier (~100 B gzip here).
import { build } from "esbuild";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { minify } from "terser";
import { BUDGET_GZIP, sizes } from "./size.js";

const here = dirname(fileURLToPath(import.meta.url));
export const OUT = join(here, "..", "tracker", "static", "s.js");

const bundle = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "esm", // flat top level for terser; wrapped in a function below
  target: "es2018",
  write: false,
});
const min = await minify(bundle.outputFiles[0].text, {
  ecma: 2018,
  module: true,
  toplevel: true,
  compress: { passes: 5, inline: 1, unsafe: true, unsafe_arrows: true, unsafe_methods: true, unsafe_comps: true, pure_getters: true, booleans_as_integers: true },
  mangle: { toplevel: true },
  format: { ascii_only: false },
});
// The wrapper keeps every name local: the only global the counter sets is `skvoz`.
const code = "(()=>{" + min.code + "})()\n";
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, code);

const s = sizes(code);
console.log(`s.js: ${s.raw} B raw, ${s.gzip} B gzip, ${s.brotli} B brotli (budget ${BUDGET_GZIP} B gzip)`);
if (s.gzip > BUDGET_GZIP) {
  console.error(`s.js is over budget by ${s.gzip - BUDGET_GZIP} B gzip`);
  process.exit(1);
}
