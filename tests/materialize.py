"""What ReplacingMergeTree ... FINAL would show for a stream of pipeline outputs."""

from __future__ import annotations

from streams.model import Output

# table -> the columns that make a row's key (its ClickHouse ORDER BY, minus derived parts)
KEYS = {
    "events": ("project_id", "event_id"),
    "visits": ("project_id", "visit_id"),
    "conversions": ("project_id", "conversion_id"),
    "attributions": ("project_id", "model", "conversion_id", "visit_id"),
    "identities": ("project_id", "client_id"),
}


def materialize(outputs: list[Output]) -> dict[str, dict[tuple, tuple]]:
    tables: dict[str, dict[tuple, tuple]] = {name: {} for name in KEYS}
    for out in outputs:
        for name, key_cols in KEYS.items():
            table = tables[name]
            for row in getattr(out, name):
                d = row._asdict()
                key = tuple(d[c] for c in key_cols)
                version = d.get("version", 0)
                old = table.get(key)
                if old is None or old[0] <= version:
                    table[key] = (version, row)
    result: dict[str, dict[tuple, tuple]] = {}
    for name, table in tables.items():
        live = {}
        for key, (version, row) in table.items():
            d = row._asdict()
            if d.get("is_deleted"):
                continue
            d.pop("version", None)
            live[key] = tuple(d.values())
        result[name] = live
    return result
