// The built tracker/static/s.js, run in a happy-dom page: what a site gets from the real file.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { BUDGET_GZIP, sizes } from "../../size.js";
import { makeWindow } from "./dom.js";

const CODE = readFileSync(new URL("../../../tracker/static/s.js", import.meta.url), "utf8");
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const windows = [];
after(() => Promise.all(windows.map((w) => w.happyDOM.close())));

// A page with the install line; `numbers` answers /calltracking/numbers (404 when absent).
const boot = ({ url = "https://shop.example.com/", attrs = "", body = "", before, numbers } = {}) => {
  const win = makeWindow(url);
  windows.push(win);
  const page = { win, sent: [], beacons: [], asked: [], errors: [] };
  win.addEventListener("error", (e) => page.errors.push(e.error || e.message));
  win.document.title = "Shop";
  win.document.body.innerHTML = `${body}<script async type="text/x-not-run" src="https://c.example/s.js" data-site="KEY-123456" ${attrs}></script>`;
  win.fetch = async (u, init) => {
    if (u.startsWith("https://c.example/calltracking/numbers")) {
      page.asked.push(u);
      return numbers ? { status: 200, ok: true, json: async () => numbers } : { status: 404, ok: false, json: async () => ({ error: "no" }) };
    }
    assert.equal(u, "https://c.example/collect");
    const b = JSON.parse(init.body);
    page.sent.push(b);
    return { status: 202, ok: true, json: async () => ({ client_id: b.client_id || "minted-client-id-1", accepted: b.events.length, rejected: [] }) };
  };
  win.navigator.sendBeacon = (u, b) => page.beacons.push(JSON.parse(b)) > 0;
  page.globalsBefore = new Set(Object.keys(win));
  if (before) win.eval(before);
  // What a browser does while it runs a classic script (happy-dom's eval does not).
  const tag = win.document.querySelector("script[data-site]");
  Object.defineProperty(win.document, "currentScript", { get: () => tag, configurable: true });
  win.eval(CODE);
  Object.defineProperty(win.document, "currentScript", { get: () => null, configurable: true });
  page.events = () => page.sent.flatMap((b) => b.events);
  return page;
};

test("the built file is within the size budget", () => {
  const s = sizes(CODE);
  assert.ok(s.gzip <= BUDGET_GZIP, `gzip ${s.gzip} > ${BUDGET_GZIP}`);
  assert.ok(s.brotli < s.gzip);
});

test("pageview: the whole URL with UTM tags and click ids, referrer and title", async () => {
  const url = "https://shop.example.com/land?utm_source=yandex&utm_medium=cpc&utm_campaign=spring&yclid=777&gclid=Cj0K#offer";
  const p = boot({ url });
  await wait(20);
  assert.equal(p.sent.length, 1);
  const [b] = p.sent;
  assert.equal(b.site, "KEY-123456");
  assert.equal("client_id" in b, false, "first contact: the collector names the visitor");
  const [pv] = b.events;
  assert.equal(pv.type, "pageview");
  assert.equal(pv.url, url);
  assert.equal(pv.title, "Shop");
  assert.equal(typeof pv.referrer, "string");
  assert.match(pv.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.ok(Math.abs(pv.ts - Date.now()) < 5000);
  // The echoed id is kept in the cookie and localStorage.
  assert.match(p.win.document.cookie, /skvoz_cid=minted-client-id-1/);
  assert.equal(p.win.localStorage.getItem("skvoz_cid"), "minted-client-id-1");
  assert.equal(p.win.skvoz("client_id"), "minted-client-id-1");
});

test("a cross-domain id is adopted and leaves the address bar; UTM tags stay", async () => {
  const stamp = Date.now();
  const p = boot({ url: `https://b.example.kz/p?utm_source=partner&_skvoz_cid=visitor-from-a1.${stamp}&yclid=5` });
  assert.equal(p.win.location.href, "https://b.example.kz/p?utm_source=partner&yclid=5");
  await wait(20);
  assert.equal(p.sent[0].client_id, "visitor-from-a1");
  assert.equal(p.sent[0].events[0].url, "https://b.example.kz/p?utm_source=partner&yclid=5");
});

test("calls queued before the script loaded run after the first pageview", async () => {
  const p = boot({
    before: `window.skvoz = window.skvoz || function(){(skvoz.q=skvoz.q||[]).push(arguments)};
             skvoz('goal', 'signup', {value: 100});`,
  });
  p.win.skvoz("goal", "cart");
  await wait(1100);
  const evs = p.events();
  assert.deepEqual(evs.map((e) => [e.type, e.name]), [["pageview", undefined], ["goal", "signup"], ["goal", "cart"]]);
  assert.deepEqual(evs[1].props, { value: 100 });
  assert.equal(new Set(evs.map((e) => e.id)).size, 3);
});

test("the counter adds no global but skvoz", async () => {
  const p = boot();
  p.win.skvoz("goal", "x");
  await wait(20);
  const added = Object.keys(p.win).filter((k) => !p.globalsBefore.has(k));
  assert.deepEqual(added, ["skvoz"]);
});

test("SPA navigation: pushState and popstate count, hash changes and same-URL replaceState do not", async () => {
  const p = boot({ url: "https://shop.example.com/a" });
  await wait(20);
  p.win.history.replaceState({ x: 1 }, "", "/a"); // a router storing state
  p.win.history.pushState({}, "", "/a#section");
  p.win.history.pushState({}, "", "/b?tab=2");
  p.win.document.title = "Page B"; // set after the URL, as frameworks do
  await wait(1200);
  p.win.history.back();
  await wait(1300);
  const pvs = p.events().filter((e) => e.type == "pageview");
  assert.deepEqual(
    pvs.map((e) => [new URL(e.url).pathname + new URL(e.url).search, e.referrer && new URL(e.referrer).pathname]),
    [["/a", ""], ["/b?tab=2", "/a"], ["/a", "/b"]],
  );
  assert.equal(pvs[1].title, "Page B");
});

test("form submit: a lead with its contacts, and the client id rides along in the form", async () => {
  const p = boot({
    body: `<form id="callback" method="post" action="/lead"><input name="name" value="Anna">
      <input type="tel" name="phone" value="+7 (999) 123-45-67"><input type="password" id="pw"></form>
      <form id="order"><input name="phone" value="8 999 765 43 21"><input name="card" value="4111111111111111"></form>`,
  });
  await wait(20);
  const d = p.win.document;
  d.getElementById("callback").dispatchEvent(new p.win.Event("submit", { bubbles: true, cancelable: true }));
  const order = d.getElementById("order");
  order.dispatchEvent(new p.win.Event("submit", { bubbles: true, cancelable: true }));
  assert.equal(order.querySelector("[name=skvoz_cid]").value, "minted-client-id-1");
  await wait(20);
  const forms = p.events().filter((e) => e.type == "form");
  assert.deepEqual(forms.map((e) => [e.name, e.contact]), [["order", { phone: "8 999 765 43 21" }]], "the form with a password is not a lead");
  assert.equal(d.getElementById("callback").querySelector("[name=skvoz_cid]"), null);
});

test("links to the project's other domains are decorated when followed", async () => {
  const p = boot({
    attrs: 'data-domains="example.com, example.kz"',
    body: '<a id="kz" href="https://example.kz/cart">kz</a><a id="self" href="https://shop.example.com/x">x</a><a id="ext" href="https://other.org/">o</a>',
  });
  await wait(20);
  const d = p.win.document;
  for (const id of ["kz", "self", "ext"]) {
    const a = d.getElementById(id);
    a.addEventListener("click", (e) => e.preventDefault());
    a.dispatchEvent(new p.win.MouseEvent("click", { bubbles: true, cancelable: true }));
  }
  assert.match(d.getElementById("kz").href, /^https:\/\/example\.kz\/cart\?_skvoz_cid=minted-client-id-1\.\d+$/);
  assert.equal(d.getElementById("self").href, "https://shop.example.com/x");
  assert.equal(d.getElementById("ext").href, "https://other.org/");
});

test("data-require-consent: nothing is sent or stored until consent; withdrawal forgets", async () => {
  const p = boot({ attrs: "data-require-consent", url: "https://shop.example.com/?utm_source=vk" });
  p.win.skvoz("goal", "early");
  await wait(50);
  assert.equal(p.sent.length, 0);
  assert.equal(p.win.document.cookie, "");
  assert.equal(p.win.localStorage.length, 0);
  p.win.skvoz("consent", true);
  await wait(50);
  assert.deepEqual(p.events().map((e) => [e.type, e.url]), [["pageview", "https://shop.example.com/?utm_source=vk"]]);
  assert.match(p.win.document.cookie, /skvoz_cid=minted/);
  p.win.skvoz("consent", false);
  p.win.skvoz("goal", "after");
  await wait(1100);
  assert.equal(p.events().length, 1);
  assert.doesNotMatch(p.win.document.cookie, /skvoz_cid=minted/);
  assert.equal(p.win.localStorage.getItem("skvoz_cid"), "");
});

test("data-respect-dnt: Do-Not-Track visitors are not tracked; others are", async () => {
  const dnt = "Object.defineProperty(navigator, 'doNotTrack', {value: '1'})";
  const off = boot({ attrs: "data-respect-dnt", before: dnt });
  const ignored = boot({ before: dnt });
  await wait(50);
  assert.equal(off.sent.length, 0);
  assert.equal(ignored.sent.length, 1);
});

test("call tracking: numbers replaced after the first pageview; 404 leaves the page alone", async () => {
  const body = '<p id="ph">Звоните: <a href="tel:+74951234567">8 (495) 123-45-67</a></p>';
  const none = boot({ body });
  const some = boot({ body, numbers: { numbers: [{ original: "+7 495 123-45-67", tracking: "+7 495 765-43-21" }], ttl: 600 } });
  await wait(50);
  assert.equal(none.asked.length, 1);
  assert.match(none.asked[0], /\?site=KEY-123456&client_id=minted-client-id-1$/);
  assert.equal(none.win.document.getElementById("ph").outerHTML, body);
  const a = some.win.document.querySelector("#ph a");
  assert.equal(a.textContent, "8 (495) 765-43-21");
  assert.equal(a.getAttribute("href"), "tel:+74957654321");
  // Within the ttl the next page applies the cached numbers at once, without asking.
  const cached = JSON.parse(some.win.localStorage.getItem("skvoz_ct"));
  assert.ok(cached.x > Date.now() + 590e3);
});

test("errors inside the counter never reach the page and are counted", async () => {
  const p = boot({
    before: `Object.defineProperty(window, 'localStorage', {get() { throw new Error('denied') }});
             window.fetch = () => { throw new Error('boom') };`,
  });
  p.win.skvoz("goal", "x", { value: 1 });
  p.win.history.pushState({}, "", "/next");
  await wait(1200);
  assert.deepEqual(p.errors, []);
  assert.ok(p.win.skvoz("stats").errors > 0);
});

test("a broken cached call-tracking reply costs nothing but an error count", async () => {
  const p = boot({
    before: `localStorage.skvoz_ct = JSON.stringify({numbers: [{original: 5, tracking: null}], x: Date.now() + 1e6})`,
  });
  p.win.skvoz("goal", "still-counted");
  await wait(1100);
  assert.deepEqual(p.events().map((e) => e.type), ["pageview", "goal"]);
  assert.equal(p.win.skvoz("stats").errors, 1);
  assert.deepEqual(p.errors, []);
});
