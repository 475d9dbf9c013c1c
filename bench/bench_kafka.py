"""Scale-out throughput and latency on a real Kafka broker.

1. events/s through one `skvoz worker` (all three stages, until every stage has committed),
   as a ratio to a raw aiokafka loop that only consumes (and decodes) the same events topic;
2. event → report latency: a probe (a pageview with its own utm_source and a signup goal) is
   produced, and the sink's channels report is polled until the probe's conversion shows up
   (all three stages, the sink's batch and insert, the query): p50/p95 over the probes.

Usage: python bench/bench_kafka.py [--persons 1400] [--probes 40]
Uses SKVOZ_KAFKA_BOOTSTRAP when set, else starts the dev broker (tracker.devstack) in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.codec import client_key, decode_events, encode_events  # noqa: E402
from streams.model import Event  # noqa: E402
from tests.datagen import deliveries, generate  # noqa: E402
from tests.test_scaleout_helpers import (  # noqa: E402
    PARTITIONS, PROJECT, TOKEN, Role, group_lags, produce_async, reading_from_start, write_config,
)
from tests.plugins.server import free_port  # noqa: E402


async def raw_consume(bootstrap: str, topic: str, expected: int) -> tuple[float, int]:
    """Seconds for a bare consumer to read and decode ``expected`` messages; events decoded."""
    async with reading_from_start(bootstrap, topic) as (c, _):
        n = events = 0
        t0 = time.perf_counter()
        while n < expected:
            for msgs in (await c.getmany(timeout_ms=500, max_records=5000)).values():
                for m in msgs:
                    events += len(decode_events(m.value))
                n += len(msgs)
        return time.perf_counter() - t0, events


def wait_worker_drained(bootstrap: str, prefix: str, worker: Role, timeout: float = 600) -> float:
    """Seconds until the worker group has committed everything on events, views and persons."""
    topics = [f"{prefix}.{t}" for t in ("events", "views", "persons")]
    deadline = time.monotonic() + timeout
    while True:
        if not worker.alive():
            raise SystemExit(f"worker exited:\n{worker.tail()}")
        lags = asyncio.run(group_lags(bootstrap, {f"{prefix}-stream": topics}, PARTITIONS))
        if lags["lag"] == 0:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"worker not drained in {timeout}s: {lags}")
        time.sleep(0.1)


def first_progress(bootstrap: str, prefix: str) -> float:
    while True:
        lags = asyncio.run(group_lags(bootstrap, {f"{prefix}-stream": [f"{prefix}.events"]}, PARTITIONS))
        ends = sum(lags["ends"].values())
        if lags["lag"] < ends:
            return time.monotonic()
        time.sleep(0.02)


def report_conversions(base_url: str, source: str) -> int:
    q = urllib.parse.urlencode([("project", PROJECT), ("from", "2020-01-01"), ("to", "2022-12-31"),
                                ("model", "last_click"), ("group_by", "source")])
    req = urllib.request.Request(f"{base_url}/api/v1/reports/channels?{q}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        rows = json.loads(r.read())["rows"]
    return sum(r["conversions"] for r in rows if r.get("source") == source)


def probe_latency(bootstrap: str, prefix: str, base_url: str, probes: int) -> list[float]:
    from aiokafka import AIOKafkaProducer

    async def send(events: list[Event]) -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await p.start()
        try:
            await p.send_and_wait(f"{prefix}.events", encode_events(events), key=client_key(events[0].project_id, events[0].client_id))
        finally:
            await p.stop()

    out = []
    base = 1_609_459_200_000 + 86_400_000 * 30  # 2021: apart from the generated traffic
    for i in range(probes):
        src = f"probe{i}x{uuid.uuid4().hex[:6]}"
        cid = f"probe-{src}"
        ts = base + i * 60_000
        events = [
            Event(PROJECT, "kursy.ru", str(uuid.uuid4()), cid, "pageview", ts, ts, f"https://kursy.ru/?utm_source={src}&utm_medium=cpc", "", "Probe"),
            Event(PROJECT, "kursy.ru", str(uuid.uuid4()), cid, "goal", ts + 1000, ts + 1000, "https://kursy.ru/", "", name="signup"),
        ]
        t0 = time.monotonic()
        asyncio.run(send(events))
        while report_conversions(base_url, src) < 1:
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"probe {src} not in the report after 60s")
            time.sleep(0.02)
        out.append(time.monotonic() - t0)
        time.sleep(0.2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=1400)
    ap.add_argument("--probes", type=int, default=40)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="skvoz-bench-kafka-"))
    stack_dir = None
    bootstrap = os.environ.get("SKVOZ_KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        from tracker import devstack

        stack_dir = tmp / "devstack"
        bootstrap = devstack.up(stack_dir)["SKVOZ_KAFKA_BOOTSTRAP"]
    os.environ["SKVOZ_KAFKA_BOOTSTRAP"] = bootstrap
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(tmp / "skvoz.toml", tmp / "sink-data", prefix, port)
    roles: list[Role] = []
    try:
        from streams.faust_app import ensure_topics

        asyncio.run(ensure_topics(bootstrap, prefix, PARTITIONS, 1))
        events = generate(persons=args.persons, seed=31)
        batches = deliveries(events, seed=31)
        delivered = sum(map(len, batches))
        messages = asyncio.run(produce_async(bootstrap, f"{prefix}.events", batches))
        print(f"produced {delivered} events ({len(events)} distinct) in {messages} messages, {PARTITIONS} partitions")

        raw_s, raw_events = asyncio.run(raw_consume(bootstrap, f"{prefix}.events", messages))
        raw_rate = raw_events / raw_s
        print(f"raw aiokafka consume + decode: {raw_s:.2f}s, {raw_rate:,.0f} events/s")

        worker = Role("worker", config, tmp / "worker.log", "--session-timeout", "6", env={"SKVOZ_DATA_DIR": str(tmp / "w")})
        roles.append(worker.start())
        t_start = first_progress(bootstrap, prefix)
        t_done = wait_worker_drained(bootstrap, prefix, worker)
        worker_s = t_done - t_start
        worker_rate = delivered / worker_s
        print(f"one worker, all three stages: {worker_s:.2f}s, {worker_rate:,.0f} events/s "
              f"= {worker_rate / raw_rate:.3f} of the raw consume loop")

        sink = Role("sink", config, tmp / "sink.log", "--session-timeout", "6")
        roles.append(sink.start())
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"sink not ready:\n{sink.tail()}")
            time.sleep(0.1)
        # let the sink catch up with the backlog first: latency is for live traffic
        while asyncio.run(group_lags(bootstrap, {f"{prefix}-sink": [f"{prefix}.rows"]}, PARTITIONS))["lag"]:
            time.sleep(0.2)
        lat = sorted(probe_latency(bootstrap, prefix, base_url, args.probes))
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
        print(f"event -> report latency over {len(lat)} probes: p50 {p50:.2f}s, p95 {p95:.2f}s, max {lat[-1]:.2f}s "
              f"(target p95 <= 3s: {'met' if p95 <= 3 else 'NOT met'})")
    finally:
        for r in roles:
            r.stop()
        if stack_dir is not None:
            from tracker import devstack

            devstack.down(stack_dir)


if __name__ == "__main__":
    main()
