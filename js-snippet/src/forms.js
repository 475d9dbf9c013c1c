// Lead forms: which inputs hold a name, a phone or an e-mail is decided from attributes only,
// so the value of a password or card field is never read at all.
import { digits } from "./util.js";

// Classifies a text-like input by its type and its name, id, autocomplete and placeholder
// ("tel,phone,,tel-national,..."). Password, card and other secret-looking fields are ""
// whatever else they say.
export const classify = (el) => {
  const hint = [el.type, el.name, el.id, el.autocomplete, el.placeholder].join().toLowerCase();
  // text, tel, email, number
  return /^(te|em|nu)/.test(hint) && !/pass|card|cc-|cv|secur/.test(hint)
    ? /mail/.test(hint)
      ? "email"
      : /(^|[^a-z])tel|phone|mobile|телеф/.test(hint)
        ? "phone"
        : /name|fio|имя|фио/.test(hint) && !/user|login|comp/.test(hint)
          ? "name"
          : ""
    : "";
};

// Contact fields of a submitted form, or null when it has neither a phone nor an e-mail
// (the collector validates them: a bad one is dropped from a lead that still counts).
// Forms with a password (log-in, sign-up) are not leads and are not read. A value with
// more than 12 digits could be a card number (13-19) and is never taken: phones in the
// markets served have at most 12.
export const readForm = (form) => {
  const c = {};
  form.querySelector("[type=password]") ||
    form.querySelectorAll("input").forEach((el) => {
      const k = classify(el),
        v = k && !c[k] && el.value.trim(),
        n = v && digits(v).length;
      if (v && n < 13 && (k != "phone" || n > 4)) c[k] = v;
    });
  return c.phone || c.email ? c : null;
};

export const formName = (form) => form.getAttribute("name") || form.getAttribute("id") || form.getAttribute("action") || "";

// The hidden skvoz_cid input lets a lead that reaches a CRM carry the client id.
// (form.skvoz_cid is the form's own control of that name.)
export const putCid = (form, cid) =>
  form.skvoz_cid
    ? (form.skvoz_cid.value = cid)
    : form.insertAdjacentHTML("beforeend", "<input type=hidden name=skvoz_cid value=" + cid + ">");
