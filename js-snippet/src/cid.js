// Client id: a first-party cookie on the registrable domain, mirrored in localStorage so
// either one restores the other (Safari caps script-set cookies; people clear one or the other).
import { ls } from "./util.js";

// Ids the collector mints (20 characters) or a decorated link carries; anything else is
// ignored. At least 10 characters, so String(undefined) and String(null) never pass.
export const VALID = /^[\w-]{10,64}$/;

// The registrable domain is the shortest parent domain the browser accepts a cookie for:
// it refuses public suffixes (co.uk, github.io), so no suffix list is needed. Returns the
// cookie attribute, or "" (a host-only cookie) for IPs and single-label hosts. (Only an IPv4
// address ends in a digit: top-level domains are letters; IPv6 "[::1]" has no dot.)
export const cookieDomain = (host) => {
  const p = host.split(".");
  for (let i = p.length - 1; i-- > 0 && !/\d$/.test(host); ) {
    const attr = ";domain=" + p.slice(i).join(".");
    document.cookie = "skvoz_t=1" + attr;
    if (document.cookie.includes("skvoz_t")) return (document.cookie = "skvoz_t=;max-age=0" + attr), attr;
  }
  return "";
};

export const loadCid = () => {
  const c = document.cookie.match(/skvoz_cid=([\w-]+)|$/)[1],
    s = ls("skvoz_cid");
  return VALID.test(c) ? c : VALID.test(s) ? s : "";
};

let domain;
// Writes both stores; "" deletes them (consent withdrawn).
export const saveCid = (id) => {
  if (domain == null) domain = cookieDomain(location.hostname);
  ls("skvoz_cid", id);
  // 400 days: the longest Chromium keeps a cookie.
  document.cookie = "skvoz_cid=" + id + ";path=/;max-age=" + (id ? 3456e4 : 0) + domain;
};
