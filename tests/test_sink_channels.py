from datetime import date

import pytest

from sink.queries import MODELS, ReportError, _num, utc_range
from streams.model import Output
from tests.plugins.clickhouse import attribution_row, ms, visit_row

D = date(2024, 3, 10)
Y_SPRING = ("ad", "yandex", "cpc", "spring")
Y_AUTUMN = ("ad", "yandex", "cpc", "autumn")
DIRECT = ("direct", "", "", "")
G_ORG = ("organic", "google", "organic", "")
BLOG = ("referral", "blog.example", "referral", "")
G_BRAND = ("ad", "google", "cpc", "brand")


def h(hour: int, minute: int = 0, day: int = 10) -> int:
    return ms(2024, 3, day, hour, minute)


# Credited visit per conversion and model: (conversion, kind, ts, {model: (visit, source)}).
CONVERSIONS = [
    ("X1", "form", h(12, 30), {"first_click": ("v1", Y_SPRING), "last_click": ("v2", DIRECT), "last_significant_click": ("v1", Y_SPRING)}),
    ("X2", "deal", h(13, 30), {"first_click": ("v4", Y_SPRING), "last_click": ("v5", Y_AUTUMN), "last_significant_click": ("v5", Y_AUTUMN)}),
    ("X3", "call", h(9, 30), {m: ("v3", G_ORG) for m in MODELS}),
    # credited to a visit before the range: a group with conversions and no visits
    ("X4", "goal", h(0, 30), {m: ("v6", BLOG) for m in MODELS}),
    # the next day: outside the range
    ("X5", "form", h(0, 10, day=11), {m: ("v3", G_ORG) for m in MODELS}),
]


def dataset() -> Output:
    visits = [
        visit_row("v1", "c1", h(10), Y_SPRING),
        # re-emitted with a higher version: the source changed, only the new one counts
        visit_row("v2", "c1", h(12), ("ad", "vk", "cpc", "x"), version=1),
        visit_row("v2", "c1", h(12), DIRECT, version=2),
        visit_row("v3", "c2", h(9), G_ORG),
        visit_row("v4", "c3", h(11), Y_SPRING),
        visit_row("v5", "c3", h(13), Y_AUTUMN),
        visit_row("v6", "c4", h(23, day=9), BLOG),  # the day before
        # tombstoned (a late event moved this visit's start)
        visit_row("v7", "c5", h(14), G_BRAND, version=1),
        visit_row("v7", "c5", h(14), G_BRAND, version=2, is_deleted=1),
        # another project
        visit_row("v8", "c9", h(10), Y_SPRING, project_id="q"),
    ]
    attributions = []
    for cid, kind, ts, credit in CONVERSIONS:
        for model, (visit, source) in credit.items():
            attributions.append(attribution_row(cid, model, ts, visit, source, kind, version=2))
    attributions += [
        # credit that moved: X1 last_click used to go to v1, now a tombstone
        attribution_row("X1", "last_click", h(12, 30), "v1", Y_SPRING, "form", version=1),
        attribution_row("X1", "last_click", h(12, 30), "v1", Y_SPRING, "form", version=2, is_deleted=1),
        attribution_row("X9", "last_click", h(12), "v8", Y_SPRING, "form", project_id="q"),
    ]
    return Output(visits=visits, attributions=attributions)


@pytest.fixture
def loaded(store):
    out = dataset()
    store.write(out)
    store.write(out)  # a replay must not double anything
    return store


# (model, group_by) -> rows as (*keys, visits, visitors, conversions, leads), in report order.
EXPECTED = {
    ("first_click", ("type",)): [("ad", 3, 2, 2, 1), ("organic", 1, 1, 1, 1), ("direct", 1, 1, 0, 0), ("referral", 0, 0, 1, 0)],
    ("last_click", ("type",)): [("ad", 3, 2, 1, 0), ("direct", 1, 1, 1, 1), ("organic", 1, 1, 1, 1), ("referral", 0, 0, 1, 0)],
    ("last_significant_click", ("type",)): [("ad", 3, 2, 2, 1), ("organic", 1, 1, 1, 1), ("direct", 1, 1, 0, 0), ("referral", 0, 0, 1, 0)],
    ("first_click", ("source",)): [("yandex", 3, 2, 2, 1), ("google", 1, 1, 1, 1), ("", 1, 1, 0, 0), ("blog.example", 0, 0, 1, 0)],
    ("last_click", ("source",)): [("yandex", 3, 2, 1, 0), ("", 1, 1, 1, 1), ("google", 1, 1, 1, 1), ("blog.example", 0, 0, 1, 0)],
    ("last_significant_click", ("source",)): [("yandex", 3, 2, 2, 1), ("google", 1, 1, 1, 1), ("", 1, 1, 0, 0), ("blog.example", 0, 0, 1, 0)],
    ("first_click", ("source", "medium")): [
        ("yandex", "cpc", 3, 2, 2, 1),
        ("google", "organic", 1, 1, 1, 1),
        ("", "", 1, 1, 0, 0),
        ("blog.example", "referral", 0, 0, 1, 0),
    ],
    ("last_click", ("source", "medium")): [
        ("yandex", "cpc", 3, 2, 1, 0),
        ("", "", 1, 1, 1, 1),
        ("google", "organic", 1, 1, 1, 1),
        ("blog.example", "referral", 0, 0, 1, 0),
    ],
    ("last_significant_click", ("source", "medium")): [
        ("yandex", "cpc", 3, 2, 2, 1),
        ("google", "organic", 1, 1, 1, 1),
        ("", "", 1, 1, 0, 0),
        ("blog.example", "referral", 0, 0, 1, 0),
    ],
    ("first_click", ("source", "medium", "campaign")): [
        ("yandex", "cpc", "spring", 2, 2, 2, 1),
        ("google", "organic", "", 1, 1, 1, 1),
        ("", "", "", 1, 1, 0, 0),
        ("yandex", "cpc", "autumn", 1, 1, 0, 0),
        ("blog.example", "referral", "", 0, 0, 1, 0),
    ],
    ("last_click", ("source", "medium", "campaign")): [
        ("yandex", "cpc", "spring", 2, 2, 0, 0),
        ("", "", "", 1, 1, 1, 1),
        ("google", "organic", "", 1, 1, 1, 1),
        ("yandex", "cpc", "autumn", 1, 1, 1, 0),
        ("blog.example", "referral", "", 0, 0, 1, 0),
    ],
    ("last_significant_click", ("source", "medium", "campaign")): [
        ("yandex", "cpc", "spring", 2, 2, 1, 1),
        ("google", "organic", "", 1, 1, 1, 1),
        ("yandex", "cpc", "autumn", 1, 1, 1, 0),
        ("", "", "", 1, 1, 0, 0),
        ("blog.example", "referral", "", 0, 0, 1, 0),
    ],
}
TOTALS = {"visits": 5, "visitors": 3, "conversions": 4, "leads": 2}


@pytest.mark.parametrize("model,group_by", list(EXPECTED), ids=lambda x: x if isinstance(x, str) else ",".join(x))
def test_channels(loaded, model, group_by):
    report = loaded.channels("p", "UTC", D, D, model, list(group_by))
    n = len(group_by)
    want = [
        {**dict(zip(group_by, r[:n])), "visits": r[n], "visitors": r[n + 1], "conversions": r[n + 2], "leads": r[n + 3]}
        for r in EXPECTED[(model, group_by)]
    ]
    assert report["rows"] == want
    assert report["totals"] == TOTALS
    for row in report["rows"]:
        assert all(type(row[m]) is int for m in TOTALS)


def test_totals_count_visitors_once_across_groups(loaded):
    # c1 and c3 each appear in two [source, medium, campaign] groups; totals are not the sum of rows.
    report = loaded.channels("p", "UTC", D, D, "last_click", ["source", "medium", "campaign"])
    assert sum(r["visitors"] for r in report["rows"]) == 5
    assert report["totals"]["visitors"] == 3


def test_group_by_order_does_not_matter(loaded):
    a = loaded.channels("p", "UTC", D, D, "last_click", ["medium", "source"])
    b = loaded.channels("p", "UTC", D, D, "last_click", ["source", "medium"])
    assert a == b


def test_other_project_and_empty_range(loaded):
    q = loaded.channels("q", "UTC", D, D, "last_click", ["source"])
    assert q == {"rows": [{"source": "yandex", "visits": 1, "visitors": 1, "conversions": 1, "leads": 1}],
                 "totals": {"visits": 1, "visitors": 1, "conversions": 1, "leads": 1}}
    empty = loaded.channels("p", "UTC", date(2023, 1, 1), date(2023, 1, 31), "last_click", ["type"])
    assert empty == {"rows": [], "totals": {"visits": 0, "visitors": 0, "conversions": 0, "leads": 0}}


def test_range_spanning_days_and_months(loaded):
    report = loaded.channels("p", "UTC", date(2024, 2, 28), date(2024, 3, 11), "first_click", ["type"])
    # adds v6 (the 9th) and X5 (the 11th)
    assert report["totals"] == {"visits": 6, "visitors": 4, "conversions": 5, "leads": 3}


def test_fractional_weights(store):
    store.write(
        Output(
            attributions=[
                attribution_row("X", "first_click", h(10), "a", Y_SPRING, "form", weight=0.1),
                attribution_row("X", "first_click", h(10), "b", Y_SPRING, "form", weight=0.2),
                attribution_row("Y", "first_click", h(11), "c", Y_SPRING, "goal", weight=0.7),
            ]
        )
    )
    report = store.channels("p", "UTC", D, D, "first_click", ["source"])
    assert report["rows"] == [{"source": "yandex", "visits": 0, "visitors": 0, "conversions": 1, "leads": 0.3}]


# -- timezone edges ---------------------------------------------------------------------------

# 2024-03-01 20:30 UTC is 23:30 in Moscow on the 1st; 21:30 UTC is 00:30 on the 2nd.
EDGE_1ST = ms(2024, 3, 1, 20, 30)
EDGE_2ND = ms(2024, 3, 1, 21, 30)


@pytest.mark.parametrize(
    "tz,date_from,date_to,visits",
    [
        ("Europe/Moscow", date(2024, 3, 1), date(2024, 3, 1), ["a"]),
        ("Europe/Moscow", date(2024, 3, 2), date(2024, 3, 2), ["b"]),
        ("Europe/Moscow", date(2024, 3, 1), date(2024, 3, 2), ["a", "b"]),
        ("UTC", date(2024, 3, 1), date(2024, 3, 1), ["a", "b"]),
        ("UTC", date(2024, 3, 2), date(2024, 3, 2), []),
        # UTC-5: both are still the 1st in New York
        ("America/New_York", date(2024, 3, 1), date(2024, 3, 1), ["a", "b"]),
    ],
)
def test_timezone_edges(store, tz, date_from, date_to, visits):
    store.write(
        Output(
            visits=[visit_row("a", "ca", EDGE_1ST, Y_SPRING), visit_row("b", "cb", EDGE_2ND, G_ORG)],
            attributions=[
                attribution_row("xa", "last_click", EDGE_1ST, "a", Y_SPRING, "form"),
                attribution_row("xb", "last_click", EDGE_2ND, "b", G_ORG, "goal"),
            ],
        )
    )
    report = store.channels("p", tz, date_from, date_to, "last_click", ["source"])
    names = {"a": "yandex", "b": "google"}
    assert sorted(r["source"] for r in report["rows"]) == sorted(names[v] for v in visits)
    assert report["totals"]["visits"] == len(visits)
    assert report["totals"]["conversions"] == len(visits)
    assert report["totals"]["leads"] == ("a" in visits)


@pytest.mark.parametrize(
    "tz,d0,d1,lo,hi",
    [
        ("Europe/Moscow", date(2024, 3, 1), date(2024, 3, 1), ms(2024, 2, 29, 21), ms(2024, 3, 1, 21)),
        ("UTC", date(2024, 1, 1), date(2024, 1, 31), ms(2024, 1, 1), ms(2024, 2, 1)),
        # DST: Berlin's 31 March 2024 lasts 23 hours
        ("Europe/Berlin", date(2024, 3, 31), date(2024, 3, 31), ms(2024, 3, 30, 23), ms(2024, 3, 31, 22)),
        ("Asia/Kolkata", date(2024, 3, 1), date(2024, 3, 1), ms(2024, 2, 29, 18, 30), ms(2024, 3, 1, 18, 30)),
    ],
)
def test_utc_range(tz, d0, d1, lo, hi):
    assert utc_range(tz, d0, d1) == (lo, hi)


@pytest.mark.parametrize("x,want", [(3, 3), (3.0, 3), (0.1 + 0.2, 0.3), (2.5, 2.5), (1e-9, 0)])
def test_num(x, want):
    assert _num(x) == want and type(_num(x)) is type(want)


# -- bad parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"model": "u_shaped"}, "unknown attribution model 'u_shaped'"),
        ({"group_by": ["medium"]}, "group_by medium is not supported"),
        ({"group_by": ["source", "campaign"]}, "is not supported"),
        ({"group_by": ["type", "source"]}, "is not supported"),
        ({"group_by": []}, "is not supported"),
        ({"group_by": ["source", "source"]}, "is not supported"),
        ({"group_by": ["country"]}, "unknown group_by 'country'"),
        ({"group_by": [1]}, "group_by must be a list"),
        ({"tz": "Mars/Olympus"}, "unknown timezone"),
        ({"tz": ""}, "invalid timezone"),
        ({"date_from": date(2024, 3, 11)}, "before date_from"),
        ({"date_from": "2024-13-01"}, "must be a date"),
        ({"date_to": None}, "must be a date"),
        ({"date_from": __import__("datetime").datetime(2024, 3, 1)}, "not a datetime"),
        ({"date_from": date(2000, 1, 1)}, "longer than"),
        ({"project_id": ""}, "invalid project id"),
        ({"project_id": None}, "invalid project id"),
    ],
)
def test_bad_params(store, kw, message):
    args = {"project_id": "p", "tz": "UTC", "date_from": D, "date_to": D, "model": "last_click", "group_by": ["type"]}
    args.update(kw)
    with pytest.raises(ReportError, match=message):
        store.channels(**args)
    assert issubclass(ReportError, ValueError)


def test_string_dates_and_comma_group_by(loaded):
    a = loaded.channels("p", "UTC", "2024-03-10", "2024-03-10", "first_click", "source,medium")
    b = loaded.channels("p", "UTC", D, D, "first_click", ["source", "medium"])
    assert a == b


def test_injection_is_inert(loaded):
    report = loaded.channels("p' OR 1=1 --", "UTC", D, D, "first_click", ["type"])
    assert report["rows"] == []


def test_linear_model_reports_fractional_credit(store):
    """Linear credit splits a conversion across the visits of its path; the report sums weights."""
    from dataclasses import replace
    from datetime import date

    from streams.pipeline import Pipeline
    from tests.factory import DAY, RULES, T0, ev

    pipeline = Pipeline({"p": replace(RULES, project_id="p")})
    out = pipeline.process([
        ev("c", T0, referrer="https://yandex.ru/", project_id="p"),
        ev("c", T0 + DAY, referrer="https://vk.com/", project_id="p"),
        ev("c", T0 + DAY + 60_000, type="form", name="lead", referrer="https://kursy.ru/", project_id="p"),
    ])
    store.write(out)
    report = store.channels("p", "UTC", date(2025, 12, 1), date(2026, 2, 1), "linear", ["source"])
    by_source = {r["source"]: r["conversions"] for r in report["rows"]}
    assert by_source == {"yandex": 0.5, "vk": 0.5}
    assert report["totals"]["conversions"] == 1
