"""Fixtures for kafka tests (owned by the kafka area).

Only tests marked ``@pytest.mark.kafka`` start the real broker and Redis (``tracker.devstack``),
once per test session; for them ``SKVOZ_KAFKA_BOOTSTRAP`` and ``SKVOZ_REDIS_URL`` are also set in
the environment, so subprocesses (``skvoz worker`` ...) find the stack. Set
``SKVOZ_TEST_KAFKA_BOOTSTRAP`` / ``SKVOZ_TEST_REDIS_URL`` to use servers that already run.

Fixtures:
  kafka_stack        session: {"SKVOZ_KAFKA_BOOTSTRAP": "127.0.0.1:P", "SKVOZ_REDIS_URL": "redis://..."}
  kafka_state_dir    session: the devstack state dir, or None for external servers
  kafka_bootstrap    the bootstrap string
  redis_url          the Redis URL
  kafka_restart      callable(hard=False): restart the broker keeping its data (skips if external)
  kafka_topic        factory(partitions=1, *, suffix="", config=None) -> unique topic name,
                     created with the admin client and deleted after the test
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import tempfile
import uuid
from pathlib import Path

import pytest

from tracker import devstack

EXTERNAL_KAFKA = "SKVOZ_TEST_KAFKA_BOOTSTRAP"
EXTERNAL_REDIS = "SKVOZ_TEST_REDIS_URL"
OWNER_FILE = "pytest-owner.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans() -> None:
    """Stop stacks left by pytest runs that were killed before their teardown."""
    root = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    for owner in root.glob(f"pytest-*/devstack*/{OWNER_FILE}"):
        with contextlib.suppress(OSError, ValueError, devstack.DevStackError):
            if not _pid_alive(int(owner.read_text().strip())):
                devstack.down(owner.parent)
                owner.unlink()


@pytest.fixture(scope="session")
def kafka_state_dir(request, tmp_path_factory) -> Path | None:
    if os.environ.get(EXTERNAL_KAFKA) and os.environ.get(EXTERNAL_REDIS):
        return None
    _reap_orphans()
    d = tmp_path_factory.mktemp("devstack")
    (d / OWNER_FILE).write_text(str(os.getpid()))
    request.session._skvoz_devstack_dir = d
    return d


@pytest.fixture(scope="session")
def kafka_stack(kafka_state_dir) -> dict[str, str]:
    if kafka_state_dir is None:
        yield {
            "SKVOZ_KAFKA_BOOTSTRAP": os.environ[EXTERNAL_KAFKA],
            "SKVOZ_REDIS_URL": os.environ[EXTERNAL_REDIS],
        }
        return
    try:
        settings = devstack.up(kafka_state_dir)
    except devstack.DevStackError as e:
        devstack.down(kafka_state_dir)
        pytest.fail(f"could not start the Kafka/Redis dev stack: {e}", pytrace=False)
    # Half-external: a given server wins over the one we started.
    if os.environ.get(EXTERNAL_KAFKA):
        settings["SKVOZ_KAFKA_BOOTSTRAP"] = os.environ[EXTERNAL_KAFKA]
    if os.environ.get(EXTERNAL_REDIS):
        settings["SKVOZ_REDIS_URL"] = os.environ[EXTERNAL_REDIS]
    try:
        yield settings
    finally:
        devstack.down(kafka_state_dir)


@pytest.fixture(autouse=True)
def _kafka_marked(request):
    """For tests marked kafka: start the stack and export its settings; others pay nothing."""
    if request.node.get_closest_marker("kafka") is None:
        yield
        return
    settings = request.getfixturevalue("kafka_stack")
    mp = pytest.MonkeyPatch()
    for key, value in settings.items():
        mp.setenv(key, value)
    try:
        yield
    finally:
        mp.undo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed kafka test shows the broker's last log lines: most failures are explained there."""
    report = yield
    if report.failed and item.get_closest_marker("kafka") is not None:
        state_dir = getattr(item.session, "_skvoz_devstack_dir", None)
        if state_dir is not None:
            log = Path(state_dir) / "kafka" / "kafka.log"
            report.sections.append(("kafka broker log (tail)", devstack._tail(log, 60)))
    return report


@pytest.fixture
def kafka_bootstrap(kafka_stack) -> str:
    return kafka_stack["SKVOZ_KAFKA_BOOTSTRAP"]


@pytest.fixture
def redis_url(kafka_stack) -> str:
    return kafka_stack["SKVOZ_REDIS_URL"]


@pytest.fixture
def kafka_restart(kafka_state_dir, kafka_stack):
    if kafka_state_dir is None or os.environ.get(EXTERNAL_KAFKA):
        pytest.skip("the broker is external; cannot restart it")

    def restart(hard: bool = False) -> dict[str, str]:
        # Synchronous on purpose: call it from the test body, not from a short-lived thread.
        return devstack.restart_kafka(kafka_state_dir, hard=hard)

    return restart


@pytest.fixture
def stack(tmp_path):
    """Workers, sinks and their config for one scale-out test (tests/test_scaleout_helpers.py);
    whatever still runs at the end is killed."""
    from tests.test_scaleout_helpers import Stack

    s = Stack(tmp_path)
    yield s
    s.close()


async def _create_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str]) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config)]
        )
    finally:
        await admin.close()
    # CreateTopics returns once the controller committed it; the broker becomes leader a moment
    # later. ListOffsets only succeeds on the leader, so once it answers for every partition the
    # first produce will not bounce with NotLeaderForPartition.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka: stop() right after start() would raise CancelledError
    try:
        tps = [TopicPartition(name, p) for p in range(partitions)]
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                ends = await consumer.end_offsets(tps)
                if len(ends) == partitions:
                    return
            except KafkaError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"topic {name} not served 30s after create")
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()


async def _delete_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture
def kafka_topic(request, kafka_bootstrap):
    """Factory for per-test topics; sync so it works from sync and async tests alike."""
    created: list[str] = []
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(partitions: int = 1, *, suffix: str = "", config: dict[str, str] | None = None) -> str:
        name = f"t.{base}.{suffix + '.' if suffix else ''}{uuid.uuid4().hex[:8]}"
        devstack.run_coro(lambda: _create_topic(kafka_bootstrap, name, partitions, dict(config or {})))
        created.append(name)
        return name

    yield make
    if created:
        with contextlib.suppress(Exception):  # best effort; a restarted/stopped broker is fine
            devstack.run_coro(lambda: _delete_topics(kafka_bootstrap, created))
