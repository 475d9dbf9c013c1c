import shutil

import pytest

from sink.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate, split_statements
from streams.model import AttributionRow, ConversionRow, EventRow, IdentityRow, VisitRow

TABLES = {
    "events": EventRow,
    "visits": VisitRow,
    "conversions": ConversionRow,
    "attributions": AttributionRow,
    "identities": IdentityRow,
}


def _tables(client, db):
    rows = client.query("SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": db}).result_rows
    return {r[0] for r in rows}


def test_creates_database_and_is_idempotent(ch_client, ch_database):
    applied = migrate(ch_client, ch_database)
    assert applied == [m.name for m in load_migrations()]
    assert applied[0] == "0001_init.sql"
    assert _tables(ch_client, ch_database) == set(TABLES) | {"schema_migrations"}
    assert migrate(ch_client, ch_database) == []
    recorded = ch_client.query(
        "SELECT name, count() FROM {db:Identifier}.schema_migrations GROUP BY name ORDER BY name",
        parameters={"db": ch_database},
    ).result_rows
    assert recorded == [(name, 1) for name in applied]


@pytest.mark.parametrize("table,row_type", TABLES.items())
def test_columns_are_the_row_fields_in_order(store, ch_client, table, row_type):
    cols = ch_client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
        parameters={"db": store.database, "t": table},
    ).result_rows
    assert [c[0] for c in cols] == list(row_type._fields)


@pytest.mark.parametrize(
    "table,engine_fragment",
    [
        ("events", "ReplacingMergeTree(received_at)"),
        ("visits", "ReplacingMergeTree(version, is_deleted)"),
        ("conversions", "ReplacingMergeTree(version, is_deleted)"),
        ("attributions", "ReplacingMergeTree(version, is_deleted)"),
        ("identities", "ReplacingMergeTree(version)"),
    ],
)
def test_engines(store, ch_client, table, engine_fragment):
    full = ch_client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": store.database, "t": table},
    ).result_rows[0][0]
    assert full.startswith(engine_fragment)


def test_changed_checksum_is_refused(ch_client, ch_database, tmp_path):
    mdir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, mdir)
    (mdir / "0002_extra.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {db:Identifier}.extra (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
    )
    assert migrate(ch_client, ch_database, mdir)[-1] == "0002_extra.sql"
    (mdir / "0002_extra.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {db:Identifier}.extra (x UInt16) ENGINE = MergeTree ORDER BY x;\n"
    )
    with pytest.raises(MigrationError, match=r"0002_extra\.sql was already applied .* has changed"):
        migrate(ch_client, ch_database, mdir)


def test_new_file_is_applied_later_and_unknown_applied_file_is_refused(ch_client, ch_database, tmp_path):
    mdir = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, mdir)
    migrate(ch_client, ch_database, mdir)
    (mdir / "0099_more.sql").write_text(
        "-- a comment; with a semicolon\n"
        "CREATE TABLE IF NOT EXISTS {db:Identifier}.more (s String DEFAULT 'a;b') ENGINE = MergeTree ORDER BY s;\n"
        "ALTER TABLE {db:Identifier}.more ADD COLUMN IF NOT EXISTS n UInt8;\n"
    )
    assert migrate(ch_client, ch_database, mdir) == ["0099_more.sql"]
    assert "more" in _tables(ch_client, ch_database)
    (mdir / "0099_more.sql").unlink()
    with pytest.raises(MigrationError, match="does not know: 0099_more.sql"):
        migrate(ch_client, ch_database, mdir)


def test_failed_statement_names_the_file_and_is_not_recorded(ch_client, ch_database, tmp_path):
    mdir = tmp_path / "migrations"
    mdir.mkdir()
    (mdir / "0001_bad.sql").write_text("CREATE TABLE {db:Identifier}.t (x NoSuchType) ENGINE = Memory;")
    with pytest.raises(MigrationError, match="0001_bad.sql failed"):
        migrate(ch_client, ch_database, mdir)
    (mdir / "0001_bad.sql").write_text("CREATE TABLE {db:Identifier}.t (x UInt8) ENGINE = Memory;")
    assert migrate(ch_client, ch_database, mdir) == ["0001_bad.sql"]


@pytest.mark.parametrize("name", ["1_init.sql", "0001-init.sql", "init.sql"])
def test_badly_named_file(tmp_path, name):
    (tmp_path / name).write_text("SELECT 1")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        load_migrations(tmp_path)


def test_duplicate_number(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0001_b.sql").write_text("SELECT 2")
    with pytest.raises(MigrationError, match="share the number 0001"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("db", ["", "1abc", "a-b", "a;DROP", "a b"])
def test_bad_database_name(ch_client, db):
    with pytest.raises(ValueError, match="invalid database name"):
        migrate(ch_client, db)


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1", ["SELECT 1"]),
        ("-- only a comment;\n;;  \n", []),
        ("SELECT 'a;b'; SELECT \"c;d\"", ["SELECT 'a;b'", 'SELECT "c;d"']),
        ("SELECT 'it\\'s;'; SELECT 2", ["SELECT 'it\\'s;'", "SELECT 2"]),
        ("SELECT /* x; y */ 1; -- tail; comment\nSELECT 2", ["SELECT   1", "SELECT 2"]),
        ("SELECT `a;b` FROM t", ["SELECT `a;b` FROM t"]),
    ],
)
def test_split_statements(sql, expected):
    assert split_statements(sql) == expected


@pytest.mark.parametrize("sql", ["SELECT 'open", "SELECT /* open"])
def test_split_statements_unterminated(sql):
    with pytest.raises(MigrationError, match="unterminated"):
        split_statements(sql)
