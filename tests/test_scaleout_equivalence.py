"""Kafka → `skvoz worker` → `skvoz sink` gives the same reports as the embedded runtime, and bad
messages go to the dead-letter topic with a reason while the stream goes on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from streams.codec import encode_events
from tests.datagen import deliveries, generate
from tests.test_scaleout_helpers import assert_same_reports, produce, produce_raw_async, read_topic, reference_reports

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_workers_and_sink_equal_the_embedded_runtime(stack, store, tmp_path):
    events = generate(persons=1400, seed=31)
    assert len(events) >= 20_000
    batches = deliveries(events, seed=31)
    want = reference_reports(store, tmp_path, batches)

    t0 = time.monotonic()
    stack.create_topics()
    worker = stack.worker("w1")
    sink = stack.sink()
    stack.wait_sink_ready(sink)
    n = produce(stack.bootstrap, stack.topic("events"), batches)
    # bad input: not JSON, an unknown project, an invalid event type, a key that is not the client's
    good = events[0]
    bad_type = dataclasses.replace(good, type="bogus", event_id="bad-type-1")
    stranger = dataclasses.replace(good, project_id="nope", event_id="bad-proj-1")
    asyncio.run(produce_raw_async(stack.bootstrap, stack.topic("events"), [
        (b"p1:x", b"{not json"),
        (b"nope:" + good.client_id.encode(), encode_events([stranger])),
        (f"p1:{good.client_id}".encode(), encode_events([bad_type])),
        (b"p1:someone-else", encode_events([good])),
    ]))
    t_sent = time.monotonic()
    stack.wait_drained([worker, sink])
    t_done = time.monotonic()
    got = stack.all_reports()
    print(f"{len(events)} events in {n} messages; produced in {t_sent - t0:.1f}s, "
          f"drained {t_done - t_sent:.1f}s after the last one")
    assert_same_reports(got, want)

    dead = [json.loads(v) for v in asyncio.run(read_topic(stack.bootstrap, stack.topic("dead-letters")))]
    reasons = sorted(d["reason"].split(":")[0] for d in dead)
    assert reasons == ["key_mismatch", "undecodable", "unknown_project", "unknown_type"], dead
    assert all(d["stage"] == "clients" and d["topic"] == stack.topic("events") and d["offset"] >= 0 for d in dead)
    assert worker.stop() == 0, worker.tail()
    assert sink.stop() == 0, sink.tail()
