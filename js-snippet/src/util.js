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

// RFC 4122 v4 from getRandomValues (randomUUID needs a secure context; plain-http sites exist).
export const uuid = () =>
  ([1e7] + -1e3 + -4e3 + -8e3 + -1e11).replace(/[018]/g, (c) =>
    (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16),
  );

// localStorage get (one argument) or set; it throws in some privacy modes and when full,
// which reads as "absent". Writing "" clears a key.
export const ls = (k, v) => {
  try {
    return v == null ? localStorage[k] : (localStorage[k] = v);
  } catch (e) {}
};

export const digits = (s) => s.replace(/\D/g, "");
