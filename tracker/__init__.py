"""HTTP edge: collector, snippet, query API, CLI."""
