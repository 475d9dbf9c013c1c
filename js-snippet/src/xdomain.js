// Cross-domain visitors: links to the project's other domains carry
// `_skvoz_cid=<id>.<ms since epoch>`. The timestamp limits a copied or shared link
// to a few minutes, so a link pasted into a chat does not merge strangers into one visitor.
import { VALID } from "./cid.js";

export const MAX_AGE = 3e5;

// The link decorated for the current visitor, or "" when it does not lead to another host
// on one of the project's domains (the domain itself or a subdomain of it).
export const decorate = (href, domains, cid, here, now) => {
  const u = new URL(href), // a link's href property is absolute
    h = u.hostname;
  return cid && h != here && domains.some((d) => h == d || h.endsWith("." + d)) && /^http/.test(u.protocol)
    ? (u.searchParams.set("_skvoz_cid", cid + "." + now), u.href)
    : "";
};

// Splits a landing address into [address without the parameter, adopted id or ""].
// The parameter is cut out as text so the rest of the query keeps its exact encoding.
export const adopt = (href, now) => {
  const m = /([?&])_skvoz_cid=([\w-]*)\.?(\d*)(&?)/.exec(href) || [""],
    age = now - m[3]; // "" and undefined give now and NaN: too old
  return [
    href.replace(m[0], m[4] ? m[1] : ""),
    VALID.test(m[2]) && age * age < MAX_AGE * MAX_AGE ? m[2] : "", // |age| < MAX_AGE
  ];
};
