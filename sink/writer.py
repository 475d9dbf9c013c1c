"""Write a pipeline ``Output`` into ClickHouse: one insert per non-empty row list.

Replays are harmless by design: every table is a ReplacingMergeTree keyed by the row's
identity, and reports read with FINAL, so writing the same Output again changes no result.
"""

from __future__ import annotations

from typing import NamedTuple

from clickhouse_connect.driver.client import Client

from sink.client import check_identifier
from streams.model import AttributionRow, ConversionRow, EventRow, IdentityRow, Output, VisitRow

# Output attribute -> (table, row type). The row type's _fields are the table's columns.
TABLES: dict[str, tuple[str, type[NamedTuple]]] = {
    "events": ("events", EventRow),
    "visits": ("visits", VisitRow),
    "conversions": ("conversions", ConversionRow),
    "attributions": ("attributions", AttributionRow),
    "identities": ("identities", IdentityRow),
}


class Writer:
    def __init__(self, client: Client, database: str):
        self.client = client
        self.database = check_identifier(database)

    def write(self, output: Output) -> None:
        """Insert every non-empty list; raises on the first failure (the caller retries all)."""
        for attr, (table, row_type) in TABLES.items():
            rows = getattr(output, attr)
            if not rows:
                continue
            for i, row in enumerate(rows):
                if not isinstance(row, row_type):
                    raise TypeError(f"Output.{attr}[{i}] is a {type(row).__name__}, expected {row_type.__name__}")
            self.client.insert(
                table,
                rows,
                column_names=list(row_type._fields),
                database=self.database,
            )
