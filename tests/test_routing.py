"""The staged pipeline on simulated partitions: any interleaving of partitions, and messages
delivered twice (at-least-once), give the same tables as the inline pipeline."""

import random
import zlib
from collections import deque

import pytest

from streams.routing import client_handle, identity_handle, person_handle
from tests.datagen import deliveries, generate
from tests.materialize import materialize
from tests.test_pipeline_properties import RULES, in_order


def part(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) % n


def simulate(events, seed, client_parts=4, person_parts=3, redeliver=0.1):
    rnd = random.Random(seed)
    clients_q = [deque() for _ in range(client_parts)]
    identity_q = deque()
    persons_q = [deque() for _ in range(person_parts)]
    client_state, graphs, person_state = {}, {}, {}
    outs = []
    for batch in deliveries(events, seed=seed):
        groups = {}
        for e in batch:
            groups.setdefault(f"{e.project_id}:{e.client_id}", []).append(e)
        for key, group in groups.items():
            clients_q[part(key, client_parts)].append((key, group))

    def send_person(msg):
        persons_q[part(msg.key, person_parts)].append(msg)

    while True:
        queues = [q for q in clients_q + [identity_q] + persons_q if q]
        if not queues:
            break
        q = rnd.choice(queues)
        msg = q[0] if rnd.random() < redeliver else q.popleft()  # at-least-once: a repeat
        if any(q is c for c in clients_q):
            key, group = msg
            slot, out, view = client_handle(client_state.get(key), group, RULES["p1"])
            client_state[key] = slot
            outs.append(out)
            if view is not None:
                identity_q.append(view)
        elif q is identity_q:
            graph, out, messages = identity_handle(graphs.get(msg.project_id), msg)
            graphs[msg.project_id] = graph
            outs.append(out)
            for m in messages:
                send_person(m)
        else:
            slot, out, messages = person_handle(person_state.get(msg.key), msg)
            person_state[msg.key] = slot
            outs.append(out)
            for m in messages:
                send_person(m)
    return materialize(outs)


@pytest.mark.parametrize("seed", [21, 22, 23, 24])
def test_partitioned_stages_match_the_inline_pipeline(seed):
    events = generate(persons=150, seed=seed)
    expected = in_order(events)
    got = simulate(events, seed)
    for table in expected:
        assert got[table] == expected[table], table


def test_without_redelivery_and_with_one_partition_each():
    events = generate(persons=60, seed=25)
    assert simulate(events, 25, client_parts=1, person_parts=1, redeliver=0) == in_order(events)
