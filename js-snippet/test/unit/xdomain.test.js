import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_AGE, adopt, decorate } from "../../src/xdomain.js";

globalThis.location = { href: "https://a.ru/page" };
const domains = ["a.ru", "b.kz"];
const now = 1_700_000_000_000;
const stamp = String(now);

test("links to the project's other domains carry the client id and a timestamp", () => {
  assert.equal(decorate("https://b.kz/", domains, "cid-1234567", "a.ru", now), `https://b.kz/?_skvoz_cid=cid-1234567.${stamp}`);
  assert.equal(
    decorate("https://shop.b.kz/cart?x=1#top", domains, "cid-1234567", "a.ru", now),
    `https://shop.b.kz/cart?x=1&_skvoz_cid=cid-1234567.${stamp}#top`,
  );
  // A link already decorated gets a fresh value, not a second parameter.
  const again = decorate(`https://b.kz/?_skvoz_cid=old-1234567.1`, domains, "cid-1234567", "a.ru", now);
  assert.equal(again, `https://b.kz/?_skvoz_cid=cid-1234567.${stamp}`);
});

test("other links are left alone", () => {
  for (const href of ["https://a.ru/x", "https://other.com/", "https://notb.kz/", "mailto:x@b.kz", "tel:+7123"])
    assert.equal(decorate(href, domains, "cid-1234567", "a.ru", now), "", href);
  assert.equal(decorate("https://b.kz/", domains, "", "a.ru", now), "", "no id yet");
  assert.equal(decorate("https://b.kz/", [""], "cid-1234567", "a.ru", now), "", "no domains configured");
});

test("the landing side adopts a fresh id and cuts the parameter out, keeping the rest", () => {
  const v = `_skvoz_cid=cid-1234567.${stamp}`;
  for (const [href, clean] of [
    [`https://b.kz/?${v}`, "https://b.kz/"],
    [`https://b.kz/p?${v}&utm_source=ya&yclid=1`, "https://b.kz/p?utm_source=ya&yclid=1"],
    [`https://b.kz/p?utm_source=ya&${v}&gclid=Cj0%2B`, "https://b.kz/p?utm_source=ya&gclid=Cj0%2B"],
    [`https://b.kz/p?a=1&${v}#/route?x`, "https://b.kz/p?a=1#/route?x"],
  ])
    assert.deepEqual(adopt(href, now + 2000), [clean, "cid-1234567"], href);
});

test("stale, future or malformed ids are not adopted but still removed", () => {
  const late = now + MAX_AGE + 1;
  assert.deepEqual(adopt(`https://b.kz/?_skvoz_cid=cid-1234567.${stamp}`, late), ["https://b.kz/", ""]);
  assert.deepEqual(adopt(`https://b.kz/?_skvoz_cid=cid-1234567.${stamp}`, now - MAX_AGE - 1), ["https://b.kz/", ""]);
  assert.deepEqual(adopt("https://b.kz/?_skvoz_cid=cid-1234567&x=1", now), ["https://b.kz/?x=1", ""]);
  assert.deepEqual(adopt(`https://b.kz/?_skvoz_cid=short.${stamp}`, now), ["https://b.kz/", ""]);
  assert.deepEqual(adopt("https://b.kz/?utm_source=x", now), ["https://b.kz/?utm_source=x", ""]);
});
