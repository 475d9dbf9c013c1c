"""Two workers split the partitions; when one stops, the other takes its partitions over and
rebuilds their state (open visits, histories, persons) from the changelog topics: the reports
are those of the embedded runtime over all events."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time

import pytest

from tests.datagen import deliveries, generate
from tests.test_scaleout_helpers import PARTITIONS, assert_same_reports, group_lags, produce, reference_reports

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _processed(role) -> int:
    """Events the worker processed, from its last counters line (0 if none yet)."""
    found = re.findall(r"worker counters: \{'events': (\d+)", role.log_path.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def test_second_worker_takes_over_with_recovered_state(stack, store, tmp_path):
    events = generate(persons=500, seed=41)
    batches = deliveries(events, seed=41)
    half = len(batches) // 2
    want = reference_reports(store, tmp_path, batches)

    stack.create_topics()
    w1 = stack.worker("w1", "--store", "rocksdb://")  # the production store; w2 keeps state in memory
    stack.wait_workers_settled([w1])
    probe = subprocess.run([sys.executable, "-m", "tracker.cli", "worker", "--config", str(w1.config), "--alive", "30"],
                           env=w1.env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr  # the liveness probe of deploy/k8s/worker.yaml
    # A join with no traffic; test_workers_join_and_leave_under_load has it under load.
    w2 = stack.worker("w2")
    time.sleep(1.0)
    stack.wait_workers_settled([w1, w2])
    sink = stack.sink()
    stack.wait_sink_ready(sink)
    produce(stack.bootstrap, stack.topic("events"), batches[:half])
    stack.wait_drained([w1, w2, sink])

    # w2 leaves; w1 takes all partitions and must recover w2's tables from the changelogs
    before = {w1: stack.assignments(w1)}
    assert w2.stop() == 0, w2.tail()
    assert _processed(w2) > 0, w2.tail()  # w2 had partitions: its state is what w1 recovers
    stack.wait_workers_settled([w1], after=before)  # takeover and recovery done before new traffic
    produce(stack.bootstrap, stack.topic("events"), batches[half:])
    stack.wait_drained([w1, sink])
    assert_same_reports(stack.all_reports(), want)
    assert any((tmp_path / "w1-data" / "worker").glob("**/clients-*.db")), "w1 did not use RocksDB"
    assert w1.stop() == 0, w1.tail()
    assert 0 < _processed(w1) < sum(map(len, batches)), w1.tail()  # w1 did not do everything alone
    assert sink.stop() == 0, sink.tail()


def _stream_lag(stack) -> int:
    """Records of the worker group's source topics not committed yet."""
    topics = [stack.topic(t) for t in ("events", "views", "persons")]
    return asyncio.run(group_lags(stack.bootstrap, {f"{stack.prefix}-stream": topics}, PARTITIONS))["lag"]


def test_workers_join_and_leave_under_load(stack, store, tmp_path):
    """Every membership change happens while events keep arriving and a burst of them waits:
    a worker joins, leaves cleanly, another joins, the first is killed with SIGKILL."""
    events = generate(persons=700, seed=43)
    batches = deliveries(events, seed=43)
    want = reference_reports(store, tmp_path, batches)
    n = len(batches)
    start, bursts, trickle = batches[: n // 5], [batches[n // 5 + i::4] for i in range(3)], batches[n // 5 + 3::4]
    chunks = [trickle[i::80] for i in range(80)]

    def keep_producing() -> None:
        for chunk in chunks:  # about 40 s of traffic, longer than the membership changes take
            produce(stack.bootstrap, stack.topic("events"), chunk)
            time.sleep(0.5)

    lags = []

    def burst() -> None:
        produce(stack.bootstrap, stack.topic("events"), bursts[len(lags)])
        lags.append(_stream_lag(stack))

    stack.create_topics()
    sink = stack.sink()
    stack.wait_sink_ready(sink)
    produce(stack.bootstrap, stack.topic("events"), start)
    producer = threading.Thread(target=keep_producing, daemon=True)
    w1 = stack.worker("w1", "--store", "rocksdb://")
    producer.start()
    stack.wait_workers_settled([w1])
    burst()
    w2 = stack.worker("w2")  # joins
    stack.wait_workers_settled([w2])
    burst()
    assert w2.stop() == 0, w2.tail()  # leaves
    w3 = stack.worker("w3")  # joins
    stack.wait_workers_settled([w3])
    burst()
    w1.kill()  # dies: w3 takes all partitions over from the changelogs
    producer.join(120)
    print(f"uncommitted records at each change: {lags}")
    assert all(lag > 500 for lag in lags), f"too small a backlog at some change: {lags}"
    stack.wait_drained([w3, sink], timeout=300)
    assert_same_reports(stack.all_reports(), want)
    assert w3.stop() == 0, w3.tail()
    assert sink.stop() == 0, sink.tail()
