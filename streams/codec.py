"""Wire format of the Kafka topics, shared by the collector (producer) and the workers.

``events`` topic: key ``"{project_id}:{client_id}"`` (so one client's events stay in one
partition, in order), value a JSON array of events in positional form (``Event.to_list``), all
of that client. One collector request for one client is one message.
"""

from __future__ import annotations

import json
import operator

from .model import EVENT_FIELDS, Event

try:  # the collector encodes every request: orjson is several times faster
    import orjson

    _dumps = orjson.dumps
    _loads = orjson.loads
except ImportError:  # pragma: no cover
    def _dumps(value) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    _loads = json.loads

_event_values = operator.attrgetter(*EVENT_FIELDS)

TOPICS = ("events", "views", "persons", "rows", "dead-letters")


def topic_name(prefix: str, name: str) -> str:
    if name not in TOPICS:
        raise ValueError(f"unknown topic {name!r}")
    return f"{prefix}.{name}"


def client_key(project_id: str, client_id: str) -> bytes:
    return f"{project_id}:{client_id}".encode()


def encode_events(events: list[Event]) -> bytes:
    return _dumps([_event_values(e) for e in events])


def decode_events(value: bytes) -> list[Event]:
    return [Event.from_list(v) for v in _loads(value)]


def by_client(events: list[Event]) -> dict[bytes, list[Event]]:
    groups: dict[bytes, list[Event]] = {}
    for e in events:
        groups.setdefault(client_key(e.project_id, e.client_id), []).append(e)
    return groups
