"""Benchmark of the embedded default (`skvoz run`), all figures from one run:

1. collector requests/s for 1-event requests, as a ratio to a bare aiohttp handler answering 204
   (same machine, same load generator: wrk, one connection pool);
2. events/s with 50-event requests;
3. pipeline throughput: events/s from a 1M-event import to rows written in ClickHouse;
4. channels-report (each model) and funnel latency over >= 1M events (p50/p95);
5. freshness: seconds from a 202 to the event being visible in the channels report (p50/p95),
   with the 1M events loaded;
6. RSS of the server process.

Needs Debian's `wrk` (`apt-get install -y wrk`; the script installs it when run as root).
Usage: python bench/bench_embedded.py [--events 1000000] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.configs import write_config  # noqa: E402
from tests.datagen import DOMAINS, generate  # noqa: E402

SITE_KEY = "bench-site-key-0001"
# The collector drops script user agents as bots; the load is meant to look like browsers.
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"
TOKEN = "bench-token-0000000000000001"

BARE_SERVER = """
from aiohttp import web
async def collect(request):
    await request.read()
    return web.Response(status=204)
app = web.Application()
app.router.add_post("/collect", collect)
web.run_app(app, host="127.0.0.1", port={port}, print=None, access_log=None)
"""

# wrk request generator: unique, valid event ids; one client id per 1000 requests.
WRK_LUA = """
local counter = 0
local batch = {batch}
local ts = {ts}
local key = "{key}"
math.randomseed({seed})
local prefix = string.format("%08x", math.random(0, 0x7fffffff))
request = function()
  local events = {{}}
  for i = 1, batch do
    counter = counter + 1
    events[i] = string.format('{{"id":"%s-0000-4000-8000-%012x","type":"pageview","ts":%d,"url":"https://kursy.ru/p%d","referrer":""}}',
      prefix, counter, ts, counter % 50)
  end
  local body = '{{"site":"' .. key .. '","client_id":"wrk' .. math.floor(counter / 1000) .. '","events":[' .. table.concat(events, ",") .. ']}}'
  return wrk.format("POST", "/collect", {{["Content-Type"] = "text/plain", ["User-Agent"] = "{ua}"}}, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout}s")


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0:
        subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True, check=False, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    return path


def run_wrk(wrk: str, url: str, batch: int, duration: int, connections: int = 64) -> float:
    """Requests/s of successful (2xx) requests."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA.format(batch=batch, ts=int(time.time() * 1000), key=SITE_KEY, seed=int(time.time() * 1000) % 100000, ua=BROWSER_UA))
        f.write(textwrap.dedent("""
            done = function(summary, latency, requests)
              local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
              io.write(string.format("RESULT %d %d %f\\n", summary.requests, errors, summary.duration / 1e6))
            end
        """))
        script = f.name
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script)
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    _, requests, errors, seconds = line.split()
    if int(errors):
        raise SystemExit(f"wrk saw {errors} failed requests against {url}:\n{out}")
    return int(requests) / float(seconds)


def request(base: str, path: str, body: bytes | None = None, headers: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, data=body, headers={"User-Agent": BROWSER_UA, **(headers or {})}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"{}")


def api(base: str, path: str) -> dict:
    return request(base, path, headers={"Authorization": f"Bearer {TOKEN}"})


def runtime_lag(base: str) -> int:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("skvoz_runtime_lag_bytes"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise SystemExit("no lag_bytes in /metrics")


def wait_processed(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while runtime_lag(base) > 0:
        if time.monotonic() > deadline:
            raise SystemExit("pipeline did not catch up")
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="skvoz-bench-"))
    port, bare_port = free_port(), free_port()
    write_config(work / "skvoz.toml", data_dir=work / "data", port=port, project="p1", token=TOKEN,
                 sites={DOMAINS[0]: SITE_KEY, DOMAINS[1]: "bench-site-key-0002"}, pii_key="ab" * 32)
    server = subprocess.Popen([sys.executable, "-m", "tracker.cli", "run", "--config", str(work / "skvoz.toml")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER.format(port=bare_port)])
    base = f"http://127.0.0.1:{port}"
    results: dict[str, str] = {}
    try:
        wait_http(base + "/healthz")
        time.sleep(1)
        # -- 1, 2: collector throughput ------------------------------------------------------
        bare_rps = run_wrk(wrk, f"http://127.0.0.1:{bare_port}/collect", 1, args.duration)
        ours_rps = run_wrk(wrk, base + "/collect", 1, args.duration)
        batch_rps = run_wrk(wrk, base + "/collect", 50, args.duration, connections=16)
        results["bare aiohttp 204, requests/s"] = f"{bare_rps:,.0f}"
        results["collector 1-event requests/s"] = f"{ours_rps:,.0f}"
        results["collector / bare ratio (target >= 0.5)"] = f"{ours_rps / bare_rps:.2f}"
        results["collector events/s, 50-event requests (target >= 50k)"] = f"{batch_rps * 50:,.0f}"
        t = time.monotonic()
        wait_processed(base, 600)
        results["pipeline catch-up after the load tests, s"] = f"{time.monotonic() - t:.1f}"

        # -- 3: 1M events through the import API and the pipeline ----------------------------
        persons = max(1, args.events // 15)
        events = generate(persons=persons, seed=42, start_ms=int(time.time() * 1000) - 200 * 86_400_000, days=90)
        while len(events) < args.events:
            persons = int(persons * 1.1) + 1
            events = generate(persons=persons, seed=42, start_ms=int(time.time() * 1000) - 200 * 86_400_000, days=90)
        events = events[: args.events]
        t0 = time.monotonic()
        for i in range(0, len(events), 20_000):
            lines = "\n".join(
                json.dumps({"site": SITE_KEY, "client_id": e.client_id, "id": e.event_id, "type": e.type, "ts": e.ts, "url": e.url,
                            "referrer": e.referrer, "name": e.name, "title": e.title,
                            **({"contact": {"phone": f"+7912{abs(hash(e.phone_hash)) % 10**7:07d}"}} if e.phone_hash else {}),
                            **({"props": {"value": e.value}} if e.value else {})})
                for e in events[i : i + 20_000]
            ).encode()
            request(base, "/api/v1/import/events", lines, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
        t_import = time.monotonic() - t0
        wait_processed(base, 1800)
        t_total = time.monotonic() - t0
        results["events loaded"] = f"{len(events):,}"
        results["import API events/s (acknowledged)"] = f"{len(events) / t_import:,.0f}"
        results["pipeline events/s (import -> rows in ClickHouse)"] = f"{len(events) / t_total:,.0f}"

        # -- 4: report latency ---------------------------------------------------------------
        frm, to = (date.today() - timedelta(days=400)).isoformat(), (date.today() + timedelta(days=1)).isoformat()
        totals = api(base, f"/api/v1/reports/channels?project=p1&from={frm}&to={to}&model=last_click&group_by=type")["totals"]
        results["visits / conversions in the reports"] = f"{totals['visits']:,} / {totals['conversions']:,}"
        for model in ("last_significant_click", "first_click", "last_click"):
            times = []
            for _ in range(15):
                t = time.monotonic()
                api(base, f"/api/v1/reports/channels?project=p1&from={frm}&to={to}&model={model}&group_by=source,medium,campaign")
                times.append(time.monotonic() - t)
            results[f"channels {model} p50/p95 ms (target <= 300)"] = f"{pct(times, .5) * 1000:.0f} / {pct(times, .95) * 1000:.0f}"
        times = []
        for _ in range(15):
            t = time.monotonic()
            api(base, f"/api/v1/reports/funnel?project=p1&from={frm}&to={to}&steps=pageview:/courses*&steps=pageview:/prices&steps=form:*&window=86400")
            times.append(time.monotonic() - t)
        results["funnel 3 steps p50/p95 ms (target <= 300)"] = f"{pct(times, .5) * 1000:.0f} / {pct(times, .95) * 1000:.0f}"

        # -- 5: freshness ----------------------------------------------------------------------
        lags = []
        today = date.today().isoformat()
        for i in range(30):
            campaign = f"fresh{uuid.uuid4().hex[:10]}"
            body = json.dumps({"site": SITE_KEY, "client_id": f"fresh{i}", "events": [{
                "id": str(uuid.uuid4()), "type": "pageview", "ts": int(time.time() * 1000),
                "url": f"https://kursy.ru/?utm_source=bench&utm_medium=cpc&utm_campaign={campaign}", "referrer": ""}]}).encode()
            request(base, "/collect", body, {"Content-Type": "text/plain"})
            t = time.monotonic()
            while True:
                rows = api(base, f"/api/v1/reports/channels?project=p1&from={today}&to={today}&model=last_click&group_by=source,medium,campaign")["rows"]
                if any(r.get("campaign") == campaign for r in rows):
                    break
                if time.monotonic() - t > 30:
                    raise SystemExit("event not visible after 30 s")
                time.sleep(0.01)
            lags.append(time.monotonic() - t)
        results["freshness 202 -> report p50/p95 s (target p95 <= 1)"] = f"{pct(lags, .5):.2f} / {pct(lags, .95):.2f}"
        results["server RSS MB"] = f"{rss_mb(server.pid):,.0f}"
    finally:
        server.terminate()
        bare.terminate()
        server.wait(60)
        bare.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k in results)
    print("\nSkvoz embedded benchmark")
    for k, v in results.items():
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
