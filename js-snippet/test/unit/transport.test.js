import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";
import { BATCH, LIMIT, backoff, transport } from "../../src/transport.js";

const URL = "https://c.example/collect";
let storage, requests, beacons, replies, cid;
const settle = () => new Promise((r) => setImmediate(r));
const outbox = () => JSON.parse(storage.get("skvoz_q") || "[]");
let n = 0;
const event = (type = "goal") => ({ id: `00000000-0000-4000-8000-${String(++n).padStart(12, "0")}`, type, ts: Date.now() });

// reply(body) decides each fetch's outcome: a status and a JSON body, or a thrown network error.
let reply;
const ok = (body) => ({ status: 202, ok: true, json: async () => ({ accepted: body.events.length, rejected: [], client_id: body.client_id || "minted-id-123" }) });

beforeEach(() => {
  mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_700_000_000_000 });
  storage = new Map();
  requests = [];
  beacons = [];
  replies = [];
  cid = "";
  reply = ok;
  globalThis.localStorage = new Proxy({}, { get: (_, k) => storage.get(k), set: (_, k, v) => (storage.set(k, String(v)), true) });
  globalThis.navigator = { sendBeacon: (url, body) => (beacons.push(JSON.parse(body)), true) };
  globalThis.fetch = async (url, init) => {
    assert.equal(url, URL);
    const body = JSON.parse(init.body);
    requests.push({ body, init });
    const r = reply(body);
    if (r instanceof Error) throw r;
    return r;
  };
});

afterEach(() => mock.timers.reset());

// Like main: the first reply's client_id becomes the known id.
const make = () =>
  transport(URL, "site-key-1", () => cid, (j, first) => {
    replies.push([j, first]);
    if (first) cid = j.client_id;
  });

test("events are batched on a short timer and sent as text with credentials", async () => {
  const t = make();
  t.push(event("pageview"), 1000);
  t.push(event(), 1000);
  t.push(event(), 1000);
  assert.equal(requests.length, 0);
  assert.equal(outbox().length, 3, "waiting events are already in the outbox");
  mock.timers.tick(1000);
  await settle();
  assert.equal(requests.length, 1);
  const { body, init } = requests[0];
  assert.equal(body.site, "site-key-1");
  assert.equal(body.events.length, 3);
  assert.equal(typeof init.body, "string", "a string body goes as text/plain: no CORS preflight");
  assert.equal(init.method, "POST");
  assert.equal(init.credentials, "include");
  assert.deepEqual(outbox(), []);
});

test("first contact: no client_id is sent, one request at a time, the reply names the visitor", async () => {
  const t = make();
  t.push(event("pageview"), 0);
  mock.timers.tick(0);
  t.push(event(), 0); // arrives while the first request is out
  mock.timers.tick(0);
  assert.equal(requests.length, 1);
  assert.equal("client_id" in requests[0].body, false);
  await settle();
  assert.deepEqual(replies[0].map((x) => x.client_id || x), ["minted-id-123", true]);
  assert.equal(requests.length, 2, "the reply released the next batch");
  assert.equal(requests[1].body.client_id, "minted-id-123");
  assert.equal(replies[1][1], false);
  assert.deepEqual(outbox(), []);
});

test("failed sends stay in the outbox and are retried with the same ids, with backoff", async () => {
  const t = make();
  cid = "known-client-1";
  let fail = 3;
  reply = (body) => (fail-- > 0 ? new TypeError("Failed to fetch") : ok(body));
  const e = event();
  t.push(e, 0);
  mock.timers.tick(0);
  await settle();
  assert.equal(requests.length, 1);
  assert.deepEqual(outbox().map((x) => x.id), [e.id]);
  // Nothing before the first backoff (at least 1 s), and new events do not hurry it.
  t.push(event(), 0);
  mock.timers.tick(999);
  await settle();
  assert.equal(requests.length, 1);
  mock.timers.tick(2000);
  await settle();
  assert.equal(requests.length, 2);
  mock.timers.tick(4000);
  await settle();
  assert.equal(requests.length, 3);
  mock.timers.tick(8000);
  await settle();
  assert.equal(requests.length, 4);
  for (const r of requests) assert.equal(r.body.events[0].id, e.id, "every retry carries the same event id");
  assert.deepEqual(outbox(), []);
});

test("flush() retries at once (the page came back online)", async () => {
  const t = make();
  cid = "known-client-1";
  reply = () => new TypeError("offline");
  t.push(event(), 0);
  mock.timers.tick(0);
  await settle();
  reply = ok;
  t.flush();
  await settle();
  assert.equal(requests.length, 2);
  assert.deepEqual(outbox(), []);
});

test("5xx and 429 are retried; other 4xx drop the batch", async () => {
  for (const [status, kept] of [[503, 1], [500, 1], [429, 1], [400, 0], [413, 0], [403, 0]]) {
    storage.clear();
    requests = [];
    mock.timers.reset(); // drops the previous round's retry timers
    mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_700_000_000_000 });
    const t = make();
    cid = "known-client-1";
    reply = () => ({ status, ok: false, json: async () => ({ error: "x" }) });
    t.push(event(), 0);
    mock.timers.tick(0);
    await settle();
    assert.equal(outbox().length, kept, `status ${status}`);
    mock.timers.tick(2000); // the first backoff is 1-2 s
    await settle();
    assert.equal(requests.length, 1 + kept, `status ${status}: retried only when kept`);
  }
});

test("the outbox is bounded: the oldest events go first", async () => {
  const t = make();
  reply = () => new TypeError("offline");
  const all = [];
  for (let i = 0; i < LIMIT + 30; i++) t.push(all[i] = event(), 1000);
  const q = outbox();
  assert.equal(q.length, LIMIT);
  assert.deepEqual(q.map((e) => e.id), all.slice(-LIMIT).map((e) => e.id));
});

test("a request carries at most BATCH events; the rest follow", async () => {
  const t = make();
  cid = "known-client-1";
  for (let i = 0; i < BATCH * 2 + 5; i++) t.push(event(), 0);
  mock.timers.tick(0);
  for (let i = 0; i < 5; i++) await settle();
  assert.deepEqual(requests.map((r) => r.body.events.length), [BATCH, BATCH, 5]);
  assert.deepEqual(outbox(), []);
});

test("backoff grows exponentially to a one minute cap, jittered down by at most half", () => {
  for (let f = 1; f < 15; f++) {
    const top = Math.min(60000, 1000 * 2 ** f);
    for (let i = 0; i < 50; i++) {
      const b = backoff(f);
      assert.ok(b <= top && b >= top / 2, `fails=${f}: ${b}`);
    }
  }
});

test("a closing page hands the batch to sendBeacon and forgets it", async () => {
  const t = make();
  cid = "known-client-1";
  t.push(event(), 1000);
  t.flush(1);
  assert.equal(beacons.length, 1);
  assert.equal(beacons[0].client_id, "known-client-1");
  assert.equal(requests.length, 0);
  assert.deepEqual(outbox(), []);
});

test("a closing page keeps the batch when the collector is failing or the visitor is new", async () => {
  const t = make();
  reply = () => new TypeError("offline");
  cid = "";
  t.push(event(), 1000);
  t.flush(1); // first contact: only fetch can bring the id back
  assert.equal(beacons.length, 0);
  assert.equal(requests.length, 1);
  await settle();
  assert.equal(outbox().length, 1);
  cid = "known-client-1";
  t.flush(1); // failing collector: keep it for the next page
  assert.equal(beacons.length, 0);
  await settle();
  assert.equal(outbox().length, 1);
});

test("without localStorage the outbox lives in memory", async () => {
  globalThis.localStorage = new Proxy({}, { get() { throw new Error("SecurityError"); }, set() { throw new Error("SecurityError"); } });
  const t = make();
  cid = "known-client-1";
  reply = () => new TypeError("offline");
  t.push(event(), 0);
  mock.timers.tick(0);
  await settle();
  reply = ok;
  t.flush();
  await settle();
  assert.equal(requests.length, 2);
  assert.equal(requests[1].body.events.length, 1);
});
