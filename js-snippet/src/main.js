// Entry point: reads the script tag, wires pageviews, goals, forms, cross-domain links and
// call tracking to the transport, and replaces the queue stub with the real `skvoz`.
import { ls, safe, stats, uuid } from "./util.js";
import { loadCid, saveCid } from "./cid.js";
import { adopt, decorate } from "./xdomain.js";
import { formName, putCid, readForm } from "./forms.js";
import { pairsOf, watch } from "./phone.js";
import { transport } from "./transport.js";

const w = window,
  d = document,
  loc = location,
  hist = history,
  stub = w.skvoz,
  on = (target, type, fn) => target.addEventListener(type, safe(fn), true);

// A second copy of the tag leaves the first one in charge.
if (!(stub && stub.v))
  safe(() => {
    const script = d.currentScript, // a classic <script>, as in the install line
      attr = (n) => script.getAttribute("data-" + n),
      site = attr("site"),
      base = new URL(".", script.src).href, // the collector serves s.js, so it lives beside it
      domains = (attr("domains") + "").split(/[\s,]+/),
      dnt = attr("respect-dnt") != null && navigator.doNotTrack == 1,
      // The cross-domain parameter leaves the address bar at once, consent or not.
      [clean, adopted] = adopt(loc.href, Date.now()),
      setCid = (id) => saveCid((cid = id)),
      // Numbers from /calltracking/numbers, or from its cached reply while the ttl lasts.
      numbers = (j) => j.x > Date.now() && (watch(d.documentElement, pairsOf(j.numbers)), 1),
      ev = (type, extra) => ({ id: uuid(), type, ts: Date.now(), url: loc.href, referrer: ref, title: d.title, ...extra }),
      track = (e, ms) => t && t.push(e, ms),
      pageview = (ms) => track(ev("pageview"), ms),
      navigated = safe(() => {
        // Only path and query changes are pages; a hash change is an in-page anchor.
        if (loc.href.split("#")[0] != page.split("#")[0]) {
          ref = page;
          page = loc.href;
          // A SPA sets the title after the URL, and routers redirect: settle for a moment.
          clearTimeout(spa);
          spa = setTimeout(safe(pageview), 99, 1e3);
        }
      }),
      // Wrapped on its own: a bad cached reply or a cookie-less sandbox must not stop the rest.
      start = safe(() => {
        const id = adopted || loadCid();
        id && setCid(id);
        t = transport(
          base + "collect",
          site,
          () => cid,
          (j, first) => {
            // First contact: the collector may know this browser already (its own cookie).
            // It always names the visitor in a 202; an error reply has no client_id.
            first && j.client_id && setCid(j.client_id);
            // After the first confirmed batch the collector knows the visit and its source,
            // so it can pick a number. Anything but 200 leaves the page alone.
            asked ||
              fetch(base + "calltracking/numbers?site=" + site + "&client_id=" + cid)
                .then((r) => r.status == 200 && r.json())
                .then((j) => {
                  if (j && t) {
                    j.x = Date.now() + j.ttl * 1e3; // expiry, for the cache
                    ls("skvoz_ct", JSON.stringify(j));
                    numbers(j);
                  }
                })
                .catch(safe);
            asked = 1;
          },
        );
        // Numbers stay valid for their ttl: no flicker and no request on the next pages.
        asked = numbers(JSON.parse(ls("skvoz_ct") || 0));
      });

    let cid = "",
      t, // the transport, once tracking is allowed
      asked, // call-tracking numbers requested or taken from the cache
      page = clean,
      ref = d.referrer,
      spa;

    if (clean != loc.href) hist.replaceState(hist.state, "", clean);
    if (attr("require-consent") == null && !dnt) start();
    pageview(0);

    ["pushState", "replaceState"].forEach((m) => {
      const orig = hist[m];
      hist[m] = function () {
        orig.apply(this, arguments);
        navigated();
      };
    });
    on(w, "popstate", navigated);

    // Capture phase on the document: runs before the page's own handlers serialise the form.
    on(d, "submit", (e) => {
      const f = e.target,
        c = readForm(f);
      if (c) {
        t && cid && putCid(f, cid);
        track(ev("form", { name: formName(f), contact: c }), 0);
      }
    });

    ["mousedown", "click"].forEach((n) =>
      on(d, n, (e) => {
        const a = e.target.closest("a"),
          h = a && t && decorate(a.href, domains, cid, loc.hostname, Date.now());
        if (h) a.href = h;
      }),
    );

    const leave = () => t && t.flush(1);
    on(d, "visibilitychange", () => d.hidden && leave());
    on(w, "pagehide", leave);

    const api = (w.skvoz = safe((cmd, a, b) => {
      if (cmd == "goal") track(ev("goal", { name: a, props: b }), 1e3);
      if (cmd == "consent") {
        // Granted on this page: it counts as a pageview, landing source included.
        if (a) t || pageview(start());
        else {
          // Withdrawn: stop, and forget the visitor and unsent events on this device.
          t = 0;
          setCid("");
          ls("skvoz_q", "[]");
        }
      }
      return cmd == "stats" ? stats : cid;
    }));
    api.v = 1;
    ((stub && stub.q) || []).forEach((args) => api.apply(0, args));
  })();
