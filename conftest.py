# Fixtures live in one plugin module per area, so each can grow without touching the others.
pytest_plugins = [
    "tests.plugins.clickhouse",
    "tests.plugins.server",
    "tests.plugins.kafka",
]
