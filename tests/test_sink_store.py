import threading
import time
from datetime import date

import pytest

from sink.client import SinkConnectionError, connect, redact
from sink.store import Store
from streams.model import Output
from tests.plugins.clickhouse import event_row, ms, visit_row

D = date(2024, 3, 10)
T = ms(2024, 3, 10, 12)


@pytest.mark.parametrize(
    "url,message",
    [
        ("ftp://host:21", "scheme must be http or https"),
        ("clickhouse://host", "scheme must be http or https"),
        ("http://", "no host"),
        ("http://host:notaport", "invalid ClickHouse URL"),
    ],
)
def test_bad_url(tmp_path, url, message):
    with pytest.raises(SinkConnectionError, match=message):
        connect(url, tmp_path)


def test_unreachable_server_names_it_without_the_password(tmp_path):
    started = time.monotonic()
    with pytest.raises(SinkConnectionError) as err:
        connect("http://admin:s3cret@127.0.0.1:9/", tmp_path, connect_timeout=2, query_retries=0)
    assert "cannot reach ClickHouse at http://admin:***@127.0.0.1:9/" in str(err.value)
    assert "s3cret" not in str(err.value)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "url,shown",
    [
        ("http://u:p@h:8123/db", "http://u:***@h:8123/db"),
        ("https://h:8443", "https://h:8443"),
        ("http://u@h", "http://u@h"),
    ],
)
def test_redact(url, shown):
    assert redact(url) == shown


def test_second_chdb_path_is_refused_with_a_clear_message(ch_url, ch_client, tmp_path):
    if ch_url:
        pytest.skip("the session uses a server, not chdb")
    with pytest.raises(SinkConnectionError, match="only one chdb data path"):
        connect("", tmp_path)


def test_store_connect_shares_the_session_engine(ch_url, ch_data_dir, ch_client, ch_database):
    with Store.connect(ch_url, ch_data_dir, ch_database) as s:
        assert s.ping()
        assert s.migrate() == ["0001_init.sql"]
        assert s.migrate() == []
        s.write(Output(visits=[visit_row("v", "c", T)]))
        assert s.channels("p", "UTC", D, D, "last_click", ["type"])["totals"]["visits"] == 1
    # Closing that store's clients leaves the shared engine and client working.
    n = ch_client.query("SELECT count() FROM {db:Identifier}.visits", parameters={"db": ch_database}).result_rows
    assert n == [(1,)]


def test_ping_false_after_close(ch_url, ch_data_dir, ch_database):
    s = Store.connect(ch_url, ch_data_dir, ch_database)
    s.close()
    s.close()  # idempotent
    assert s.ping() is False


def test_store_rejects_bad_database(ch_client):
    with pytest.raises(ValueError, match="invalid database name"):
        Store(ch_client, "bad-name")


def test_writer_thread_and_query_thread(ch_url, ch_data_dir, ch_database):
    """One thread writes batches while another runs reports; both finish without errors."""
    with Store.connect(ch_url, ch_data_dir, ch_database) as s:
        s.migrate()
        errors: list[BaseException] = []
        batches = 20

        def writer():
            try:
                for b in range(batches):
                    s.write(
                        Output(
                            events=[event_row(None, f"c{b}-{i}", T + i) for i in range(200)],
                            visits=[visit_row(f"v{b}-{i}", f"c{b}-{i}", T + i) for i in range(200)],
                        )
                    )
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def reader():
            try:
                for _ in range(20):
                    s.channels("p", "UTC", D, D, "last_click", ["source"])
                    s.funnel("p", "UTC", D, D, ["pageview:*", "form:*"], 60)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert s.channels("p", "UTC", D, D, "last_click", ["source"])["totals"]["visits"] == batches * 200
