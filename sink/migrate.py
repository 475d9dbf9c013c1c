"""Numbered SQL migrations, applied once per database and recorded in ``schema_migrations``.

Files are ``NNNN_name.sql`` in ``sink/migrations``; statements are separated by ``;`` and may
use ``{db:Identifier}`` for the target database. An applied file must never change: its
checksum is recorded, and a mismatch stops the migration (write a new file instead).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from sink.client import check_identifier

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
FILE_RE = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
TABLE = "schema_migrations"


class MigrationError(RuntimeError):
    """The migrations cannot be applied; the message names the file and the reason."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str
    checksum: str

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = Path(directory or MIGRATIONS_DIR)
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: dict[str, Migration] = {}
    numbers: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        m = FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_name.sql")
        if m.group(1) in numbers:
            raise MigrationError(f"{path.name} and {numbers[m.group(1)]} share the number {m.group(1)}")
        numbers[m.group(1)] = path.name
        data = path.read_bytes()
        found[path.name] = Migration(path.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
    return [found[k] for k in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` outside quotes and comments; drop empty and comment-only pieces."""
    out: list[str] = []
    buf: list[str] = []
    has_code = False
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j  # keep the newline
            continue
        if c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise MigrationError("unterminated /* comment")
            i = j + 2
            buf.append(" ")
            continue
        if c in ("'", '"', "`"):
            j = i + 1
            while j < n:
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    break
                j += 1
            if j >= n:
                raise MigrationError(f"unterminated {c} quote")
            buf.append(sql[i : j + 1])
            has_code = True
            i = j + 1
            continue
        if c == ";":
            if has_code:
                out.append("".join(buf).strip())
            buf, has_code = [], False
            i += 1
            continue
        buf.append(c)
        if not c.isspace():
            has_code = True
        i += 1
    if has_code:
        out.append("".join(buf).strip())
    return out


def _params(statement: str, database: str) -> dict | None:
    # Without a {..:Type} placeholder clickhouse-connect would %-format the text instead.
    return {"db": database} if "{db:Identifier}" in statement else None


def applied_migrations(client: Client, database: str) -> dict[str, str]:
    """name -> checksum of the migrations recorded in ``database``."""
    rows = client.query(
        "SELECT name, groupUniqArray(checksum) FROM {db:Identifier}.{t:Identifier} GROUP BY name",
        parameters={"db": database, "t": TABLE},
    ).result_rows
    out = {}
    for name, checksums in rows:
        if len(checksums) != 1:
            raise MigrationError(f"{database}.{TABLE} records {name} with different checksums")
        out[name] = checksums[0]
    return out


def migrate(client: Client, database: str, directory: Path | None = None) -> list[str]:
    """Create ``database`` if needed and apply the migrations not yet recorded; returns their names."""
    check_identifier(database)
    migrations = load_migrations(directory)
    client.command("CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters={"db": database})
    client.command(
        "CREATE TABLE IF NOT EXISTS {db:Identifier}.{t:Identifier} "
        "(name String, checksum String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = MergeTree ORDER BY name",
        parameters={"db": database, "t": TABLE},
    )
    done = applied_migrations(client, database)
    known = {m.name for m in migrations}
    for m in migrations:
        if m.name in done and done[m.name] != m.checksum:
            raise MigrationError(
                f"migration {m.name} was already applied to {database} but its file has changed "
                f"(recorded checksum {done[m.name][:12]}…, file {m.checksum[:12]}…); "
                "restore the file and put schema changes in a new numbered migration"
            )
    unknown = sorted(set(done) - known)
    if unknown:
        raise MigrationError(
            f"{database} has migrations this version does not know: {', '.join(unknown)} "
            "(was the database migrated by a newer Skvoz?)"
        )
    applied = []
    for m in migrations:
        if m.name in done:
            continue
        for statement in m.statements():
            try:
                client.command(statement, parameters=_params(statement, database))
            except Exception as e:
                raise MigrationError(f"migration {m.name} failed on statement:\n{statement}\n{e}") from e
        # Recorded after all statements ran; they are idempotent (IF NOT EXISTS), so a crash
        # in between re-runs the file harmlessly.
        client.command(
            "INSERT INTO {db:Identifier}.{t:Identifier} (name, checksum, applied_at) "
            "SELECT {name:String}, {checksum:String}, now64(3)",
            parameters={"db": database, "t": TABLE, "name": m.name, "checksum": m.checksum},
        )
        applied.append(m.name)
    return applied
