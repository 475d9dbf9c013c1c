import assert from "node:assert/strict";
import { test } from "node:test";
import { install, makeWindow } from "./dom.js";
import { pairsOf, swapIn, swapRun, swapText, watch } from "../../src/phone.js";

const pairs = pairsOf([
  { original: "+7 495 123-45-67", tracking: "+7 495 765-43-21" },
  { original: "8 800 555-35-35", tracking: "+7 (800) 100-20-30" },
]);

test("pairs keep full numbers only", () => {
  assert.deepEqual(pairsOf([{ original: "123-45", tracking: "+7 495 765-43-21" }]), []);
  assert.deepEqual(pairsOf([{ original: "+7 495 123-45-67", tracking: "12" }]), []);
  assert.deepEqual(pairs[0], ["74951234567", "74957654321"]);
});

test("a number is matched whatever its separators and rendered in the page's pattern", () => {
  const cases = [
    ["+7 495 123-45-67", "+7 495 765-43-21"],
    ["+7 (495) 123-45-67", "+7 (495) 765-43-21"],
    ["+74951234567", "+74957654321"],
    ["8 (495) 123 45 67", "8 (495) 765 43 21"], // trunk prefix kept
    ["8-495-123-45-67", "8-495-765-43-21"],
    ["(495) 123-45-67", "(495) 765-43-21"], // no country code
    ["495.123.45.67", "495.765.43.21"],
    ["8 800 555 35 35", "8 800 100 20 30"],
    ["+7 800 555-35-35", "+7 800 100-20-30"],
  ];
  for (const [page, want] of cases) assert.equal(swapRun(page, pairs), want, page);
});

test("other numbers are left alone", () => {
  for (const s of ["+7 495 123-45-68", "123-45-67", "4951234", "+7 499 123-45-67", "2024-01-15 12:30"])
    assert.equal(swapText(s, pairs), s);
});

test("numbers inside text are replaced, the text around them kept", () => {
  assert.equal(
    swapText("Звоните: +7 (495) 123-45-67, или 8 800 555-35-35!", pairs),
    "Звоните: +7 (495) 765-43-21, или 8 800 100-20-30!",
  );
});

test("text nodes and tel: links are swapped, scripts and styles are not", () => {
  const win = install(makeWindow());
  const d = win.document;
  d.body.innerHTML = `<p>Call <b>+7 (495) 123-45-67</b></p>
    <a id="tel" href="tel:+74951234567">8 495 123-45-67</a>
    <a id="web" href="/74951234567">page</a>
    <script>var phone = "+7 495 123-45-67";</script><style>/* +7 495 123-45-67 */</style>`;
  swapIn(d.body, pairs);
  assert.equal(d.querySelector("b").textContent, "+7 (495) 765-43-21");
  assert.equal(d.getElementById("tel").getAttribute("href"), "tel:+74957654321");
  assert.equal(d.getElementById("tel").textContent, "8 495 765-43-21");
  assert.equal(d.getElementById("web").getAttribute("href"), "/74951234567");
  assert.match(d.querySelector("script").textContent, /123-45-67/);
  assert.match(d.querySelector("style").textContent, /123-45-67/);
});

test("content added or re-rendered later is swapped too", async () => {
  const win = install(makeWindow());
  const d = win.document;
  d.body.innerHTML = "<div id=a>+7 495 123-45-67</div>";
  watch(d.documentElement, pairs);
  assert.equal(d.getElementById("a").textContent, "+7 495 765-43-21");
  const popup = d.createElement("div");
  popup.innerHTML = 'Our phone: <a href="tel:8-800-555-35-35">8-800-555-35-35</a>';
  d.body.appendChild(popup);
  d.getElementById("a").firstChild.data = "Phone: 8 (495) 123-45-67"; // a framework re-render
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(popup.textContent, "Our phone: 8-800-100-20-30");
  assert.equal(popup.querySelector("a").getAttribute("href"), "tel:8-800-100-20-30");
  assert.equal(d.getElementById("a").textContent, "Phone: 8 (495) 765-43-21");
  await win.happyDOM.close();
});
