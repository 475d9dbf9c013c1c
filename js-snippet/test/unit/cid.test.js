import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";
import { VALID, cookieDomain, loadCid } from "../../src/cid.js";

// A browser-like cookie jar: refuses domains that are public suffixes or not the host's own.
const SUFFIXES = new Set(["com", "ru", "uk", "co.uk", "io", "github.io", "kz", "com.kz", "localhost"]);
const jar = (host) => {
  const store = new Map();
  return {
    writes: [],
    get cookie() {
      return [...store].map(([k, v]) => `${k}=${v.value}`).join("; ");
    },
    set cookie(text) {
      this.writes.push(text);
      const [pair, ...attrs] = text.split(";");
      const [name, value] = pair.split("=");
      const domain = attrs.map((a) => a.split("=")).find(([k]) => k.trim() == "domain")?.[1];
      if (domain && (SUFFIXES.has(domain) || (host != domain && !host.endsWith("." + domain)))) return;
      if (/max-age=0/.test(text)) store.delete(name);
      else store.set(name, { value, domain: domain || host });
    },
    store,
  };
};

let storage;
beforeEach(() => {
  storage = new Map();
  globalThis.localStorage = new Proxy({}, {
    get: (_, k) => storage.get(k),
    set: (_, k, v) => (storage.set(k, String(v)), true),
  });
});

test("the cookie goes on the registrable domain, found by asking the browser", () => {
  for (const [host, want] of [
    ["example.com", "example.com"],
    ["www.shop.example.com", "example.com"],
    ["a.b.example.co.uk", "example.co.uk"],
    ["user.github.io", "user.github.io"],
    ["site.com.kz", "site.com.kz"],
    ["site-a.localhost", "site-a.localhost"],
  ]) {
    globalThis.document = jar(host);
    assert.equal(cookieDomain(host), ";domain=" + want, host);
    assert.equal(document.store.size, 0, "the probe cookie is removed");
  }
});

test("IP addresses and single-label hosts get a host-only cookie", () => {
  for (const host of ["127.0.0.1", "10.1.2.3", "localhost", "[::1]"]) {
    globalThis.document = jar(host);
    assert.equal(cookieDomain(host), "", host);
    assert.deepEqual(document.writes, [], "no probing");
  }
});

test("the client id is restored from the cookie or else from localStorage", () => {
  globalThis.document = jar("example.com");
  assert.equal(loadCid(), "");
  storage.set("skvoz_cid", "from-storage-1");
  assert.equal(loadCid(), "from-storage-1");
  document.cookie = "skvoz_cid=from-cookie-1";
  assert.equal(loadCid(), "from-cookie-1");
  document.cookie = "skvoz_cid=bad";
  assert.equal(loadCid(), "from-storage-1", "a malformed cookie is ignored");
  storage.set("skvoz_cid", "");
  assert.equal(loadCid(), "");
});

test("only sane ids are accepted", () => {
  for (const ok of ["0f8fad5b-d9cb-469f-a165-70867728950e", "AbC_123-xyz"]) assert.ok(VALID.test(ok), ok);
  for (const bad of [undefined, null, "undefined", "short", "", "a b c d e f g h", "<script>x</script>", "x".repeat(65), "id.with.dots"])
    assert.ok(!VALID.test(bad), bad);
});

test("saving writes both stores with the right attributes, and an empty id deletes them", async () => {
  globalThis.location = { hostname: "www.example.com" };
  globalThis.document = jar("www.example.com");
  const { saveCid } = await import("../../src/cid.js?save");
  saveCid("abcdef123456");
  assert.equal(storage.get("skvoz_cid"), "abcdef123456");
  assert.deepEqual(document.store.get("skvoz_cid"), { value: "abcdef123456", domain: "example.com" });
  assert.match(document.writes.at(-1), /^skvoz_cid=abcdef123456;path=\/;max-age=34560000;domain=example.com$/);
  saveCid("");
  assert.equal(document.store.has("skvoz_cid"), false);
  assert.equal(storage.get("skvoz_cid"), "");
});
