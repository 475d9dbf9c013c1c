// End-to-end plumbing: a real `skvoz run`, a static server for fixture pages on any
// *.localhost name (Chromium resolves them to loopback), headless Chromium via playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const FIXTURES = new URL("./fixtures/", import.meta.url);
export const TOKEN = "e2e-token-0123456789abcdef";

export const freePort = () =>
  new Promise((resolve, reject) => {
    const s = netServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// projects: [{ id, sites: [{ domain, key }], store_contacts }]
const toml = (dataDir, port, projects) =>
  [
    `data_dir = ${JSON.stringify(dataDir)}`,
    `pii_key = "${"ab".repeat(32)}"`,
    "[server]",
    'host = "127.0.0.1"',
    `port = ${port}`,
    "drop_bots = false # HeadlessChrome is a bot to the default filter",
    "[clickhouse]",
    'url = ""',
    'database = "skvoz"',
    "[pipeline]",
    "batch_max_ms = 100",
    ...projects.flatMap((p) => [
      "[[projects]]",
      `id = "${p.id}"`,
      `api_tokens = ["${TOKEN}-${p.id}"]`,
      'conversion_goals = ["signup"]',
      `store_contacts = ${!!p.store_contacts}`,
      ...p.sites.flatMap((s) => ["[[projects.sites]]", `domain = "${s.domain}"`, `key = "${s.key}"`]),
    ]),
  ].join("\n") + "\n";

// Starts `skvoz run` (SKVOZ_BIN overrides the command) and waits for GET /healthz -> 200.
export const startCollector = async (projects) => {
  const dir = mkdtempSync(join(tmpdir(), "skvoz-e2e-"));
  const port = await freePort();
  const config = join(dir, "skvoz.toml");
  writeFileSync(config, toml(join(dir, "data"), port, projects));
  const [cmd, ...pre] = (process.env.SKVOZ_BIN || "skvoz").split(" ");
  const proc = spawn(cmd, [...pre, "run", "--config", config, "--port", String(port)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  proc.stdout.on("data", (b) => (log += b));
  proc.stderr.on("data", (b) => (log += b));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (proc.exitCode != null) throw new Error(`skvoz run exited with ${proc.exitCode}:\n${log}`);
    try {
      if ((await fetch(url + "/healthz")).status == 200) break;
    } catch {}
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`skvoz run did not become healthy in 90 s:\n${log}`);
    }
    await sleep(250);
  }
  return {
    url,
    log: () => log,
    stop: async () => {
      proc.kill("SIGINT");
      const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      if (proc.exitCode == null) await new Promise((r) => proc.once("exit", r));
      clearTimeout(t);
      rmSync(dir, { recursive: true, force: true });
    },
  };
};

// Serves fixtures/*.html for any path (a SPA fallback: unknown paths get page.html), filling
// {{COLLECTOR}}, {{KEY}}, {{DOMAINS}}, {{OTHER}} from `sites` by the request's host name.
// Form posts are recorded so a test can see what a CRM would receive.
export const startStatic = async (collector, sites) => {
  const posts = [];
  const server = createServer((req, res) => {
    const host = (req.headers.host || "").split(":")[0];
    const site = sites[host];
    if (!site) return res.writeHead(404).end("unknown host");
    const path = new URL(req.url, "http://x").pathname;
    const send = () => {
      let name = path.slice(1) || "page.html";
      let html;
      try {
        html = readFileSync(new URL(name, FIXTURES), "utf8");
      } catch {
        html = readFileSync(new URL("page.html", FIXTURES), "utf8");
      }
      html = html
        .replaceAll("{{COLLECTOR}}", collector)
        .replaceAll("{{KEY}}", site.key)
        .replaceAll("{{DOMAINS}}", site.domains || "")
        .replaceAll("{{OTHER}}", site.other || "");
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" }).end(html);
    };
    if (req.method == "POST") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        posts.push({ host, path, body: new URLSearchParams(body) });
        send();
      });
    } else send();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { port: server.address().port, posts, stop: () => new Promise((r) => server.close(r)) };
};

export const launch = () =>
  chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });

const day = (offset) => new Date(Date.now() + offset * 864e5).toISOString().slice(0, 10);

export const report = async (collector, project, path, params) => {
  const q = new URLSearchParams({ project, from: day(-2), to: day(2), ...params });
  for (const [k, v] of Object.entries(params)) if (Array.isArray(v)) (q.delete(k), v.forEach((x) => q.append(k, x)));
  const r = await fetch(`${collector}/api/v1/reports/${path}?${q}`, {
    headers: { Authorization: `Bearer ${TOKEN}-${project}` },
  });
  if (r.status != 200) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
};

export const channels = (collector, project) =>
  report(collector, project, "channels", { model: "last_click", group_by: "type" });

// Polls until check(value) is truthy (the pipeline writes in small batches); returns the value.
export const eventually = async (get, check, ms = 30_000) => {
  const deadline = Date.now() + ms;
  let v;
  for (;;) {
    v = await get();
    if (check(v)) return v;
    if (Date.now() > deadline) throw new Error(`condition not met in ${ms} ms; last value: ${JSON.stringify(v)}`);
    await sleep(300);
  }
};
