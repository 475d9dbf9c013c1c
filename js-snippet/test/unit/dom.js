// A happy-dom window for unit tests. `install` exposes its DOM globals to the modules under
// test (they read document, location, localStorage... at call time).
import { Window } from "happy-dom";

export const makeWindow = (url = "https://shop.example.com/") =>
  new Window({
    url,
    settings: { enableJavaScriptEvaluation: true, suppressInsecureJavaScriptEnvironmentWarning: true },
  });

const NAMES = ["document", "location", "localStorage", "MutationObserver", "navigator", "history"];

export const install = (win) => {
  for (const n of NAMES) Object.defineProperty(globalThis, n, { value: win[n], configurable: true, writable: true });
  return win;
};
