"""Process counters rendered in the Prometheus text exposition format (version 0.0.4).

No client library: a handful of labelled counters in dicts is all the collector needs, and an
increment is a dict update on the event loop thread (no locks).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BAD_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(names, values))
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *label_values: str, by: float = 1) -> None:
        self.values[label_values] += by

    def get(self, *label_values: str) -> float:
        return self.values.get(label_values, 0)

    def render(self, kind: str = "counter") -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {kind}"
        for key in sorted(self.values):
            yield f"{self.name}{_labels(self.labels, key)} {_num(self.values[key])}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    def __init__(self) -> None:
        self.accepted = Counter(
            "skvoz_events_accepted_total", "Events accepted and handed to the log.",
            ("endpoint", "project"))
        self.rejected = Counter(
            "skvoz_events_rejected_total", "Events dropped by enrichment, by reason.",
            ("endpoint", "reason"))
        self.contact_dropped = Counter(
            "skvoz_contacts_dropped_total",
            "Contact fields dropped from kept events (the event was accepted).",
            ("endpoint", "field", "reason"))
        self.requests = Counter(
            "skvoz_http_requests_total", "HTTP requests by route and status.",
            ("route", "status"))
        self.request_errors = Counter(
            "skvoz_http_request_errors_total", "Requests refused whole, by route and reason.",
            ("route", "reason"))
        # gauges read at scrape time (runtime stats, readiness)
        self.gauges: list[tuple[str, str, Callable[[], dict[str, float]]]] = []

    def add_gauges(self, prefix: str, help_text: str, read: Callable[[], dict]) -> None:
        self.gauges.append((prefix, help_text, read))

    def render(self) -> str:
        lines: list[str] = []
        for c in (self.accepted, self.rejected, self.contact_dropped, self.requests,
                  self.request_errors):
            lines.extend(c.render())
        for prefix, help_text, read in self.gauges:
            try:
                values = read() or {}
            except Exception:  # a scrape must not fail because one source is unwell
                values = {}
            for key in sorted(values):
                v = values[key]
                if isinstance(v, bool):
                    v = int(v)
                if not isinstance(v, (int, float)):
                    continue
                name = f"{prefix}_{_BAD_NAME.sub('_', str(key))}"
                lines.append(f"# HELP {name} {help_text} ({key})")
                lines.append(f"# TYPE {name} gauge")
                lines.append(f"{name} {_num(v)}")
        return "\n".join(lines) + "\n"
