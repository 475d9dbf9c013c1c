// Shared helpers. Everything the counter does runs through `safe`, so a bug here never
// surfaces as an exception in the host page; the count is readable as skvoz('stats').
export const stats = { errors: 0 };

export const safe =
  (fn) =>
  (...args) => {
    try {
      return fn(...args);
    } catch (e) {
      stats.errors++;
    }
  };

// A random (v4) UUID. crypto.randomUUID needs a secure context and plain-http sites exist;
// a blob: URL ends in a random UUID by the File API spec, in any context. (Each keeps a tiny
// empty-blob entry until the page unloads.)
export const uuid = () => URL.createObjectURL(new Blob()).slice(-36);

// localStorage get (one argument) or set; it throws in some privacy modes and when full,
// which reads as "absent". Writing "" clears a key.
export const ls = (k, v) => {
  try {
    return v == null ? localStorage[k] : (localStorage[k] = v);
  } catch (e) {}
};

export const digits = (s) => s.replace(/\D/g, "");
