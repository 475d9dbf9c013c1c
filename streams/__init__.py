"""Stream processing: the pure core (sources, visits, identity, attribution) and its adapters."""
