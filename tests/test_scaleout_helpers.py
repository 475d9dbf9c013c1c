"""Shared pieces of the scale-out tests (no tests here): real `skvoz worker` / `skvoz sink`
processes against the harness broker, the reference reports from the embedded runtime, and a
drain check on consumer-group offsets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from streams.codec import by_client, encode_events, topic_name
from streams.model import Event
from tests import configs
from tests.datagen import DOMAINS
from tests.plugins.server import free_port

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "p1"
TOKEN = "scaleout-token-0123456789abcdef"
TZ = "Europe/Moscow"
RANGE = ("2025-12-01", "2027-06-30")
MODELS = ("first_click", "last_click", "last_significant_click")
GROUP_BYS = ("type", "source", "source,medium", "source,medium,campaign")
FUNNELS = [
    (["pageview:/courses*", "goal:signup", "form:*"], 3 * 86400, None),
    (["pageview:/courses*", "goal:signup", "form:*"], 3 * 86400, "source"),
    (["pageview:/prices", "form:lead"], 7 * 86400, None),
]
PARTITIONS = 4
SESSION_TIMEOUT = "6"  # the dev broker allows short sessions; a killed member is gone in 6 s


def write_config(path: Path, data_dir: Path, prefix: str, port: int, partitions: int = PARTITIONS) -> Path:
    return configs.write_config(path, data_dir=data_dir, port=port, project=PROJECT, token=TOKEN, timezone=TZ,
                                sites={DOMAINS[0]: "scaleout-site-key-ru", DOMAINS[1]: "scaleout-site-key-kz"},
                                kafka={"topic_prefix": prefix, "partitions": partitions},
                                pipeline={"batch_max_events": 5000, "batch_max_ms": 100})


class LoggedProcess:
    """``python -m <module> ...`` run from the checkout, its output appended to a log file."""

    name = "process"

    def __init__(self, log_path: Path, env: dict) -> None:
        self.log_path, self.env = log_path, env
        self.proc: subprocess.Popen | None = None

    def launch(self, *argv: str) -> None:
        with open(self.log_path, "ab") as fh:
            fh.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            self.proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"{self.name} ignored SIGTERM for {timeout}s:\n{self.tail()}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class Role(LoggedProcess):
    """One `skvoz worker` or `skvoz sink` subprocess, its log in a file."""

    def __init__(self, role: str, config: Path, log: Path, *args: str, env: dict | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SKVOZ_")}
        base["SKVOZ_KAFKA_BOOTSTRAP"] = os.environ["SKVOZ_KAFKA_BOOTSTRAP"]
        base["PYTHONUNBUFFERED"] = "1"
        super().__init__(log, {**base, **(env or {})})
        self.role = self.name = role
        self.config = config
        self.args = list(args)

    def start(self) -> "Role":
        self.launch("tracker.cli", self.role, "--config", str(self.config), *self.args)
        return self


class Stack:
    """Config, workers and a sink for one test; everything still running is killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix = f"so{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.data_dir = tmp / "sink-data"
        self.config = write_config(tmp / "skvoz.toml", self.data_dir, self.prefix, self.port)
        self.bootstrap = os.environ["SKVOZ_KAFKA_BOOTSTRAP"]
        self.roles: list[Role] = []
        self.base_url = f"http://127.0.0.1:{self.port}"

    def create_topics(self) -> None:
        """As the first collector or worker would (so tests can produce before either runs)."""
        from streams.faust_app import ensure_topics

        asyncio.run(ensure_topics(self.bootstrap, self.prefix, PARTITIONS, 1))

    def topic(self, name: str) -> str:
        return topic_name(self.prefix, name)

    def worker(self, name: str = "w1", *args: str, env: dict | None = None) -> Role:
        # each worker its own data dir, as on separate machines
        env = {"SKVOZ_DATA_DIR": str(self.tmp / f"{name}-data"), **(env or {})}
        role = Role("worker", self.config, self.tmp / f"{name}.log", "--session-timeout", SESSION_TIMEOUT, *args, env=env)
        self.roles.append(role)
        return role.start()

    def sink(self, env: dict | None = None, name: str = "sink") -> Role:
        role = Role("sink", self.config, self.tmp / f"{name}.log", "--session-timeout", SESSION_TIMEOUT, env=env)
        self.roles.append(role)
        return role.start()

    @staticmethod
    def assignments(role: Role) -> int:
        return role.log_path.read_text(errors="replace").count("Setting newly assigned partitions")

    def wait_workers_settled(self, roles: list[Role], timeout: float = 90, after: dict | None = None) -> None:
        """Until each worker logged "Worker ready" after its latest partition assignment (and,
        with ``after`` {role: count}, had more assignments than that count)."""
        deadline = time.monotonic() + timeout
        while True:
            settled = 0
            for r in roles:
                if not r.alive():
                    pytest.fail(f"worker exited ({r.proc.returncode}):\n{r.tail()}")
                text = r.log_path.read_text(errors="replace")
                assigned = text.rfind("Setting newly assigned partitions")
                newer = after is None or text.count("Setting newly assigned partitions") > after.get(r, -1)
                if newer and assigned >= 0 and text.find("Worker ready", assigned) >= 0:
                    settled += 1
            if settled == len(roles):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"workers not settled in {timeout}s:\n{self.logs()}")
            time.sleep(0.2)

    def wait_sink_ready(self, role: Role, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not role.alive():
                pytest.fail(f"sink exited ({role.proc.returncode}):\n{role.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"sink not ready in {timeout}s:\n{role.tail()}")

    def close(self) -> None:
        for r in self.roles:
            r.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {r.role} {r.log_path.name}\n{r.tail(40)}" for r in self.roles)

    # -- reports ------------------------------------------------------------------------------
    def report(self, name: str, params: list[tuple[str, str]]) -> dict:
        q = urllib.parse.urlencode([("project", PROJECT), ("from", RANGE[0]), ("to", RANGE[1]), *params])
        req = urllib.request.Request(f"{self.base_url}/api/v1/reports/{name}?{q}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def all_reports(self) -> dict:
        out = {}
        for model in MODELS:
            for group_by in GROUP_BYS:
                out[f"channels {model} {group_by}"] = self.report("channels", [("model", model), ("group_by", group_by)])
        for steps, window, group_by in FUNNELS:
            params = [("steps", s) for s in steps] + [("window", str(window))]
            if group_by:
                params.append(("group_by", group_by))
            out[f"funnel {steps} {group_by}"] = self.report("funnel", params)
        return out

    # -- draining -----------------------------------------------------------------------------
    def wait_drained(self, watch: list[Role], timeout: float = 180) -> dict:
        """Until the worker group has committed every events/views/persons record and the sink
        group every rows record (the rows are then in ClickHouse), seen twice in a row."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            for r in watch:
                if not r.alive():
                    pytest.fail(f"{r.role} exited ({r.proc.returncode}):\n{r.tail()}")
            lags = asyncio.run(group_lags(self.bootstrap, {
                f"{self.prefix}-stream": [self.topic(t) for t in ("events", "views", "persons")],
                f"{self.prefix}-sink": [self.topic("rows")],
            }, PARTITIONS))
            if lags["lag"] == 0:
                if last is not None and last == lags["ends"]:
                    return lags
                last = lags["ends"]
            else:
                last = None
            if time.monotonic() > deadline:
                pytest.fail(f"not drained after {timeout}s: {lags}\n{self.logs()}")
            time.sleep(0.5)


async def _group_offsets(admin, group: str, timeout: float = 30.0) -> dict:
    """The group's committed offsets; a fresh broker has no group coordinator for a moment."""
    from aiokafka.errors import GroupCoordinatorNotAvailableError, NotCoordinatorError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await admin.list_consumer_group_offsets(group)
        except (GroupCoordinatorNotAvailableError, NotCoordinatorError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def group_lags(bootstrap: str, groups: dict[str, list[str]], partitions: int) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    await asyncio.sleep(0)
    try:
        total, ends_all, per = 0, {}, {}
        for group, topics in groups.items():
            committed = await _group_offsets(admin, group)
            tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            lag = 0
            for tp in tps:
                c = committed.get(tp)
                lag += ends[tp] - (c.offset if c is not None and c.offset >= 0 else 0)
                ends_all[f"{tp.topic}[{tp.partition}]"] = ends[tp]
            per[group] = lag
            total += lag
        return {"lag": total, "per_group": per, "ends": ends_all}
    finally:
        await consumer.stop()
        await admin.close()


async def produce_async(bootstrap: str, topic: str, batches: list[list[Event]]) -> int:
    """One message per client per delivery batch, as the collector publishes them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for batch in batches:
            for key, events in by_client(batch).items():
                futures.append(await producer.send(topic, encode_events(events), key=key))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, batches: list[list[Event]]) -> int:
    return asyncio.run(produce_async(bootstrap, topic, batches))


async def produce_raw_async(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def reading_from_start(bootstrap: str, topic: str, partitions: int = PARTITIONS):
    """A group-less consumer assigned every partition of ``topic``, at the beginning; yields
    (consumer, partitions)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    await asyncio.sleep(0)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        yield c, tps
    finally:
        await c.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> list[bytes]:
    async with reading_from_start(bootstrap, topic, partitions) as (c, tps):
        ends = await c.end_offsets(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + 30
        while any([await c.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"timed out reading {topic}"
            for msgs in (await c.getmany(timeout_ms=300)).values():
                out.extend(m.value for m in msgs)
        return out


# -- the reference: the embedded runtime over the same deliveries ------------------------------------


def reference_reports(store, tmp: Path, batches: list[list[Event]]) -> dict:
    """The same reports from the embedded runtime (local log → pipeline → ClickHouse)."""
    from datetime import date

    from streams.embedded import Runtime
    from tracker.app import dumps
    from tracker.config import load

    cfg = load(tmp / "skvoz.toml", environ={})
    rt = Runtime(cfg.rules(), tmp / "embedded", write=store.write, batch_max_ms=50)
    rt.start()
    try:
        for batch in batches:
            rt.submit(batch)
        assert rt.wait_idle(120), rt.stats()
    finally:
        rt.stop()
    d0, d1 = date.fromisoformat(RANGE[0]), date.fromisoformat(RANGE[1])
    out = {}
    for model in MODELS:
        for group_by in GROUP_BYS:
            out[f"channels {model} {group_by}"] = store.channels(PROJECT, TZ, d0, d1, model, group_by.split(","))
    for steps, window, group_by in FUNNELS:
        out[f"funnel {steps} {group_by}"] = store.funnel(PROJECT, TZ, d0, d1, steps, window, group_by)
    return json.loads(dumps(out))  # as the API would send it


def assert_same_reports(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name
    # the comparison means something only if the reports are not empty
    assert want["channels last_click type"]["totals"]["conversions"] > 0
