// Call tracking: swap the site's original phone numbers for tracking numbers, in text and
// tel: links, keeping the page's own way of writing the number.
import { digits, safe } from "./util.js";

// A digit run with up to three separators between digits: "+7 (495) 123-45-67", "8-800-555-35-35".
const RUN = /\+?\d(?:[\s().-]{0,3}\d){6,}/g;

// [[original digits, tracking digits], ...] from the endpoint's list; full numbers only.
export const pairsOf = (numbers) =>
  numbers.map((n) => [digits(n.original), digits(n.tracking)]).filter((p) => p[0][9] && p[1][9]);

// One digit run: the tracking number written in the run's pattern, or the run unchanged.
// A run is the original number when their last 10 digits (the national number in RU/KZ)
// agree, so "+7 (495) 123-45-67", "8 495 1234567" and "(495) 123-45-67" all match; the
// digits before them (country code, trunk prefix) stay as the page wrote them.
export const swapRun = (run, pairs) => {
  const d = digits(run);
  let i = 0;
  for (const [o, t] of pairs)
    if (d[9] && d.slice(-10) == o.slice(-10)) {
      const r = d.slice(0, -10) + t.slice(-10);
      return run.replace(/\d/g, () => r[i++]);
    }
  return run;
};

export const swapText = (text, pairs) => text.replace(RUN, (m) => swapRun(m, pairs));

// Text nodes and tel: links in a subtree (the node itself included); not inside scripts,
// styles and textareas.
export const swapIn = (n, pairs, v, h) => {
  if (n.nodeType == 3) n.data != (v = swapText(n.data, pairs)) && (n.data = v);
  else if (n.nodeType == 1 && !/^(SCRIPT|STYLE|TEXTAREA)$/.test(n.nodeName)) {
    /^tel:/i.test((h = n.getAttribute("href"))) && h != (v = swapText(h, pairs)) && n.setAttribute("href", v);
    n.childNodes.forEach((c) => swapIn(c, pairs));
  }
};

// Swaps now and in everything added or changed later (framework re-renders, popups).
export const watch = (root, pairs) => {
  swapIn(root, pairs);
  // Each changed node once per batch of records, however many changes it had. Our own
  // edits come back as records too; they find nothing left to swap.
  new MutationObserver(safe((records) => new Set(records.map((r) => r.target)).forEach((n) => swapIn(n, pairs)))).observe(root, {
    childList: true,
    subtree: true,
    characterData: true,
  });
};
