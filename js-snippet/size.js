// Size budget of the built counter, shared by the build and the tests.
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

export const BUDGET_GZIP = 2560; // bytes

export const sizes = (code) => {
  const buf = Buffer.from(code);
  return {
    raw: buf.length,
    gzip: gzipSync(buf, { level: 9 }).length,
    brotli: brotliCompressSync(buf, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
  };
};
