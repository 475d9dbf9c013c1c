"""Faults in the scale-out path: after each, no event is lost and none is counted twice (the
reports equal the embedded runtime's over the same events).

* a worker killed with SIGKILL mid-stream and started again (state from the changelogs, the
  uncommitted messages processed again);
* the sink killed between an insert and its offset commit (SKVOZ_SINK_CRASH_AFTER_INSERT);
* the broker killed and restarted mid-stream (its log dir survives).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.datagen import deliveries, generate
from tests.test_scaleout_helpers import PARTITIONS, assert_same_reports, group_lags, produce, reference_reports

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _rows_lag(stack) -> dict:
    return asyncio.run(group_lags(stack.bootstrap, {
        f"{stack.prefix}-stream": [stack.topic("events")],
        f"{stack.prefix}-sink": [stack.topic("rows")],
    }, PARTITIONS))


def test_worker_kill9_and_sink_crash_between_insert_and_commit(stack, store, tmp_path):
    events = generate(persons=500, seed=51)
    batches = deliveries(events, seed=51)
    want = reference_reports(store, tmp_path, batches)
    stream_group = f"{stack.prefix}-stream"

    stack.create_topics()
    # the sink dies right after its 3rd insert, before committing that batch
    sink = stack.sink(env={"SKVOZ_SINK_CRASH_AFTER_INSERT": "3"})
    stack.wait_sink_ready(sink)
    # the worker dies in its 6th batch, after the outputs were acknowledged, before the state
    # (small batches: the crash must come with most of the stream still to do)
    worker = stack.worker("w1", env={"SKVOZ_WORKER_CRASH_AFTER_OUTPUTS": "6", "SKVOZ_PIPELINE_BATCH_MAX_EVENTS": "300"})
    n = produce(stack.bootstrap, stack.topic("events"), batches)
    assert worker.wait_exit(120) == 9, worker.tail()
    assert _rows_lag(stack)["per_group"][stream_group] > n // 2, "too little left for a kill mid-stream"
    assert "exiting after the outputs, before the state" in worker.tail()

    # again (RocksDB store, filled from the changelogs), and kill -9 it mid-stream this time
    worker = stack.worker("w1", "--store", "rocksdb://", env={"SKVOZ_PIPELINE_BATCH_MAX_EVENTS": "300"})
    deadline = time.monotonic() + 120
    start_lag = _rows_lag(stack)["per_group"][stream_group]
    while True:
        lag = _rows_lag(stack)["per_group"][stream_group]  # events not yet committed
        if lag < start_lag:  # it made progress (offsets are committed every 0.5 s)
            assert lag > 0, "the worker finished before the kill; the test proves nothing"
            break
        assert worker.alive(), worker.tail()
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)
    worker.kill()

    worker = stack.worker("w1")  # memory store: the state comes back from the changelogs
    assert sink.wait_exit(120) == 9, sink.tail()
    assert "exiting after the insert, before the commit" in sink.tail()
    sink = stack.sink(name="sink2")
    stack.wait_sink_ready(sink)
    stack.wait_drained([worker, sink])
    assert_same_reports(stack.all_reports(), want)
    assert worker.stop() == 0, worker.tail()
    assert sink.stop() == 0, sink.tail()


def test_broker_restart_mid_stream(stack, store, tmp_path, kafka_restart):
    events = generate(persons=400, seed=61)
    batches = deliveries(events, seed=61)
    half = len(batches) // 2
    want = reference_reports(store, tmp_path, batches)

    stack.create_topics()
    worker = stack.worker("w1")
    sink = stack.sink()
    stack.wait_sink_ready(sink)
    produce(stack.bootstrap, stack.topic("events"), batches[:half])
    time.sleep(1.0)  # in the middle of processing the first half
    t0 = time.monotonic()
    kafka_restart(hard=True)
    print(f"broker killed and restarted in {time.monotonic() - t0:.1f}s")
    produce(stack.bootstrap, stack.topic("events"), batches[half:])
    stack.wait_drained([worker, sink], timeout=240)
    assert_same_reports(stack.all_reports(), want)
    assert worker.stop() == 0, worker.tail()
    assert sink.stop() == 0, sink.tail()
