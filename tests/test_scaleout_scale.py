"""Two workers split the partitions; when one stops, the other takes its partitions over and
rebuilds their state (open visits, histories, persons) from the changelog topics: the reports
are those of the embedded runtime over all events."""

from __future__ import annotations

import re
import time

import pytest

from tests.datagen import deliveries, generate
from tests.test_scaleout_helpers import Stack, assert_same_reports, produce, reference_reports

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.close()


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
    # Join before the traffic: faust-streaming mishandles a rebalance that keeps a partition on
    # a worker with a batch in flight (see _unstick_commits in streams/faust_app.py).
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
