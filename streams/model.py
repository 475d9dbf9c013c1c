"""The data that flows through Skvoz: one validated input event, and the rows derived from it.

Pure data: no I/O. Timestamps are epoch milliseconds (int, UTC) everywhere in the core; the
sink turns them into ``DateTime64(3, 'UTC')``. Row tuples carry their ClickHouse column names
as ``_fields`` so writers insert them without a mapping table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

EVENT_TYPES = ("pageview", "goal", "form", "call", "deal")
# Conversion kinds that are leads (a person asked to be contacted).
LEAD_KINDS = ("form", "call")


@dataclass(slots=True)
class Event:
    """One event after the collector validated and enriched it.

    This is what goes into the durable log (local log or Kafka) and what the pipeline reads.
    Raw contact values travel only when the project opted in (``store_contacts``); the
    keyed hashes are always there when the event carried a contact.
    """

    project_id: str
    site: str  # domain of the site that sent it
    event_id: str  # client-made UUID, canonical lower-case form; the dedup key
    client_id: str
    type: str  # one of EVENT_TYPES
    ts: int  # epoch ms, client clock (validated window at the collector)
    received_at: int  # epoch ms, collector clock
    url: str = ""
    referrer: str = ""
    title: str = ""
    name: str = ""  # goal / form / call line / deal name
    props: dict = field(default_factory=dict)
    phone_hash: str = ""
    email_hash: str = ""
    phone: str = ""  # normalised E.164 digits, only when the project stores contacts
    email: str = ""
    contact_name: str = ""
    value: float = 0.0  # conversion value (goal value, deal amount), in `currency`
    currency: str = ""
    user_agent: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Event":
        return cls(**json.loads(text))

    def to_list(self) -> list:
        """Positional form for logs: about half the bytes and time of a dict."""
        return [getattr(self, name) for name in EVENT_FIELDS]

    @classmethod
    def from_list(cls, values: list) -> "Event":
        return cls(*values)


EVENT_FIELDS = tuple(f.name for f in fields(Event))


class Source(NamedTuple):
    """Where a visit came from. ``type`` is one of SOURCE_TYPES in streams.sources."""

    type: str
    source: str = ""
    medium: str = ""
    campaign: str = ""
    content: str = ""
    term: str = ""
    click_id: str = ""  # e.g. "yclid:123"


DIRECT = Source("direct")


class EventRow(NamedTuple):
    project_id: str
    event_id: str
    client_id: str
    ts: int
    received_at: int
    type: str
    name: str
    site: str
    url: str
    path: str
    referrer: str
    title: str
    props: str  # JSON text
    source_type: str  # the event's own landing classification
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_content: str
    utm_term: str
    click_id: str
    phone_hash: str
    email_hash: str
    phone: str
    email: str
    contact_name: str
    value: float
    currency: str


class VisitRow(NamedTuple):
    project_id: str
    visit_id: str
    client_id: str
    start_ts: int
    end_ts: int
    site: str
    landing_url: str
    landing_path: str
    referrer: str
    source_type: str
    source: str
    medium: str
    campaign: str
    content: str
    term: str
    click_id: str
    pageviews: int
    events: int
    version: int
    is_deleted: int


class ConversionRow(NamedTuple):
    project_id: str
    conversion_id: str  # the event id of the converting event
    kind: str  # form | goal | call | deal
    name: str
    client_id: str
    person_id: str
    ts: int
    visit_id: str  # the visit it happened in
    value: float
    currency: str
    version: int
    is_deleted: int


class AttributionRow(NamedTuple):
    project_id: str
    model: str
    conversion_id: str
    conversion_ts: int
    kind: str
    name: str
    person_id: str
    visit_id: str  # the credited visit
    visit_start: int
    source_type: str
    source: str
    medium: str
    campaign: str
    content: str
    term: str
    weight: float  # share of the conversion credited to this visit (1.0 for single-touch)
    value: float  # weight * conversion value
    currency: str
    version: int
    is_deleted: int


class IdentityRow(NamedTuple):
    """client_id -> person_id; the latest version wins (ReplacingMergeTree)."""

    project_id: str
    client_id: str
    person_id: str
    version: int


@dataclass(slots=True)
class Output:
    """Everything one pipeline step asks the sink to write."""

    events: list[EventRow] = field(default_factory=list)
    visits: list[VisitRow] = field(default_factory=list)
    conversions: list[ConversionRow] = field(default_factory=list)
    attributions: list[AttributionRow] = field(default_factory=list)
    identities: list[IdentityRow] = field(default_factory=list)
    # events the pipeline could not use, with the reason: for the dead-letter log, not ClickHouse
    rejected: list[tuple[Event, str]] = field(default_factory=list)

    def extend(self, other: "Output") -> None:
        self.events.extend(other.events)
        self.visits.extend(other.visits)
        self.conversions.extend(other.conversions)
        self.attributions.extend(other.attributions)
        self.identities.extend(other.identities)
        self.rejected.extend(other.rejected)

    def __len__(self) -> int:
        return (
            len(self.events)
            + len(self.visits)
            + len(self.conversions)
            + len(self.attributions)
            + len(self.identities)
        )
