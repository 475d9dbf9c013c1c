// Delivery. Every event goes straight into a bounded localStorage outbox (shared by tabs,
// survives reloads) and leaves it only when the collector has answered for it. Each event
// has a client-made UUID, so sending one twice (a retry, another tab, a page that closed
// mid-request) is harmless: the collector counts an id once.
import { ls, safe } from "./util.js";

export const LIMIT = 100; // events kept in the outbox; the oldest go first
export const BATCH = 20; // events per request: far below the collector's 256 KB even at its field limits

// Retry delay: exponential from 2 s, capped at a minute (so a page that was offline catches
// up soon after the network returns), jittered down by up to half so pages recovering
// together do not hit the collector in step.
export const backoff = (fails) => Math.min(6e4, 1e3 * 2 ** fails) * (1 - Math.random() / 2);

// getCid(): the known client id, "" before first contact. onReply(body, wasFirstContact)
// gets each reply the collector made about a batch.
export const transport = (url, site, getCid, onReply) => {
  let mem = [], // the outbox when localStorage is unusable
    busy,
    timer, // the next flush: batching delay or retry backoff
    fails = 0;

  const load = () => JSON.parse(ls("skvoz_q") || 0) || mem;
  const save = (q) => ls("skvoz_q", JSON.stringify((mem = q)));
  const schedule = (ms) => (timer = timer || setTimeout(flush, ms));

  // One request at a time: the first one's reply names a new visitor, and a batch stays in
  // the outbox until its reply, so nothing else may take it meanwhile.
  const flush = safe((leaving) => {
    clearTimeout(timer);
    timer = 0;
    const cid = getCid(),
      batch = load().slice(0, BATCH),
      body = JSON.stringify({ site, client_id: cid || undefined, events: batch }),
      // Event ids are UUIDs: one in the body means it was in this batch.
      done = () => save(load().filter((e) => !body.includes(e.id)));
    if (busy || !batch[0]) return;
    // A closing page cannot read a reply: sendBeacon is the reliable way out, used unless
    // the collector or network is failing (then the outbox keeps the batch for later).
    if (leaving && cid && !fails && navigator.sendBeacon(url, body)) return done();
    busy = 1;
    // No keepalive: a request cut short by a closing page leaves its batch in the outbox.
    fetch(url, { method: "POST", body, credentials: "include" })
      // 5xx and 429: retry later. A 4xx reply means the batch can never be accepted.
      .then((r) => (r.status > 499 || r.status == 429 ? Promise.reject() : r.json()))
      .then(
        safe((j) => {
          busy = fails = 0;
          done();
          onReply(j, !cid);
          flush();
        }),
        () => {
          busy = 0;
          timer = setTimeout(flush, backoff(++fails));
        },
      );
  });

  return {
    // While retrying, the backoff timer is the pending flush: new events wait for it.
    push: (e, ms) => schedule(ms, save(load().concat(e).slice(-LIMIT))),
    flush,
  };
};
