"""ClickHouse storage: schema migrations, batched writers and report queries."""
