"""Fixtures for clickhouse tests (owned by the clickhouse area).

* ``ch_client`` (session): one ClickHouse client for the whole pytest process. Embedded chdb
  in a temp dir by default; ``SKVOZ_TEST_CLICKHOUSE_URL=http://user:pass@host:8123`` runs the
  same tests against a server. A process can hold only one chdb path, so code under test that
  opens its own Store must use ``Store.connect(ch_url, ch_data_dir, database=...)``: that
  resolves to the same engine path.
* ``ch_database`` (function): a fresh, unique, empty database name, dropped afterwards.
* ``store`` (function): a migrated ``Store`` on ``ch_database`` sharing ``ch_client``.

Row factories (``event_row``, ``visit_row``, ...) build valid rows with defaults, so tests
only spell out what they are about.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sink.client import connect
from sink.store import Store
from streams.model import AttributionRow, ConversionRow, EventRow, IdentityRow, VisitRow

TEST_URL_ENV = "SKVOZ_TEST_CLICKHOUSE_URL"


@pytest.fixture(scope="session")
def ch_url() -> str:
    """'' for embedded chdb, else the server URL from SKVOZ_TEST_CLICKHOUSE_URL."""
    return os.environ.get(TEST_URL_ENV, "").strip()


@pytest.fixture(scope="session")
def ch_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data_dir whose ``clickhouse`` sub-directory is the session's chdb path."""
    return tmp_path_factory.mktemp("skvoz-ch")


@pytest.fixture(scope="session")
def ch_client(ch_url: str, ch_data_dir: Path):
    client = connect(ch_url, ch_data_dir)
    yield client
    client.close()


@pytest.fixture
def ch_database(ch_client):
    name = f"skvoz_test_{uuid.uuid4().hex[:12]}"
    yield name
    ch_client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": name})


@pytest.fixture
def store(ch_client, ch_database) -> Store:
    s = Store(ch_client, ch_database)
    s.migrate()
    yield s
    s.close()  # does not close the shared client


# -- row factories ----------------------------------------------------------------------------


def ms(*args: int) -> int:
    """Epoch ms of a UTC wall time: ms(2024, 3, 10, 12, 30)."""
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def event_row(event_id: str | None = None, client_id: str = "c1", ts: int = 0, **kw) -> EventRow:
    path = kw.pop("path", "/")
    base = dict(
        project_id="p",
        event_id=event_id or str(uuid.uuid4()),
        client_id=client_id,
        ts=ts,
        received_at=ts + 50,
        type="pageview",
        name="",
        site="example.com",
        url=f"https://example.com{path}",
        path=path,
        referrer="",
        title="",
        props="{}",
        source_type="direct",
        utm_source="",
        utm_medium="",
        utm_campaign="",
        utm_content="",
        utm_term="",
        click_id="",
        phone_hash="",
        email_hash="",
        phone="",
        email="",
        contact_name="",
        value=0.0,
        currency="",
    )
    base.update(kw)
    return EventRow(**base)


def visit_row(visit_id: str, client_id: str = "c1", start_ts: int = 0, source=("direct", "", "", ""), **kw) -> VisitRow:
    st, src, med, camp = source
    base = dict(
        project_id="p",
        visit_id=visit_id,
        client_id=client_id,
        start_ts=start_ts,
        end_ts=start_ts + 60_000,
        site="example.com",
        landing_url="https://example.com/",
        landing_path="/",
        referrer="",
        source_type=st,
        source=src,
        medium=med,
        campaign=camp,
        content="",
        term="",
        click_id="",
        pageviews=1,
        events=1,
        version=1,
        is_deleted=0,
    )
    base.update(kw)
    return VisitRow(**base)


def conversion_row(conversion_id: str, client_id: str = "c1", ts: int = 0, kind: str = "form", **kw) -> ConversionRow:
    base = dict(
        project_id="p",
        conversion_id=conversion_id,
        kind=kind,
        name="",
        client_id=client_id,
        person_id=client_id,
        ts=ts,
        visit_id="",
        value=0.0,
        currency="RUB",
        version=1,
        is_deleted=0,
    )
    base.update(kw)
    return ConversionRow(**base)


def attribution_row(
    conversion_id: str,
    model: str,
    conversion_ts: int,
    visit_id: str,
    source=("direct", "", "", ""),
    kind: str = "form",
    **kw,
) -> AttributionRow:
    st, src, med, camp = source
    base = dict(
        project_id="p",
        model=model,
        conversion_id=conversion_id,
        conversion_ts=conversion_ts,
        kind=kind,
        name="",
        person_id="c1",
        visit_id=visit_id,
        visit_start=conversion_ts,
        source_type=st,
        source=src,
        medium=med,
        campaign=camp,
        content="",
        term="",
        weight=1.0,
        value=0.0,
        currency="RUB",
        version=1,
        is_deleted=0,
    )
    base.update(kw)
    return AttributionRow(**base)


def identity_row(client_id: str, person_id: str, version: int = 1, project_id: str = "p") -> IdentityRow:
    return IdentityRow(project_id, client_id, person_id, version)
