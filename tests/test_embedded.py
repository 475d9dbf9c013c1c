"""The embedded runtime on real chdb: the log, the processor, checkpoints and snapshots."""

from datetime import date

import pytest

from sink.store import Store
from streams.embedded import LocalLog, Runtime
from streams.model import Event
from streams.pipeline import Pipeline
from streams.rules import ProjectRules
from tests.datagen import DOMAINS, deliveries, generate
from tests.materialize import materialize

RULES = {"p1": ProjectRules("p1", DOMAINS, conversion_goals=frozenset({"signup"}))}
RANGE = (date(2025, 12, 1), date(2028, 12, 31))


def expected_totals(events, model="last_significant_click"):
    live = materialize([Pipeline(RULES).process(events)])
    conv = {k[2] for k in live["attributions"] if k[1] == model}
    leads = {k[2] for k, row in live["attributions"].items() if k[1] == model and row[4] == "form"}
    return {"visits": len(live["visits"]), "conversions": len(conv), "leads": len(leads)}


def totals(store, model="last_significant_click"):
    t = store.channels("p1", "UTC", *RANGE, model, ["type"])["totals"]
    return {k: t[k] for k in ("visits", "conversions", "leads")}


def run(tmp_path, store, batches, stop=True):
    rt = Runtime(RULES, tmp_path, store.write, batch_max_ms=20)
    rt.start()
    for b in batches:
        rt.submit(b)
    assert rt.wait_idle(60), rt.stats()
    if stop:
        rt.stop()
    return rt


def test_reports_match_the_pure_pipeline(tmp_path, store):
    events = generate(persons=300, seed=11)
    run(tmp_path, store, deliveries(events, seed=11))
    assert totals(store) == expected_totals(events)
    assert totals(store, "first_click") == expected_totals(events, "first_click")


def test_restart_with_snapshot_resumes_without_double_counting(tmp_path, store):
    events = generate(persons=200, seed=12)
    batches = deliveries(events, seed=12)
    half = len(batches) // 2
    run(tmp_path, store, batches[:half])  # clean stop writes a snapshot
    assert (tmp_path / "pipeline" / "state.pickle").exists()
    run(tmp_path, store, batches[half:] + batches[:5])  # with some replays
    assert totals(store) == expected_totals(events)


def test_lost_snapshot_rebuilds_state_from_the_log(tmp_path, store):
    events = generate(persons=200, seed=13)
    batches = deliveries(events, seed=13)
    half = len(batches) // 2
    run(tmp_path, store, batches[:half])
    (tmp_path / "pipeline" / "state.pickle").unlink()
    run(tmp_path, store, batches[half:])
    assert totals(store) == expected_totals(events)


def test_sink_outage_is_retried_and_nothing_is_lost(tmp_path, store):
    failures = {"left": 3}

    def flaky(out):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("clickhouse down")
        store.write(out)

    events = generate(persons=50, seed=14)
    rt = Runtime(RULES, tmp_path, flaky, batch_max_ms=20)
    rt.start()
    rt.submit(events)
    assert rt.wait_idle(30)
    assert rt.stats()["write_errors"] == 3
    rt.stop()
    assert totals(store) == expected_totals(events)


def test_bad_log_lines_go_to_dead_letters_and_the_stream_goes_on(tmp_path, store):
    rt = Runtime(RULES, tmp_path, store.write, batch_max_ms=20)
    rt.start()
    good = generate(persons=5, seed=15)
    rt.log.append([Event("p1", "kursy.ru", "x1", "c", "teleport", 1, 1)])  # not a known type
    rt.submit([Event("nope", "kursy.ru", "x2", "c", "pageview", 1, 1)])  # unknown project
    rt.submit(good)
    assert rt.wait_idle(30)
    rt.stop()
    letters = (tmp_path / "pipeline" / "dead-letters.jsonl").read_text().splitlines()
    assert len(letters) == 2 and "unknown_type" in letters[0] and "unknown_project" in letters[1]
    assert totals(store) == expected_totals(good)


def test_log_drops_a_torn_unacknowledged_tail(tmp_path):
    path = tmp_path / "events.log"
    log = LocalLog(path)
    log.append(generate(persons=1, seed=16)[:3])
    size = log.end
    log.close()
    with open(path, "ab") as f:
        f.write(b'[["p1","kursy.ru","torn')  # the process died inside write()
    log = LocalLog(path)
    assert log.end == size
    lines, end = log.read(0)
    assert len(lines) == 1 and end == size


def test_submit_after_stop_is_refused(tmp_path, store):
    rt = run(tmp_path, store, [])
    with pytest.raises(RuntimeError):
        rt.submit(generate(persons=1, seed=17))
