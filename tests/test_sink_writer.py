import pytest

from sink.writer import TABLES, Writer
from streams.model import Output
from tests.plugins.clickhouse import (
    attribution_row,
    conversion_row,
    event_row,
    identity_row,
    ms,
    visit_row,
)

TS_COLUMNS = {"ts", "received_at", "start_ts", "end_ts", "conversion_ts", "visit_start"}
T = ms(2024, 3, 10, 12, 0)
AD = ("ad", "yandex", "cpc", "spring")


def read_back(client, db, attr, final=False):
    """All rows of a table as tuples in _fields order, timestamps as epoch ms."""
    table, row_type = TABLES[attr]
    cols = ", ".join(f"toUnixTimestamp64Milli({f})" if f in TS_COLUMNS else f for f in row_type._fields)
    sql = f"SELECT {cols} FROM {{db:Identifier}}.{{t:Identifier}} {'FINAL' if final else ''} ORDER BY tuple(*)"
    rows = client.query(sql, parameters={"db": db, "t": table}).result_rows
    return [row_type(*r) for r in rows]


def sample_output() -> Output:
    # Awkward values on purpose: quotes, unicode, JSON, fractional money, ms precision.
    return Output(
        events=[
            event_row(
                "0b7e8c0e-1f0a-4b8e-9a51-3c1f6a2d9e01",
                "cid-1",
                T + 123,
                type="form",
                name="заявка 'callback'",
                path="/price?x=1",
                title='Цены "2024"',
                props='{"a": [1, 2], "b": "ü"}',
                source_type="ad",
                utm_source="yandex",
                utm_medium="cpc",
                utm_campaign="spring",
                utm_term="купить окна",
                click_id="yclid:42",
                phone_hash="ph",
                email_hash="eh",
                value=1234.56,
                currency="RUB",
            )
        ],
        visits=[visit_row("v-1", "cid-1", T, AD, end_ts=T + 999_999, pageviews=7, events=9, version=3, term="окна")],
        conversions=[conversion_row("0b7e8c0e-1f0a-4b8e-9a51-3c1f6a2d9e01", "cid-1", T + 123, "form", value=1234.56)],
        attributions=[
            attribution_row("0b7e8c0e-1f0a-4b8e-9a51-3c1f6a2d9e01", "last_click", T + 123, "v-1", AD, weight=0.25, value=308.64)
        ],
        identities=[identity_row("cid-1", "cid-0", version=5)],
    )


@pytest.mark.parametrize("attr", list(TABLES))
def test_round_trip_every_table(store, ch_client, attr):
    out = sample_output()
    store.write(out)
    assert read_back(ch_client, store.database, attr) == getattr(out, attr)


def test_replay_is_harmless(store, ch_client):
    out = sample_output()
    store.write(out)
    store.write(out)  # the caller retries after a failure: same Output again
    for attr in TABLES:
        assert read_back(ch_client, store.database, attr, final=True) == getattr(out, attr), attr
    n = ch_client.query(
        "SELECT uniqExact(event_id), count() FROM {db:Identifier}.events", parameters={"db": store.database}
    ).result_rows[0]
    assert n[0] == 1  # uniqExact is exact even before a merge collapses the copies


def test_empty_output_writes_nothing(store, ch_client):
    store.write(Output())
    for attr in TABLES:
        assert read_back(ch_client, store.database, attr) == []


def test_wrong_row_type_is_refused(store):
    out = Output(visits=[event_row("e", "c", T)])
    with pytest.raises(TypeError, match=r"Output.visits\[0\] is a EventRow, expected VisitRow"):
        store.write(out)


def test_writer_rejects_bad_database(ch_client):
    with pytest.raises(ValueError, match="invalid database name"):
        Writer(ch_client, "x; DROP TABLE y")


def test_insert_failure_raises(ch_client, ch_database):
    # Database never migrated: the insert must fail loudly so the caller retries.
    with pytest.raises(Exception):
        Writer(ch_client, ch_database).write(Output(identities=[identity_row("c", "c")]))


# -- FINAL semantics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attr,first,second,expected",
    [
        # a re-emitted row with a higher version replaces the old one
        ("visits", visit_row("v", start_ts=T, version=1), visit_row("v", start_ts=T, source=AD, version=2), "second"),
        # a lower version arriving later does not win
        ("visits", visit_row("v", start_ts=T, source=AD, version=2), visit_row("v", start_ts=T, version=1), "first"),
        # a tombstone hides the row
        ("visits", visit_row("v", start_ts=T, version=1), visit_row("v", start_ts=T, version=2, is_deleted=1), None),
        ("conversions", conversion_row("x", ts=T, version=1), conversion_row("x", ts=T, version=2, is_deleted=1), None),
        (
            "conversions",
            conversion_row("x", ts=T, kind="goal", version=1),
            conversion_row("x", ts=T, kind="deal", version=2),
            "second",
        ),
        (
            "attributions",
            attribution_row("x", "last_click", T, "v", version=1),
            attribution_row("x", "last_click", T, "v", version=2, is_deleted=1),
            None,
        ),
        (
            "attributions",
            attribution_row("x", "first_click", T, "v", weight=1.0, version=1),
            attribution_row("x", "first_click", T, "v", weight=0.5, version=2),
            "second",
        ),
        ("identities", identity_row("c2", "c2", 1), identity_row("c2", "c1", 2), "second"),
        ("identities", identity_row("c2", "c1", 2), identity_row("c2", "c2", 1), "first"),
    ],
)
def test_final_resolves_to_latest_truth(store, ch_client, attr, first, second, expected):
    store.write(Output(**{attr: [first]}))
    store.write(Output(**{attr: [second]}))
    want = {"first": [first], "second": [second], None: []}[expected]
    assert read_back(ch_client, store.database, attr, final=True) == want
