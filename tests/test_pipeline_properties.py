"""The pipeline's result depends only on the set of events, never on order, batching or replays."""

import pickle

import pytest

from streams.pipeline import Pipeline, State
from streams.rules import ProjectRules
from tests.datagen import DOMAINS, deliveries, generate
from tests.materialize import materialize

RULES = {"p1": ProjectRules("p1", DOMAINS, conversion_goals=frozenset({"signup"}))}


def in_order(events):
    p = Pipeline(RULES)
    return materialize([p.process(sorted(events, key=lambda e: (e.ts, e.event_id)))])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_delivery_order_gives_the_same_tables(seed):
    events = generate(persons=150, seed=seed)
    expected = in_order(events)
    assert expected["attributions"] and expected["identities"] and expected["visits"]
    p = Pipeline(RULES)
    got = materialize([p.process(b) for b in deliveries(events, seed=seed)])
    for table in expected:
        assert got[table] == expected[table], table


def test_state_survives_pickling_mid_stream():
    events = generate(persons=80, seed=7)
    batches = deliveries(events, seed=7)
    half = len(batches) // 2
    p = Pipeline(RULES)
    outs = [p.process(b) for b in batches[:half]]
    restored = Pipeline(RULES, pickle.loads(pickle.dumps(p.state)))
    outs += [restored.process(b) for b in batches[half:]]
    assert materialize(outs) == in_order(events)


def test_every_conversion_has_exactly_one_credit_per_single_touch_model():
    live = in_order(generate(persons=200, seed=4))
    conversions = {k[1] for k in live["conversions"]}
    for model in ("first_click", "last_click", "last_significant_click"):
        credited = [k[2] for k in live["attributions"] if k[1] == model]
        assert sorted(credited) == sorted(conversions)
    linear = {}
    for k, row in live["attributions"].items():
        if k[1] == "linear":
            linear[k[2]] = linear.get(k[2], 0) + row[15]
    assert all(abs(w - 1) < 1e-9 for w in linear.values()) and set(linear) == conversions


def test_unknown_project_is_rejected_with_a_reason():
    p = Pipeline(RULES)
    ev = generate(persons=1, seed=9, project_id="nope")[0]
    out = p.process([ev])
    assert out.rejected == [(ev, "unknown_project")] and not out.events


@pytest.mark.parametrize("seed", [5, 6])
def test_replay_after_a_crash_with_other_batch_boundaries_never_writes_older_versions(seed):
    """Rows written before a crash stay in ClickHouse; the restart replays the log from an older
    snapshot, batched differently. The newest version of every key must still be the truth."""
    events = generate(persons=120, seed=seed)
    batches = deliveries(events, seed=seed)
    snap_at, crash_at = len(batches) // 3, 2 * len(batches) // 3
    p = Pipeline(RULES)
    written = [p.process(b) for b in batches[:snap_at]]
    snapshot = pickle.dumps(p.state)
    written += [p.process(b) for b in batches[snap_at:crash_at]]
    # restart: the replayed part comes as one big batch, then the rest one event at a time
    restarted = Pipeline(RULES, pickle.loads(snapshot))
    replayed = [e for b in batches[snap_at:crash_at] for e in b]
    written.append(restarted.process(replayed))
    written += [restarted.process([e]) for b in batches[crash_at:] for e in b]
    assert materialize(written) == in_order(events)
