"""The Faust worker's own bookkeeping, without a broker.

* It applies each source partition's offsets in order, whatever Faust delivers
  (streams.faust_app.Applied): redeliveries are skipped, messages past a gap are held back (not
  acked) and the partition is read again from the gap, and a cut-short batch counts as undone.
* The identity stage keeps only links as state and rebuilds a project's graph from them."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest

pytest.importorskip("faust")

from streams.faust_app import APPLIED_KEY, Applied, Stages, link_key  # noqa: E402
from streams.identity import IdentityGraph  # noqa: E402


class TP(NamedTuple):
    topic: str
    partition: int


class Message:
    def __init__(self, partition: int, offset: int) -> None:
        self.tp = TP("events", partition)
        self.partition, self.offset = partition, offset
        self.acked = False


class Event:
    def __init__(self, partition: int, offset: int) -> None:
        self.message = Message(partition, offset)


class Consumer:
    def __init__(self, partitions=(0, 1), log_start: int = 0) -> None:
        self.owned = {TP("events", p) for p in partitions}
        self.start = log_start
        self.sought: list[tuple[TP, int]] = []

    def assignment(self):
        return set(self.owned)

    async def earliest_offsets(self, *tps):
        return {tp: self.start for tp in tps}

    async def seek(self, tp, offset):
        self.sought.append((tp, offset))


def run_batch(consumer, table, events, counters=None):
    """Admit a batch as a stage would; returns (applied events, Applied)."""
    counters = counters if counters is not None else {"redelivered": 0, "gaps": 0, "lost_to_retention": 0}
    applied = Applied(consumer, table, counters)

    async def go():
        taken = [ev for ev in events if await applied.admit(ev)]
        applied.hold()
        await applied.read_again()
        return taken

    return asyncio.run(go()), applied


def offsets(events):
    return [(e.message.partition, e.message.offset) for e in events]


def commit_markers(table, applied):
    for key, (_, offset) in applied.markers().items():
        table[key] = offset


def test_in_order_offsets_are_applied_and_recorded_per_partition():
    consumer, table = Consumer(), {}
    batch = [Event(0, 0), Event(1, 0), Event(0, 1), Event(1, 1), Event(0, 2)]
    taken, applied = run_batch(consumer, table, batch)
    assert offsets(taken) == offsets(batch)
    assert {k: v for k, (_, v) in applied.markers().items()} == {APPLIED_KEY % 0: 2, APPLIED_KEY % 1: 1}
    assert consumer.sought == [] and not any(e.message.acked for e in batch)


def test_redelivered_offsets_are_skipped_and_acked():
    consumer, table = Consumer(), {APPLIED_KEY % 0: 4}
    batch = [Event(0, 3), Event(0, 4), Event(0, 5)]
    counters = {"redelivered": 0, "gaps": 0, "lost_to_retention": 0}
    taken, applied = run_batch(consumer, table, batch, counters)
    assert offsets(taken) == [(0, 5)]
    assert counters["redelivered"] == 2
    assert not any(e.message.acked for e in batch)  # the stream acks them as usual


def test_a_gap_holds_the_rest_of_the_partition_and_reads_it_again():
    consumer, table = Consumer(), {APPLIED_KEY % 0: 9, APPLIED_KEY % 1: 0}
    batch = [Event(0, 10), Event(0, 13), Event(1, 1), Event(0, 14)]
    taken, applied = run_batch(consumer, table, batch)
    assert offsets(taken) == [(0, 10), (1, 1)]
    assert consumer.sought == [(TP("events", 0), 11)]
    held = [e for e in batch if e.message.acked]  # marked so Faust neither acks nor commits them
    assert offsets(held) == [(0, 13), (0, 14)]
    commit_markers(table, applied)
    assert table[APPLIED_KEY % 0] == 10

    # read again from 11: applied in order, nothing held
    again = [Event(0, o) for o in range(11, 15)]
    taken, _ = run_batch(consumer, table, again)
    assert offsets(taken) == offsets(again)
    assert consumer.sought == [(TP("events", 0), 11)]


def test_first_message_must_be_the_log_start():
    consumer = Consumer(log_start=5)
    taken, applied = run_batch(consumer, {}, [Event(0, 7), Event(0, 8)])
    assert taken == [] and consumer.sought == [(TP("events", 0), 5)]
    taken, _ = run_batch(consumer, {}, [Event(0, 5), Event(0, 6)])
    assert offsets(taken) == [(0, 5), (0, 6)]


def test_offsets_deleted_by_retention_are_counted_not_waited_for():
    consumer = Consumer(log_start=100)
    counters = {"redelivered": 0, "gaps": 0, "lost_to_retention": 0}
    taken, _ = run_batch(consumer, {APPLIED_KEY % 0: 49}, [Event(0, 100)], counters)
    assert offsets(taken) == [(0, 100)] and consumer.sought == []
    assert counters["lost_to_retention"] == 50


def test_messages_of_a_revoked_partition_are_left_to_its_new_owner():
    consumer = Consumer(partitions=(1,))
    batch = [Event(0, 0), Event(1, 0)]
    taken, _ = run_batch(consumer, {}, batch)
    assert offsets(taken) == [(1, 0)]
    assert batch[0].message.acked and not batch[1].message.acked


def test_a_cut_short_batch_is_held_whole():
    class App:
        consumer = Consumer()

    stages = object.__new__(Stages)  # only what run_batch touches
    stages.app, stages.tables, stages.running = App(), {"clients": {}}, 0
    stages.counters = {"redelivered": 0, "gaps": 0, "lost_to_retention": 0}
    batch = [Event(0, 0), Event(0, 1)]

    async def body(events, applied):
        for ev in events:
            await applied.admit(ev)
        raise asyncio.CancelledError  # e.g. the worker stops mid-send

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stages.run_batch(body, "clients", batch))
    assert all(e.message.acked for e in batch) and stages.running == 0


def test_identity_graph_rebuilt_from_links_equals_the_incremental_one():
    import random

    rnd = random.Random(5)
    links = [(f"c{rnd.randrange(300)}", f"p:{rnd.randrange(120)}") for _ in range(400)]
    live = IdentityGraph()
    for client, node in links:
        live.link(client, node)
    table = {APPLIED_KEY % 0: 7}  # markers share the table; other projects' links too
    table.update({link_key("p1", c, n): True for c, n in links})
    table.update({link_key("p2", c, "e:x"): True for c, _ in links[:50]})
    stages = object.__new__(Stages)
    stages.graphs = {}
    rebuilt = stages._graph("p1", table)
    assert rebuilt.unions == live.unions
    for client, _ in links:
        assert rebuilt.person_of(client) == live.person_of(client)
        assert sorted(rebuilt.clients_of(rebuilt.person_of(client))) == sorted(live.clients_of(live.person_of(client)))
    assert stages._graph("p1", {}) is rebuilt  # cached until a rebalance clears it


def test_person_orders_go_to_the_partition_kafka_would_pick_for_their_key():
    import pickle

    from aiokafka.partitioner import DefaultPartitioner

    from streams.faust_app import ITEMS_PER_MESSAGE
    from streams.routing import ToPerson

    stages = object.__new__(Stages)
    stages.partitions, stages.topics = 4, {"persons": "x.persons"}
    orders = [ToPerson("absorb", "p1", f"person{i}", into="person0") for i in range(1000)]
    records = stages._to_persons(orders)
    pick = DefaultPartitioner()
    got = []
    for topic, _, value, partition in records:
        chunk = pickle.loads(value)
        assert topic == "x.persons" and 0 < len(chunk) <= ITEMS_PER_MESSAGE
        assert {pick(m.key.encode(), [0, 1, 2, 3], [0, 1, 2, 3]) for m in chunk} == {partition}
        got.extend(chunk)
    assert sorted(got) == sorted(orders)  # every order once
    assert len({r[3] for r in records}) == 4
