"""Collector cost per request against a bare aiohttp handler answering 204, in server CPU time.

On a 2-core machine the load generator and any neighbour share the CPUs, so wall-clock req/s
swings with them; the server process's CPU time per request (the req/s one server core
sustains) is stable. Each round measures the bare handler and the collector back to back; the
median of three rounds is printed, with the wall-clock figures beside it. Three collector
variants: the edge alone (a runtime that only counts), and with the durable local log appended
before each 202 (what `skvoz run` does), for 1-event and 50-event requests.

Usage: python bench/bench_collector_cpu.py [--seconds 2.5]
Targets: collector >= 0.5 of the bare handler's req/s; >= 50k events/s in 50-event requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_collector import CHROME, KEY, make_config, now_ms, pv  # noqa: E402
from tracker.app import State, build_app  # noqa: E402




def _bench_serve(kind: str, port: int, log_dir: str) -> None:
    """Entry point of the server subprocess: a bare 204 handler; the collector with a runtime
    that only counts (the edge alone); or the collector whose runtime appends to the real
    durable local log (no pipeline thread competing)."""
    from aiohttp import web

    from streams.embedded import LocalLog

    class LogOnlyRuntime:
        def __init__(self) -> None:
            self.log = LocalLog(Path(log_dir) / "events.log")

        def submit(self, events):
            self.log.append(events)

        def stats(self):
            return {"log_end": self.log.end}

    class CountingRuntime:
        def __init__(self) -> None:
            self.n = 0

        def submit(self, events):
            self.n += len(events)

        def stats(self):
            return {"submitted": self.n}

    if kind == "bare":
        async def handler(request):
            await request.read()
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/collect", handler)
    else:
        runtime = LogOnlyRuntime() if kind == "collector+log" else CountingRuntime()
        app = build_app(State(make_config(), runtime=runtime, ready=True))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, stats: dict, done):
        self.request, self.stats, self.done = request, stats, done
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            length = int(m.group(1)) if m else 0
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            self.stats[status] = self.stats.get(status, 0) + 1
            self.buf = self.buf[total:]
            if self.done():
                self.transport.close()
                return
            self.transport.write(self.request)


async def _load(port: int, request: bytes, seconds: float, conns: int = 32) -> tuple[float, dict]:
    loop = asyncio.get_running_loop()
    stats: dict[int, int] = {}
    deadline = loop.time() + seconds
    transports = []
    for _ in range(conns):
        t, _p = await loop.create_connection(
            lambda: _Conn(request, stats, lambda: loop.time() >= deadline), "127.0.0.1", port)
        transports.append(t)
    started = loop.time()
    await asyncio.sleep(seconds)
    await asyncio.sleep(0.2)
    for t in transports:
        t.close()
    return sum(stats.values()) / (loop.time() - 0.2 - started), stats


def _request(n_events: int) -> bytes:
    now = now_ms() + 60_000  # stays inside the window for the whole run
    body = json.dumps({"site": KEY, "client_id": "bench-client", "events": [
        pv(ts=now, id=str(uuid.uuid4())) for _ in range(n_events)]}).encode()
    return (b"POST /collect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Origin: https://shop.example.ru\r\nUser-Agent: " + CHROME.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(kind: str, n_events: int, tmp_path, seconds: float = 3.0) -> tuple[float, float, dict]:
    """(requests/s, server CPU seconds per request, status counts) for one server kind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c",
                             f"from bench.bench_collector_cpu import _bench_serve; "
                             f"_bench_serve({kind!r}, {port}, {str(tmp_path)!r})"],
                            cwd=ROOT)
    try:
        for _ in range(300):
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        await _load(port, _request(n_events), 0.5)  # warm-up
        cpu0 = _cpu_seconds(proc.pid)
        rps, codes = await _load(port, _request(n_events), seconds)
        cpu = _cpu_seconds(proc.pid) - cpu0
        return rps, cpu / max(1, sum(codes.values())), codes
    finally:
        proc.terminate()
        proc.wait(10)



async def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="skvoz-bench-cpu-"))
    ratios, ratios_log, events_per_s, events_per_s_log = [], [], [], []
    for round_ in range(3):
        got = {}
        for key, kind, n, expect in (("bare", "bare", 1, 204), ("one", "collector", 1, 202),
                                     ("batch", "collector", 50, 202),
                                     ("one+log", "collector+log", 1, 202),
                                     ("batch+log", "collector+log", 50, 202)):
            rps, cpu, codes = await _measure(kind, n, tmp / f"{round_}-{key}", seconds=seconds)
            if set(codes) != {expect}:
                raise SystemExit(f"{kind}: unexpected statuses {codes}")
            got[key] = (rps, cpu)
        ratios.append(got["bare"][1] / got["one"][1])
        ratios_log.append(got["bare"][1] / got["one+log"][1])
        events_per_s.append(50 / got["batch"][1])
        events_per_s_log.append(50 / got["batch+log"][1])
        print(f"round {round_ + 1}: " + "; ".join(
            f"{k} {rps * (50 if 'batch' in k else 1):,.0f} {'events' if 'batch' in k else 'req'}/s wall"
            f" ({cpu * 1e6:.0f} us CPU/req)" for k, (rps, cpu) in got.items()))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print("\nCollector vs bare aiohttp 204 handler, per server core (median of 3 rounds)")
    print(f"  1-event requests, edge only          {med(ratios):.2f} of bare   (target >= 0.5)")
    print(f"  1-event requests, with durable log   {med(ratios_log):.2f} of bare")
    print(f"  50-event requests, edge only         {med(events_per_s):,.0f} events/s (target >= 50k)")
    print(f"  50-event requests, with durable log  {med(events_per_s_log):,.0f} events/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.5)
    asyncio.run(main(ap.parse_args().seconds))
