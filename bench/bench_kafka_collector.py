"""Benchmark of the scale-out collector (`skvoz collector` publishing to Kafka) against the
embedded one (`skvoz run`), 1-event /collect requests, same load generator (wrk, 64 connections,
browser User-Agent) and the same request stream as bench/bench_embedded.py.

Three servers, measured in alternating rounds so drifts of the machine hit all of them alike:

* embedded: `skvoz run` (local log append before the 202, pipeline thread in the process);
* kafka: `skvoz collector`, 202 after Kafka acknowledged (acks=all, idempotent producer);
* kafka+redis: the same with [redis] url (rate-limit/dedup script before, mark after the ack).

Reported: requests/s (median of the rounds) and the ratio to embedded; CPU time of the server
process per request (the broker and Redis run on the same 2 cores, so wall-clock requests/s
understate what a collector does on its own machine); the mean Kafka ack wait; and a check that
the topic holds at least as many messages as there were 202s.

Kafka and Redis come from tracker.devstack (a temp state dir) unless SKVOZ_KAFKA_BOOTSTRAP and
SKVOZ_REDIS_URL point at running ones. Usage:
    python bench/bench_kafka_collector.py [--duration 8] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_embedded as emb  # noqa: E402  (wrk driver, request stream, site key)

from tests import configs  # noqa: E402
from tracker import devstack  # noqa: E402

PREFIX = "bench"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def write_config(path: Path, data_dir: Path, port: int, bootstrap: str = "", redis_url: str = "") -> None:
    configs.write_config(path, data_dir=data_dir, port=port, project="p1", token=emb.TOKEN,
                         sites={emb.DOMAINS[0]: emb.SITE_KEY}, pii_key="ab" * 32, redis={"url": redis_url},
                         kafka={"bootstrap": bootstrap, "topic_prefix": PREFIX, "partitions": 8})


def topic_messages(bootstrap: str) -> int:
    async def count() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        await asyncio.sleep(0)
        try:
            tps = [TopicPartition(f"{PREFIX}.events", p) for p in range(8)]
            return sum((await consumer.end_offsets(tps)).values())
        finally:
            await consumer.stop()

    return devstack.run_coro(count)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    wrk = emb.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="skvoz-bench-kafka-"))
    stack_dir = None
    bootstrap, redis_url = os.environ.get("SKVOZ_KAFKA_BOOTSTRAP"), os.environ.get("SKVOZ_REDIS_URL")
    procs: dict[str, subprocess.Popen] = {}
    try:
        if not (bootstrap and redis_url):
            stack_dir = work / "devstack"
            settings = devstack.up(stack_dir)
            bootstrap, redis_url = settings["SKVOZ_KAFKA_BOOTSTRAP"], settings["SKVOZ_REDIS_URL"]
        servers = {
            "embedded": ("run", "", ""),
            "kafka": ("collector", bootstrap, ""),
            "kafka+redis": ("collector", bootstrap, redis_url),
        }
        bases: dict[str, str] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKVOZ_")}
        for name, (command, kb, ru) in servers.items():
            port = emb.free_port()
            cfg = work / f"{name}.toml"
            write_config(cfg, work / f"data-{name.replace('+', '-')}", port, kb, ru)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", command, "--config", str(cfg)], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
            bases[name] = f"http://127.0.0.1:{port}"
        for base in bases.values():
            emb.wait_http(base + "/healthz", timeout=120)
        time.sleep(1)
        for base in bases.values():  # warm-up: connections, producer batches, JIT of the broker
            emb.run_wrk(wrk, base + "/collect", 1, 2, args.connections)

        rps: dict[str, list[float]] = {n: [] for n in servers}
        cpu_us: dict[str, list[float]] = {n: [] for n in servers}
        for _ in range(args.rounds):
            for name, base in bases.items():
                pid = procs[name].pid
                c0 = cpu_seconds(pid)
                r = emb.run_wrk(wrk, base + "/collect", 1, args.duration, args.connections)
                rps[name].append(r)
                cpu_us[name].append((cpu_seconds(pid) - c0) / (r * args.duration) * 1e6)

        results: dict[str, str] = {}
        emb_rps = statistics.median(rps["embedded"])
        for name in servers:
            med = statistics.median(rps[name])
            results[f"{name}: 1-event requests/s (rounds: {', '.join(f'{x:,.0f}' for x in rps[name])})"] = f"{med:,.0f}"
            results[f"{name}: server CPU µs per request"] = f"{statistics.median(cpu_us[name]):,.0f}"
            if name != "embedded":
                results[f"{name} / embedded requests/s"] = f"{med / emb_rps:.2f}"
        for name in ("kafka", "kafka+redis"):
            acked = metric(bases[name], "skvoz_kafka_acked_requests")
            wait = metric(bases[name], "skvoz_kafka_ack_seconds_sum")
            results[f"{name}: mean Kafka ack wait, ms"] = f"{wait / max(acked, 1) * 1000:.2f}"
            failed = metric(bases[name], "skvoz_kafka_failed_requests") + metric(bases[name], "skvoz_kafka_fast_failures")
            results[f"{name}: failed publishes"] = f"{failed:,.0f}"
        published = sum(metric(bases[n], "skvoz_kafka_published_messages") for n in ("kafka", "kafka+redis"))
        in_topic = topic_messages(bootstrap)
        results["messages in the topic / acknowledged by the collectors"] = f"{in_topic:,} / {published:,.0f}"
        if in_topic < published:
            raise SystemExit(f"the topic holds {in_topic} messages but the collectors acknowledged {published}")
        results["machine"] = f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        if stack_dir is not None:
            devstack.down(stack_dir)
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(k) for k in results)
    print(f"\nSkvoz collector benchmark: Kafka vs embedded, wrk -c{args.connections}, {args.duration}s x {args.rounds} rounds")
    for k, v in results.items():
        print(f"  {k:<{width}}  {v}")


if __name__ == "__main__":
    main()
