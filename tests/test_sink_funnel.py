import fnmatch
import random
from datetime import date

import pytest

from sink.queries import ReportError, glob_to_like, may_overlap, parse_step
from streams.model import Output
from tests.plugins.clickhouse import event_row, identity_row, ms, visit_row

D = date(2024, 3, 10)
T0 = ms(2024, 3, 10, 10, 0)
MIN = 60_000
HOUR = 60 * MIN
STEPS = ["pageview:/pricing*", "form:*"]
AD = ("ad", "yandex", "cpc", "spring")
ORG = ("organic", "google", "organic", "")


def pv(client, ts, path):
    return event_row(None, client, ts, type="pageview", path=path)


def form(client, ts, name="lead"):
    return event_row(None, client, ts, type="form", name=name)


def dataset() -> Output:
    return Output(
        events=[
            # c1 completes: pricing, then a form a minute later
            pv("c1", T0, "/pricing"),
            form("c1", T0 + MIN),
            # c2: wrong order (form before pricing) -> reaches step 1 only
            form("c2", T0),
            pv("c2", T0 + MIN, "/pricing/plans"),
            # c3: form two hours after pricing -> depends on the window
            pv("c3", T0, "/pricing"),
            form("c3", T0 + 2 * HOUR),
            # c4 and c5 are one person (c4): pricing on one device, form on the other
            pv("c4", T0, "/pricing"),
            form("c5", T0 + 2 * MIN),
            # c6: a page that does not match, then a form -> not in the funnel
            pv("c6", T0, "/about"),
            form("c6", T0 + MIN),
            # c7: matches, but the day after the range
            pv("c7", T0 + 24 * HOUR, "/pricing"),
            form("c7", T0 + 24 * HOUR + MIN),
            # another project
            pv("c8", T0, "/pricing")._replace(project_id="q"),
        ],
        visits=[
            visit_row("v1", "c1", T0 - MIN, AD),
            visit_row("v2a", "c2", T0 - 2 * MIN, ORG),
            visit_row("v2b", "c2", T0 + HOUR, AD),  # later: c2's first visit is organic
            visit_row("v4", "c4", T0 - MIN, AD),
            visit_row("v5", "c5", T0 - 5 * MIN, ORG),  # the person's first visit: c5's, organic
            # c3 has no visit in the range
        ],
        identities=[
            identity_row("c5", "c5", 1),  # superseded by the merge below
            identity_row("c5", "c4", 2),
            identity_row("c4", "c4", 2),
        ],
    )


@pytest.fixture
def loaded(store):
    out = dataset()
    store.write(out)
    store.write(out)
    return store


def persons(report):
    return [s["persons"] for s in report["steps"]]


@pytest.mark.parametrize(
    "window,expected",
    [
        (1, [4, 0]),  # no form within a second of a pricing view
        (60, [4, 1]),  # c1 only
        (3600, [4, 2]),  # + person c4 (c4 and c5, two minutes apart)
        (3 * 3600, [4, 3]),  # + c3 (two hours)
    ],
)
def test_window(loaded, window, expected):
    report = loaded.funnel("p", "UTC", D, D, STEPS, window)
    assert persons(report) == expected
    assert [s["step"] for s in report["steps"]] == STEPS


def test_conversion_ratios(loaded):
    report = loaded.funnel("p", "UTC", D, D, STEPS, 3600)
    assert report["steps"] == [
        {"step": STEPS[0], "persons": 4, "conversion_from_previous": 1.0, "conversion_from_first": 1.0},
        {"step": STEPS[1], "persons": 2, "conversion_from_previous": 0.5, "conversion_from_first": 0.5},
    ]


def test_order_matters(loaded):
    # Reversed: c2 (form then pricing) completes; c1 and c3 have no pricing after their form.
    report = loaded.funnel("p", "UTC", D, D, ["form:*", "pageview:/pricing*"], 3600)
    assert persons(report) == [5, 1]  # forms: c1, c2, c3, person c4, c6 (c7 is out of range)


def test_cross_device_person(store):
    store.write(Output(events=[pv("c4", T0, "/pricing"), form("c5", T0 + 2 * MIN)]))
    assert persons(store.funnel("p", "UTC", D, D, STEPS, 3600)) == [1, 0]
    store.write(Output(identities=[identity_row("c5", "c4", 3), identity_row("c4", "c4", 3)]))
    assert persons(store.funnel("p", "UTC", D, D, STEPS, 3600)) == [1, 1]


def test_three_steps_with_globs(store):
    store.write(
        Output(
            events=[
                pv("a", T0, "/a_b/x"),
                event_row(None, "a", T0 + MIN, type="goal", name="cart-1"),
                event_row(None, "a", T0 + 2 * MIN, type="deal", name="paid"),
                # '_' in the pattern is literal, not LIKE's any-char
                pv("b", T0, "/axb/x"),
                event_row(None, "b", T0 + MIN, type="goal", name="cart-1"),
                pv("c", T0, "/a_b/"),
                event_row(None, "c", T0 + MIN, type="goal", name="cart-12"),  # '?' is exactly one char
            ]
        )
    )
    report = store.funnel("p", "UTC", D, D, ["pageview:/a_b/*", "goal:cart-?", "deal:*"], 3600)
    assert persons(report) == [2, 1, 1]
    assert report["steps"][2]["conversion_from_previous"] == 1.0
    assert report["steps"][2]["conversion_from_first"] == 0.5


def test_group_by_source(loaded):
    report = loaded.funnel("p", "UTC", D, D, STEPS, 3600, group_by="source")
    assert persons(report) == [4, 2]
    groups = {(g["source_type"], g["source"]): [s["persons"] for s in g["steps"]] for g in report["groups"]}
    assert groups == {
        ("ad", "yandex"): [1, 1],  # c1
        ("organic", "google"): [2, 1],  # c2 (first visit organic), person c4 (c5's visit is first)
        ("", ""): [1, 0],  # c3: no visit started in the range
    }
    assert [(g["source_type"], g["source"]) for g in report["groups"]] == [("organic", "google"), ("ad", "yandex"), ("", "")]


def test_timezone_range(store):
    # 20:30 UTC on the 1st is 23:30 in Moscow (the 1st); 21:30 UTC is 00:30 on the 2nd.
    store.write(
        Output(
            events=[
                pv("m", ms(2024, 3, 1, 20, 30), "/pricing"),
                form("m", ms(2024, 3, 1, 20, 40)),
                pv("n", ms(2024, 3, 1, 21, 30), "/pricing"),
                form("n", ms(2024, 3, 1, 21, 40)),
            ]
        )
    )
    run = lambda d0, d1: persons(store.funnel("p", "Europe/Moscow", d0, d1, STEPS, 3600))  # noqa: E731
    assert run(date(2024, 3, 1), date(2024, 3, 1)) == [1, 1]
    assert run(date(2024, 3, 2), date(2024, 3, 2)) == [1, 1]
    assert run(date(2024, 3, 1), date(2024, 3, 2)) == [2, 2]
    assert run(date(2024, 3, 3), date(2024, 3, 3)) == [0, 0]


def test_empty(store):
    report = store.funnel("p", "UTC", D, D, STEPS, 60, group_by="source")
    assert report == {
        "steps": [
            {"step": s, "persons": 0, "conversion_from_previous": 0.0, "conversion_from_first": 0.0} for s in STEPS
        ],
        "groups": [],
    }


@pytest.mark.parametrize(
    "glob,like",
    [
        ("/pricing", "/pricing"),
        ("/pricing*", "/pricing%"),
        ("/a?c", "/a_c"),
        ("100%_off", "100\\%\\_off"),
        ("a\\b*", "a\\\\b%"),
        ("*", "%"),
    ],
)
def test_glob_to_like(glob, like):
    assert glob_to_like(glob) == like


@pytest.mark.parametrize(
    "step,parsed",
    [
        ("pageview:/x", ("pageview", "/x")),
        ("goal:a:b", ("goal", "a:b")),  # only the first colon splits
        ("form:*", ("form", "*")),
        ("pageview:*pricing*", ("pageview", "*pricing*")),
    ],
)
def test_parse_step(step, parsed):
    assert parse_step(step, 0) == parsed


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"steps": ["pageview:*"]}, "2 to 10 steps"),
        ({"steps": ["pageview:*"] * 11}, "2 to 10 steps"),
        ({"steps": "pageview:*,form:*"}, "2 to 10 steps"),
        ({"steps": ["pageview:*", "click:*"]}, "step 2 'click:\\*': unknown event type 'click'"),
        ({"steps": ["pageview", "form:*"]}, "step 1 'pageview': expected TYPE:PATTERN"),
        ({"steps": ["pageview:", "form:*"]}, "empty pattern"),
        ({"steps": ["pageview:pricing", "form:*"]}, "starts with / or \\*"),
        ({"steps": ["pageview:*", None]}, "expected TYPE:PATTERN"),
        ({"steps": ["pageview:*", "form:a\nb"]}, "control characters"),
        ({"window_s": 0}, "from 1 to 7776000"),
        ({"window_s": 90 * 86400 + 1}, "from 1 to 7776000"),
        ({"window_s": 1.5}, "whole number"),
        ({"window_s": True}, "number of seconds"),
        ({"window_s": "60"}, "number of seconds"),
        ({"group_by": "medium"}, "unknown funnel group_by 'medium'"),
        ({"tz": "Nowhere/City"}, "unknown timezone"),
        ({"date_to": date(2024, 3, 9)}, "before date_from"),
        ({"project_id": ""}, "invalid project id"),
    ],
)
def test_bad_params(store, kw, message):
    args = {"project_id": "p", "tz": "UTC", "date_from": D, "date_to": D, "steps": STEPS, "window_s": 60}
    args.update(kw)
    with pytest.raises(ReportError, match=message):
        store.funnel(**args)


def test_max_window_and_steps_are_accepted(loaded):
    report = loaded.funnel("p", "UTC", D, D, ["pageview:*"] * 10, 90 * 86400)
    assert len(report["steps"]) == 10
    assert report["steps"][0]["persons"] == 5  # c1, c2, c3, person c4, c6


# -- steps that one event can match ------------------------------------------------------------


@pytest.mark.parametrize(
    "a,b,overlap",
    [
        (("pageview", "/*"), ("pageview", "/pricing"), True),
        (("pageview", "/pricing"), ("pageview", "/pricing"), True),
        (("pageview", "/pricing"), ("pageview", "/about"), False),
        (("pageview", "/pricing*"), ("pageview", "/about"), False),
        (("pageview", "/a?c"), ("pageview", "/abc"), True),
        (("pageview", "/a*"), ("pageview", "/b*"), True),  # conservative for two globs
        (("pageview", "*"), ("form", "*"), False),
        (("goal", "cart"), ("goal", "c*"), True),
    ],
)
def test_may_overlap(a, b, overlap):
    assert may_overlap(a, b) is overlap
    assert may_overlap(b, a) is overlap


@pytest.mark.parametrize(
    "steps,events,expected",
    [
        # one pricing view is a pageview and a pricing view, but only one step
        (["pageview:*", "pageview:/pricing"], [("/pricing", 0)], [1, 0]),
        (["pageview:*", "pageview:/pricing"], [("/", 0), ("/pricing", 1000)], [1, 1]),
        (["pageview:*", "pageview:/pricing"], [("/pricing", 0), ("/pricing", 1000)], [1, 1]),
        (["pageview:*"] * 4, [("/a", 0), ("/b", 400), ("/c", 800)], [1, 1, 1, 0]),
        (["pageview:*"] * 4, [("/a", 0), ("/b", 1000), ("/c", 2000)], [1, 1, 0, 0]),  # 2 s > window
        (["pageview:/pricing", "pageview:*", "pageview:/pricing"], [("/pricing", 0), ("/pricing", 1000)], [1, 1, 0]),
        # millisecond precision: the window is 1 s
        (["pageview:*", "pageview:*"], [("/a", 0), ("/b", 1000)], [1, 1]),
        (["pageview:*", "pageview:*"], [("/a", 0), ("/b", 1001)], [1, 0]),
        (["pageview:/a", "pageview:/b"], [("/a", 0), ("/b", 1000)], [1, 1]),
        (["pageview:/a", "pageview:/b"], [("/a", 0), ("/b", 1001)], [1, 0]),
        (["pageview:/a", "pageview:/b"], [("/b", 0), ("/a", 1)], [1, 0]),
    ],
)
def test_one_event_is_one_step(store, steps, events, expected):
    store.write(Output(events=[pv("c", T0 + dt, path) for path, dt in events]))
    assert persons(store.funnel("p", "UTC", D, D, steps, 1)) == expected


def test_selective_first_step_on_another_device(store):
    # "/a" then any page: a later step broader than the first, so rows of clients that never
    # did "/a" are dropped early; the person's root client (c0, which has no identity row of
    # its own) must survive that because its other device (c1) did "/a".
    store.write(
        Output(
            events=[pv("c1", T0, "/a"), pv("c0", T0 + 1000, "/b"), pv("c9", T0, "/b"), pv("c9", T0 + 1000, "/c")],
            identities=[identity_row("c1", "c0", 2)],
        )
    )
    assert persons(store.funnel("p", "UTC", D, D, ["pageview:/a", "pageview:*"], 60)) == [1, 1]
    assert persons(store.funnel("p", "UTC", D, D, ["pageview:/b", "pageview:*"], 60)) == [2, 1]


# -- against a reference implementation ---------------------------------------------------------


def reference_levels(events, identities, steps, window_ms):
    """Persons' funnel levels by the documented rules, in plain Python."""
    person_of = dict(identities)
    parsed = [s.split(":", 1) for s in steps]
    by_person: dict[str, list] = {}
    for e in events:
        by_person.setdefault(person_of.get(e.client_id, e.client_id), []).append(e)
    levels = {}
    for person, evs in by_person.items():
        start = [None] * len(steps)
        for e in sorted(evs, key=lambda e: e.ts):
            value = e.path if e.type == "pageview" else e.name
            matched = [e.type == t and fnmatch.fnmatchcase(value, p) for t, p in parsed]
            for k in reversed(range(len(steps))):  # later steps first: one event, one step
                if not matched[k]:
                    continue
                if k == 0:
                    start[0] = e.ts
                elif start[k - 1] is not None and e.ts - start[k - 1] <= window_ms:
                    start[k] = start[k - 1]
        level = max((k + 1 for k in range(len(steps)) if start[k] is not None), default=0)
        if level:
            levels[person] = level
    return [sum(1 for lv in levels.values() if lv >= i) for i in range(1, len(steps) + 1)]


STEP_POOL = ["pageview:*", "pageview:/pricing*", "pageview:/a", "pageview:/?", "goal:cart", "goal:*", "form:*"]


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference(store, seed):
    rng = random.Random(seed)
    paths = ["/", "/a", "/b", "/pricing", "/pricing/x"]
    used_ts: set[int] = set()
    events = []
    for _ in range(400):
        ts = T0 + rng.randrange(0, 6 * HOUR)
        while ts in used_ts:  # events of one instant have no defined order
            ts += 1
        used_ts.add(ts)
        client = f"c{rng.randrange(30)}"
        kind = rng.choice(["pageview", "pageview", "pageview", "goal", "form"])
        if kind == "pageview":
            events.append(pv(client, ts, rng.choice(paths)))
        else:
            events.append(event_row(None, client, ts, type=kind, name=rng.choice(["cart", "other"])))
    identities = [(f"c{i}", f"c{i - 1}") for i in range(1, 30, 3)]
    store.write(Output(events=events, identities=[identity_row(c, p) for c, p in identities]))
    for _ in range(5):
        steps = [rng.choice(STEP_POOL) for _ in range(rng.randint(2, 5))]
        window = rng.choice([60, 600, 3600, 6 * 3600])
        got = persons(store.funnel("p", "UTC", D, D, steps, window))
        assert got == reference_levels(events, identities, steps, window * 1000), (steps, window)
