"""`skvoz collector` against the real Kafka broker and Redis of the harness: what lands on the
events topic, 503 (never 202) while Kafka is away and recovery without a restart, dedup across
collectors sharing Redis, the per-site rate limit, and going on without Redis.

Collectors run as subprocesses (the real CLI, its startup and SIGTERM path); each test has its
own topic prefix, so topics never mix between tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from streams.codec import decode_events
from tests.configs import write_config
from tests.plugins.server import BROWSER_UA, free_port
from tracker import devstack

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]

SITE, SITE_2 = "kc-site-key-shop", "kc-site-key-blog"
TOKEN = "kc-api-token-0123456789abcdef"
PROJECT = "shop"
PARTITIONS = 3


class Collector:
    """A `skvoz collector` subprocess with its own config."""

    def __init__(self, workdir: Path, bootstrap: str, redis_url: str, prefix: str,
                 rate_limit: int = 0, ack_timeout_ms: int = 2000) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"collector-{self.port}.toml"
        self.log_path = workdir / f"collector-{self.port}.log"
        self.prefix = prefix
        write_config(self.config, data_dir=workdir / "data", port=self.port, project=PROJECT, token=TOKEN,
                     sites={"shop.example.ru": SITE, "blog.example.ru": SITE_2}, pii_key="kc-pii-key",
                     server={"rate_limit_per_site": rate_limit}, redis={"url": redis_url},
                     kafka={"bootstrap": bootstrap, "topic_prefix": prefix, "partitions": PARTITIONS,
                            "ack_timeout_ms": ack_timeout_ms})
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60) -> "Collector":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKVOZ_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "collector", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self.wait(wait_ready, timeout)

    def wait(self, ready: bool = True, timeout: float = 60) -> "Collector":
        """Until /healthz answers 200 (or, with ``ready=False``, answers at all)."""
        wait_ready = ready
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"collector exited:\n{self.log()}"
            status = self.get("/healthz")[0]
            if status == 200 or (status == 503 and not wait_ready):
                return self
            time.sleep(0.1)
        raise AssertionError(f"collector not {'ready' if wait_ready else 'listening'}:\n{self.log()}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def _call(self, req: urllib.request.Request) -> tuple[int, dict, dict]:
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), _json(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), _json(e.read())
        except OSError:
            return 0, {}, {}

    def get(self, path: str) -> tuple[int, dict, dict]:
        return self._call(urllib.request.Request(self.base + path))

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines
                if ln and not ln.startswith("#")}

    def collect(self, events: list[dict], client_id: str, site: str = SITE) -> tuple[int, dict, dict]:
        body = json.dumps({"site": site, "client_id": client_id, "events": events}).encode()
        return self._call(urllib.request.Request(
            self.base + "/collect", data=body, method="POST",
            headers={"Content-Type": "text/plain", "User-Agent": BROWSER_UA}))

    def import_events(self, items: list[dict]) -> tuple[int, dict, dict]:
        body = "\n".join(json.dumps(i) for i in items).encode()
        return self._call(urllib.request.Request(
            self.base + "/api/v1/import/events", data=body, method="POST",
            headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {TOKEN}"}))


def _json(body: bytes) -> dict:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"raw": body[:200].decode(errors="replace")}


def pv(**kw) -> dict:
    ev = {"id": str(uuid.uuid4()), "type": "pageview", "ts": int(time.time() * 1000),
          "url": "https://shop.example.ru/courses?utm_source=yandex", "referrer": ""}
    ev.update(kw)
    return ev


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    """Every record of the topic now: (partition, offset, key, value), in partition order."""

    async def read():
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        await asyncio.sleep(0)  # aiokafka: stop() right after start() raises CancelledError
        try:
            assert topic in await consumer.topics(), f"topic {topic} does not exist"
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out = []
            deadline = time.monotonic() + 30
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                assert time.monotonic() < deadline, "timed out reading the topic back"
                for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                    out.extend((tp.partition, m.offset, m.key, m.value) for m in msgs)
            return sorted(out)
        finally:
            await consumer.stop()

    return devstack.run_coro(read)


def published_ids(bootstrap: str, prefix: str) -> Counter:
    return Counter(e.event_id for *_, v in read_topic(bootstrap, f"{prefix}.events")
                   for e in decode_events(v))


@pytest.fixture
def collectors(tmp_path, kafka_bootstrap, redis_url):
    """Factory of collectors (not started); all share this test's topic prefix by default.
    Their topics are deleted afterwards."""
    made: list[Collector] = []
    prefix = f"kc{uuid.uuid4().hex[:8]}"

    def make(**kw) -> Collector:
        kw.setdefault("prefix", prefix)
        kw.setdefault("redis_url", redis_url)
        c = Collector(tmp_path, kafka_bootstrap, **kw)
        made.append(c)
        return c

    make.prefix = prefix
    yield make
    for c in made:
        c.kill()

    async def delete():
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            await admin.delete_topics(sorted({f"{c.prefix}.events" for c in made}))
        finally:
            await admin.close()

    try:
        devstack.run_coro(delete)
    except Exception:
        pass  # best effort: a broker that was stopped by the test may still be starting


# -- what lands on the topic -----------------------------------------------------------------------


def test_events_land_on_the_topic_keyed_by_client(collectors, kafka_bootstrap):
    c = collectors().start()
    status, _, health = c.get("/healthz")
    assert status == 200 and health["kafka"]["healthy"] and health["kafka"]["topic"] == f"{c.prefix}.events"
    assert c.get("/api/v1/reports/channels?project=shop")[0] == 404, "no query API in the collector"

    a_events = [pv(), pv(type="goal", name="signup"), pv(url="https://shop.example.ru/prices")]
    status, _, reply = c.collect(a_events, "clientA")
    assert status == 202 and reply["accepted"] == 3, reply
    b_events = [pv()]
    assert c.collect(b_events, "clientB")[0] == 202
    # One client with ~1.5 MB of events in an import: split into several messages, in order.
    big = [{"site": SITE, "client_id": "bulk", "id": str(uuid.uuid4()), "type": "pageview",
            "ts": int(time.time() * 1000) - 1000 + i, "url": f"https://shop.example.ru/p{i}",
            "title": "x" * 400} for i in range(3000)]
    small = [{"site": SITE_2, "client_id": "clientB", "id": str(uuid.uuid4()), "type": "pageview",
              "ts": int(time.time() * 1000), "url": "https://blog.example.ru/"}]
    status, _, reply = c.import_events(big + small)
    assert status == 202 and reply["accepted"] == 3001, reply

    records = read_topic(kafka_bootstrap, f"{c.prefix}.events")
    by_key: dict[bytes, list] = {}
    partition_of: dict[bytes, set] = {}
    for part, _, key, value in records:
        by_key.setdefault(key, []).append(decode_events(value))
        partition_of.setdefault(key, set()).add(part)
    assert set(by_key) == {b"shop:clientA", b"shop:clientB", b"shop:bulk"}
    assert all(len(p) == 1 for p in partition_of.values()), "a client's messages in one partition"

    (a_msg,) = by_key[b"shop:clientA"]  # one request of one client = one message
    assert [e.event_id for e in a_msg] == [e["id"] for e in a_events]
    assert all(e.project_id == PROJECT and e.client_id == "clientA" and e.site == "shop.example.ru"
               for e in a_msg)
    assert [e.type for e in a_msg] == ["pageview", "goal", "pageview"] and a_msg[1].name == "signup"
    assert a_msg[0].user_agent == BROWSER_UA and a_msg[0].received_at > 0

    b_msgs = by_key[b"shop:clientB"]
    assert [[e.event_id for e in m] for m in b_msgs] == [[b_events[0]["id"]], [small[0]["id"]]]
    assert b_msgs[1][0].site == "blog.example.ru"

    bulk = by_key[b"shop:bulk"]
    assert len(bulk) >= 3, "1.5 MB of one client must be split into messages under 512 KB"
    assert [e.event_id for m in bulk for e in m] == [e["id"] for e in big], "order kept"

    m = c.metrics()
    assert m["skvoz_kafka_published_events"] == 3 + 1 + 3001
    assert m['skvoz_events_accepted_total{endpoint="collect",project="shop"}'] == 4
    assert c.stop() == 0
    assert "stopped" in c.log()


# -- Kafka away -------------------------------------------------------------------------------------


def test_kafka_down_is_503_and_the_collector_recovers_by_itself(collectors, kafka_bootstrap,
                                                                kafka_state_dir):
    if kafka_state_dir is None or os.environ.get("SKVOZ_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("the broker is external; cannot stop it")
    c = collectors()
    devstack.stop_kafka(kafka_state_dir)
    try:
        # Started without Kafka: listening, not ready, and saying why.
        c.start(wait_ready=False)
        status, headers, body = c.get("/healthz")
        assert status == 503 and headers.get("Retry-After")
        time.sleep(1)
        body = c.get("/healthz")[2]
        assert not body["kafka"]["connected"] and kafka_bootstrap in body["kafka"]["error"]
        early = pv()
        status, headers, body = c.collect([early], "cl")
        assert status == 503 and headers.get("Retry-After") == "1" and body["reason"] == "not_ready"
    finally:
        devstack.start_kafka(kafka_state_dir)
    c.wait()  # the same process becomes ready once Kafka answers
    before = pv()
    assert c.collect([before], "cl")[0] == 202

    devstack.stop_kafka(kafka_state_dir)
    try:
        # Every answer while the broker is away is 503 with Retry-After, never a 202.
        refused = []
        deadline = time.monotonic() + 20
        while len(refused) < 5:
            assert time.monotonic() < deadline, f"no 503 while Kafka is down:\n{c.log()}"
            ev = pv()
            t0 = time.monotonic()
            status, headers, body = c.collect([ev], "cl")
            assert status == 503, (status, body)
            assert headers.get("Retry-After") and body["reason"].startswith("kafka")
            assert time.monotonic() - t0 < 2 + 1, "bounded by ack_timeout_ms"
            refused.append(ev)
        status, _, body = c.get("/healthz")
        assert status == 503 and body["kafka"]["healthy"] is False and body["kafka"]["error"]
    finally:
        devstack.start_kafka(kafka_state_dir)

    # Recovers without a restart; the refused events, retried, are not taken for duplicates.
    deadline = time.monotonic() + 30
    while c.collect([refused[0]], "cl")[0] != 202:
        assert time.monotonic() < deadline, f"collector did not recover:\n{c.log()}"
        time.sleep(0.2)
    for ev in [early, *refused[1:]]:
        status, _, body = c.collect([ev], "cl")
        assert status == 202 and "duplicates" not in body, body
    assert c.get("/healthz")[0] == 200
    ids = published_ids(kafka_bootstrap, c.prefix)
    for ev in [early, before, *refused]:
        assert ids[ev["id"]] >= 1, "an event acknowledged with 202 is in Kafka"
    assert c.metrics()["skvoz_kafka_fast_failures"] >= 1
    assert c.stop() == 0


# -- shared edge state ------------------------------------------------------------------------------


def test_duplicates_across_collectors_are_published_once(collectors, kafka_bootstrap):
    a, b = collectors().start(), collectors().start()
    batch = [pv() for _ in range(5)]
    assert a.collect(batch, "dup")[0] == 202
    status, _, reply = b.collect(batch, "dup")  # the counter's retry reached another collector
    assert status == 202 and reply["accepted"] == 5 and reply["duplicates"] == 5
    new = pv()
    status, _, reply = a.collect([batch[0], new], "dup")
    assert status == 202 and reply["duplicates"] == 1

    # The same requests at the same time on both: each id is claimed by one of them; the other
    # answers 503 (retry) for ids still being published, never 202 before they are durable.
    race = [[pv() for _ in range(3)] for _ in range(20)]
    results: list[int] = []

    def send(col: Collector) -> None:
        for events in race:
            for _ in range(50):
                status = col.collect(events, "race")[0]
                if status != 503:
                    break
                time.sleep(0.05)
            results.append(status)

    threads = [threading.Thread(target=send, args=(col,)) for col in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [202] * 40

    ids = published_ids(kafka_bootstrap, a.prefix)
    expected = [e["id"] for e in batch] + [new["id"]] + [e["id"] for r in race for e in r]
    assert sorted(ids) == sorted(expected)
    assert set(ids.values()) == {1}, {k: v for k, v in ids.items() if v != 1}
    dups = a.metrics()["skvoz_edge_duplicates"] + b.metrics()["skvoz_edge_duplicates"]
    assert dups >= 6


def test_rate_limit_per_site_is_429(collectors, kafka_bootstrap):
    c = collectors(rate_limit=5).start()
    sent, limited, accepted = [], [], []
    for _ in range(12):  # within at most two 1-second windows: at most 10 pass
        ev = pv()
        status, headers, body = c.collect([ev], "busy")
        sent.append(status)
        if status == 429:
            assert headers.get("Retry-After") == "1" and body["reason"] == "rate_limited", body
            limited.append(ev)
        else:
            assert status == 202, body
            accepted.append(ev)
    assert len(accepted) <= 10 and len(limited) >= 2, sent
    assert c.collect([pv()], "other", site=SITE_2)[0] == 202, "the limit is per site"
    time.sleep(1.1)
    assert c.collect([limited[0]], "busy")[0] == 202, "a refused event goes through later"

    ids = published_ids(kafka_bootstrap, c.prefix)
    assert all(ids[e["id"]] == 1 for e in accepted)
    assert ids[limited[0]["id"]] == 1
    assert all(e["id"] not in ids for e in limited[1:]), "a 429 publishes nothing"
    assert c.metrics()["skvoz_edge_rate_limited_requests"] == len(limited)


def test_redis_down_still_publishes_and_counts_it(collectors, kafka_bootstrap):
    c = collectors(redis_url=f"redis://127.0.0.1:{free_port()}/0").start()
    events = [pv(), pv()]
    for ev in events:
        status, _, body = c.collect([ev], "noredis")
        assert status == 202 and "duplicates" not in body
    assert c.collect([events[0]], "noredis")[0] == 202  # no dedup without Redis: published again

    status, _, health = c.get("/healthz")
    assert status == 200, "Redis is an optimisation: the collector stays healthy"
    assert health["redis"]["redis_errors"] >= 1 and "last_error" in health["redis"]
    m = c.metrics()
    assert m["skvoz_edge_unchecked_events"] == 3 and m["skvoz_edge_redis_errors"] >= 1
    ids = published_ids(kafka_bootstrap, c.prefix)
    assert ids[events[0]["id"]] == 2 and ids[events[1]["id"]] == 1


# -- the edge state on its own ------------------------------------------------------------------------


async def test_edge_claims_publish_after_ack_and_release_on_failure(redis_url):
    from tracker.edge_state import EdgeState

    prefix = f"kc{uuid.uuid4().hex[:8]}"
    a = EdgeState(redis_url, dedup_window_s=60, rate_limit_per_site=0, claim_ms=5000, prefix=prefix)
    b = EdgeState(redis_url, dedup_window_s=60, rate_limit_per_site=0, claim_ms=5000, prefix=prefix)
    try:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        first = await a.admit("site", "p", ids)
        assert first.checked and len(first.claimed) == 3 and not first.duplicates
        other = await b.admit("site", "p", ids)  # while a publishes: neither new nor duplicate
        assert other.in_flight == 3 and not other.claimed and not other.duplicates
        await a.release(first)  # a's publish failed: a retry must go through
        retry = await b.admit("site", "p", ids)
        assert len(retry.claimed) == 3
        await b.confirm(retry)  # acknowledged by Kafka
        again = await a.admit("site", "p", ids + ["fresh"])
        assert again.duplicates == set(ids) and len(again.claimed) == 1
        assert (await a.admit("site", "other-project", ids)).claimed, "ids are per project"
        ttl = await a.client.pttl(f"{prefix}:seen:p:{ids[0]}")
        assert 55_000 < ttl <= 60_000, "published ids are kept for the dedup window"
    finally:
        await a.close()
        await b.close()


async def test_edge_rate_limit_window(redis_url):
    from tracker.edge_state import EdgeState

    edge = EdgeState(redis_url, dedup_window_s=60, rate_limit_per_site=10, claim_ms=5000,
                     prefix=f"kc{uuid.uuid4().hex[:8]}")
    try:
        # Align to the start of a second so all calls share one window.
        await _sleep_to_next_second()
        results = [await edge.admit("s1", "p", [str(uuid.uuid4()) for _ in range(4)])
                   for _ in range(4)]
        # 4 + 4 = 8 < 10 pass; the third starts under the limit and passes (12); the fourth not
        assert [r.limited for r in results] == [False, False, False, True]
        assert not results[3].claimed, "a limited request claims nothing"
        assert not (await edge.admit("s2", "p", [str(uuid.uuid4())])).limited
        await _sleep_to_next_second()
        assert not (await edge.admit("s1", "p", [str(uuid.uuid4())])).limited
    finally:
        await edge.close()


async def _sleep_to_next_second() -> None:
    await asyncio.sleep(1.02 - (time.time() % 1))


# -- the publisher on its own -------------------------------------------------------------------------


def _events(n: int, client: str = "c1"):
    from streams.model import Event

    now = int(time.time() * 1000)
    return [Event(project_id=PROJECT, site="shop.example.ru", event_id=str(uuid.uuid4()),
                  client_id=client, type="pageview", ts=now, received_at=now) for _ in range(n)]


async def test_unacknowledged_publish_raises_within_the_ack_bound(kafka_bootstrap, kafka_state_dir):
    """A broker that holds the connection but answers nothing (frozen with SIGSTOP: a long GC
    pause, a network partition): publish gives up at ack_timeout_ms, never returns normally,
    and publishing resumes by itself when the broker does."""
    from tracker.app import Unavailable
    from tracker.config import Kafka
    from tracker.kafka_publisher import KafkaPublisher

    if kafka_state_dir is None or os.environ.get("SKVOZ_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("the broker is external; cannot freeze it")
    broker_pid = devstack.status(kafka_state_dir)["kafka"]["pid"]
    prefix = f"kc{uuid.uuid4().hex[:8]}"
    pub = KafkaPublisher(Kafka(bootstrap=kafka_bootstrap, topic_prefix=prefix,
                               partitions=PARTITIONS, ack_timeout_ms=500))
    await asyncio.wait_for(pub.start(), 60)
    try:
        await pub.publish(_events(1))
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(Unavailable) as info:
                await pub.publish(_events(2))
            assert info.value.reason == "kafka_timeout" and info.value.retry_after
            assert 0.45 < time.monotonic() - t0 < 2
            assert not pub.healthy and pub.counters["ack_timeouts"] == 1
            with pytest.raises(Unavailable) as info:  # meanwhile: fail fast, no new waits
                await pub.publish(_events(1))
            assert info.value.reason == "kafka_unavailable"
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while not pub.healthy:
            assert time.monotonic() < deadline, f"publisher did not recover: {pub.health()}"
            await asyncio.sleep(0.1)
        await pub.publish(_events(1))
        assert pub.counters["published_events"] == 2
    finally:
        await pub.stop()


async def test_producer_reset_replaces_a_broken_producer(kafka_bootstrap):
    from aiokafka.errors import OutOfOrderSequenceNumber

    from tracker.config import Kafka
    from tracker.kafka_publisher import KafkaPublisher

    prefix = f"kc{uuid.uuid4().hex[:8]}"
    pub = KafkaPublisher(Kafka(bootstrap=kafka_bootstrap, topic_prefix=prefix, partitions=PARTITIONS))
    await asyncio.wait_for(pub.start(), 60)
    try:
        await pub.publish(_events(1))
        old = pub._producer
        pub._schedule_reset(OutOfOrderSequenceNumber())
        await asyncio.wait_for(pub._reset_task, 60)
        assert pub._producer is not old and pub.counters["producer_resets"] == 1
        assert old._closed, "the replaced producer is closed"
        await pub.publish(_events(3, "c2"))
        ids = published_ids(kafka_bootstrap, prefix)
        assert sum(ids.values()) == 4
    finally:
        await pub.stop()
