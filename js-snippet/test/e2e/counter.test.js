// The counter in real Chromium against a real `skvoz run`: what a site owner would see.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { channels, eventually, launch, report, startCollector, startStatic } from "./harness.js";

// One project per scenario, on its own *.localhost names, so report totals do not mix.
const PROJECTS = [
  { id: "ident", sites: [{ domain: "site-a.localhost", key: "key-site-a-0001" }, { domain: "site-b.localhost", key: "key-site-b-0001" }] },
  { id: "leads", sites: [{ domain: "leads.localhost", key: "key-leads-0001" }] },
  { id: "offline", sites: [{ domain: "offline.localhost", key: "key-offline-0001" }] },
  { id: "calls", sites: [{ domain: "calls.localhost", key: "key-calls-0001" }] },
];

let collector, web, browser;
const sites = {};
const at = (host, path = "/") => `http://${host}:${web.port}${path}`;

before(async () => {
  collector = await startCollector(PROJECTS);
  web = await startStatic(collector.url, sites);
  for (const p of PROJECTS) for (const s of p.sites) sites[s.domain] = { key: s.key };
  Object.assign(sites["site-a.localhost"], { domains: "site-a.localhost,site-b.localhost", other: at("site-b.localhost", "/landing?from=a") });
  Object.assign(sites["site-b.localhost"], { domains: "site-a.localhost,site-b.localhost", other: at("site-a.localhost") });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await web?.stop();
  await collector?.stop();
});

// A fresh browser profile (cookies, storage) with every /collect exchange recorded.
const visitor = async () => {
  const context = await browser.newContext();
  const exchanges = [];
  const sent = []; // every /collect body, beacons included (they get no readable reply)
  const errors = [];
  context.on("request", (r) => r.url().endsWith("/collect") && r.method() == "POST" && sent.push(JSON.parse(r.postData())));
  context.on("response", async (r) => {
    if (!r.url().endsWith("/collect") || r.request().method() != "POST") return;
    const body = JSON.parse(r.request().postData());
    exchanges.push({ body, status: r.status(), reply: await r.json().catch(() => null) });
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(e));
  const accepted = (pred) => eventually(async () => exchanges.filter((x) => x.status == 202 && x.body.events.some(pred)), (xs) => xs.length > 0, 30_000);
  return { context, page, exchanges, sent, errors, accepted };
};

test("a visitor keeps one client id across reloads and both domains; pageviews and SPA steps reach the reports", async () => {
  const { context, page, exchanges, errors, accepted } = await visitor();
  await page.goto(at("site-a.localhost", "/?utm_source=e2e&utm_medium=cpc&utm_campaign=launch"));
  const [first] = await accepted((e) => e.type == "pageview");
  assert.equal("client_id" in first.body, false, "first contact goes without an id");
  const cid = first.reply.client_id;
  assert.match(cid, /^[\w-]{10,}$/);
  assert.equal(first.body.events[0].url, at("site-a.localhost", "/?utm_source=e2e&utm_medium=cpc&utm_campaign=launch"));
  await page.waitForFunction((id) => skvoz("client_id") == id, cid);
  const cookies = await context.cookies(at("site-a.localhost"));
  assert.equal(cookies.find((c) => c.name == "skvoz_cid")?.value, cid);

  await page.reload();
  await eventually(async () => exchanges.filter((x) => x.status == 202).length, (n) => n >= 2, 15_000);
  assert.equal(exchanges.at(-1).body.client_id, cid, "the reload is the same visitor");

  // Follow the link to the other domain: it carries the id, the landing adopts and hides it.
  await Promise.all([page.waitForURL(/site-b\.localhost/), page.click("#other")]);
  await page.waitForFunction((id) => window.skvoz && skvoz("client_id") == id, cid);
  assert.equal(page.url(), at("site-b.localhost", "/landing?from=a"));
  const [onB] = await accepted((e) => e.url.startsWith(at("site-b.localhost")));
  assert.equal(onB.body.client_id, cid);
  assert.equal(onB.body.site, "key-site-b-0001");
  const bCookies = await context.cookies(at("site-b.localhost"));
  assert.equal(bCookies.find((c) => c.name == "skvoz_cid")?.value, cid);

  // A SPA step.
  await page.click("#spa");
  const [spa] = await accepted((e) => e.type == "pageview" && e.url.endsWith("/spa/next"));
  const step = spa.body.events.find((e) => e.url.endsWith("/spa/next"));
  assert.equal(step.referrer, at("site-b.localhost", "/landing?from=a"));
  assert.equal(step.title, "Next step");

  const totals = (await eventually(() => channels(collector.url, "ident"), (r) => r.totals.visits >= 1)).totals;
  assert.equal(totals.visitors, 1, "two domains, one visitor");
  const funnel = await eventually(
    () => report(collector.url, "ident", "funnel", { steps: ["pageview:/", "pageview:/landing", "pageview:/spa/next"], window: "3600" }),
    (r) => r.steps[2].persons == 1,
  );
  assert.deepEqual(funnel.steps.map((s) => s.persons), [1, 1, 1]);
  assert.deepEqual(errors, []);
  await context.close();
});

test("a form submit becomes a lead with its phone, and the form carries the client id", async () => {
  const { context, page, sent, errors, accepted } = await visitor();
  await page.goto(at("leads.localhost", "/?utm_source=e2e"));
  const [first] = await accepted((e) => e.type == "pageview");
  const cid = first.reply.client_id;
  await page.fill("[name=name]", "Анна");
  await page.fill("[name=phone]", "+7 (916) 555-12-34");
  await page.fill("[name=email]", "anna@example.ru");
  await Promise.all([page.waitForURL(/\/thanks$/), page.click("#send")]);

  const post = web.posts.find((p) => p.host == "leads.localhost");
  assert.equal(post.body.get("skvoz_cid"), cid, "a lead reaching a CRM carries the client id");
  assert.equal(post.body.get("phone"), "+7 (916) 555-12-34");

  const totals = (await eventually(() => channels(collector.url, "leads"), (r) => r.totals.leads >= 1)).totals;
  assert.equal(totals.leads, 1);
  // The form event itself, sent with its contact (by beacon while the page unloads, or fetch).
  const forms = sent.flatMap((b) => b.events.filter((e) => e.type == "form").map((e) => [b.client_id, e]));
  assert.equal(new Set(forms.map(([, e]) => e.id)).size, 1);
  const [fcid, ev] = forms[0];
  assert.equal(fcid, cid);
  assert.deepEqual(ev.contact, { name: "Анна", phone: "+7 (916) 555-12-34", email: "anna@example.ru" });
  assert.equal(ev.name, "callback");
  assert.deepEqual(errors, []);
  await context.close();
});

test("events made offline are kept and delivered exactly once when the network is back", async () => {
  const { context, page, exchanges, errors, accepted } = await visitor();
  await page.goto(at("offline.localhost"));
  await accepted((e) => e.type == "pageview");
  await context.setOffline(true);
  await page.evaluate(() => skvoz("goal", "signup", { value: 500 }));
  // The batch timer fires, the send fails, the goal waits in the outbox.
  await page.waitForFunction(() => JSON.parse(localStorage.skvoz_q || "[]").some((e) => e.name == "signup"));
  await page.waitForTimeout(2500);
  const id = await page.evaluate(() => JSON.parse(localStorage.skvoz_q).find((e) => e.name == "signup").id);
  assert.equal(exchanges.filter((x) => x.body.events.some((e) => e.id == id)).length, 0);

  await context.setOffline(false);
  await accepted((e) => e.id == id);
  await page.waitForFunction(() => JSON.parse(localStorage.skvoz_q || "[]").length == 0);
  await page.waitForTimeout(1500); // room for a stray resend to show up
  const delivered = exchanges.filter((x) => x.status == 202 && x.body.events.some((e) => e.id == id));
  assert.equal(delivered.length, 1, "sent once after the network came back");
  assert.equal(delivered[0].reply.accepted, delivered[0].body.events.length);

  const totals = (await eventually(() => channels(collector.url, "offline"), (r) => r.totals.conversions >= 1)).totals;
  assert.equal(totals.conversions, 1);
  assert.deepEqual(errors, []);
  await context.close();
});

test("call tracking: the page's number is swapped, in its own format, when the collector serves one", async () => {
  const { context, page, errors, accepted } = await visitor();
  // The real endpoint answers 404 today: stand in for the future one.
  await page.route("**/calltracking/numbers?*", (route) =>
    route.fulfill({
      status: 200,
      contentType: "application/json",
      headers: { "Access-Control-Allow-Origin": "*" },
      body: JSON.stringify({ numbers: [{ original: "+7 495 123-45-67", tracking: "+7 495 765-43-21" }], ttl: 600 }),
    }),
  );
  await page.goto(at("calls.localhost"));
  await accepted((e) => e.type == "pageview");
  await page.waitForFunction(() => document.getElementById("tel").textContent == "+7 (495) 765-43-21");
  assert.equal(await page.getAttribute("#tel", "href"), "tel:+74957654321");
  await page.evaluate(() => addLater());
  await page.waitForFunction(() => document.querySelector("#later a")?.textContent == "8 495 765 43 21");
  assert.equal(await page.getAttribute("#later a", "href"), "tel:84957654321");
  assert.deepEqual(errors, []);
  await context.close();
});

test("call tracking: the real endpoint's 404 leaves the page alone", async () => {
  const { context, page, errors, accepted } = await visitor();
  // The 404 carries no CORS headers, so the browser reports a failed request; either way the
  // counter must leave the page alone.
  const asked = page.waitForEvent("requestfinished", { predicate: (r) => r.url().includes("/calltracking/numbers") })
    .catch(() => null);
  const failed = page.waitForEvent("requestfailed", { predicate: (r) => r.url().includes("/calltracking/numbers") })
    .catch(() => null);
  await page.goto(at("calls.localhost"));
  const [first] = await accepted((e) => e.type == "pageview");
  const url = (await Promise.race([asked, failed])).url();
  assert.equal(url, `${collector.url}/calltracking/numbers?site=key-calls-0001&client_id=${first.reply.client_id}`);
  assert.equal((await fetch(url)).status, 404, "what the real endpoint answers today");
  await page.evaluate(() => addLater());
  await page.waitForTimeout(300);
  assert.equal(await page.textContent("#tel"), "+7 (495) 123-45-67");
  assert.equal(await page.getAttribute("#tel", "href"), "tel:+74951234567");
  assert.equal(await page.textContent("#later a"), "8 495 123 45 67");
  assert.deepEqual(errors, []);
  await context.close();
});
