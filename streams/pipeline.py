"""The pure pipeline: events in, rows out. No I/O.

``Pipeline.process(events) -> Output`` is deterministic in the *set* of events it has seen:
whatever the arrival order or batching, the latest version of every row key is the same, and
an event id seen before changes nothing. Every row carries a version that grows with each
change of its owner (a client's timeline for visits; a person for conversions, attributions
and identities), so ClickHouse's ReplacingMergeTree keeps the newest truth.

Steps of one call:
1. group new events by client; each client's timeline re-derives the visits they touch;
2. contacts on the events join clients into persons (``IdentityGraph``); merged persons pool
   their visits and conversions;
3. every person whose visits or conversions changed re-credits the conversions that can be
   affected (those at or after the earliest change) with every model in ``MODELS``.
"""

from __future__ import annotations

import json
from sys import intern
from dataclasses import dataclass, field

from .attribution import MODELS, Conversion, History, Touch
from .identity import IdentityGraph
from .model import AttributionRow, ConversionRow, Event, EventRow, IdentityRow, Output, Source, VisitRow
from .rules import ProjectRules
from .sessions import Change, Hit, Timeline, Visit
from .sources import classify, path_of, query_params

_EVER = -(2**62)
_SHARE_MAX = 512


def _share(text: str) -> str:
    # URLs without query strings repeat across visitors (the site's pages); long or tagged
    # ones rarely do, and interning them would only grow the intern table.
    return intern(text) if len(text) <= _SHARE_MAX and "?" not in text else text
_NO_SOURCE = Source("")


def conversion_kind(hit: Hit, rules: ProjectRules) -> str | None:
    if hit.type == "goal":
        return "goal" if hit.name in rules.conversion_goals else None
    if hit.type in ("form", "call", "deal"):
        return hit.type
    return None


class Person:
    """A person's visits and conversions, and what was last written for them."""

    __slots__ = ("events", "touches", "conversions", "written_conversions", "written_credits")

    def __init__(self) -> None:
        # Events of all the person's clients: the version of its rows (see Timeline.version).
        # It grows with every change and a merge sums it, so versions never go back.
        self.events = 0
        self.touches: dict[str, Touch] = {}
        self.conversions: dict[str, Conversion] = {}
        # conversion_id -> (person_id, visit_id) last written
        self.written_conversions: dict[str, tuple[str, str]] = {}
        # (conversion_id, model) -> (person_id, ((visit_id, start, weight), ...)) last written
        self.written_credits: dict[tuple[str, str], tuple] = {}

    def __getstate__(self):
        return (self.events, self.touches, self.conversions, self.written_conversions, self.written_credits)

    def __setstate__(self, state) -> None:
        (self.events, self.touches, self.conversions, self.written_conversions, self.written_credits) = state

    def absorb(self, other: "Person") -> None:
        self.events += other.events
        self.touches.update(other.touches)
        self.conversions.update(other.conversions)
        self.written_conversions.update(other.written_conversions)
        self.written_credits.update(other.written_credits)


@dataclass
class State:
    """Everything the pipeline remembers. Keys are strings so any key-value store can hold it."""

    timelines: dict[str, Timeline] = field(default_factory=dict)  # "project:client"
    persons: dict[str, Person] = field(default_factory=dict)  # "project:person"
    graphs: dict[str, IdentityGraph] = field(default_factory=dict)  # project


class UnknownProject(ValueError):
    pass


class Pipeline:
    def __init__(self, rules: dict[str, ProjectRules], state: State | None = None) -> None:
        self.rules = rules
        self.state = state or State()
        self._click_ids = {pid: {p: (s, m) for p, s, m in r.click_ids} or None for pid, r in rules.items()}

    # -- 1. timelines -------------------------------------------------------------------------
    def _hit(self, event: Event, rules: ProjectRules) -> tuple[Hit, EventRow]:
        url = event.url
        params = query_params(url) if "?" in url else {}
        source = classify(url, event.referrer, rules.domains, self._click_ids[rules.project_id], params)
        # Timelines live long: share the repeated strings (page URLs, names) between hits.
        hit = Hit(
            event.ts, event.event_id, intern(event.type), intern(event.name), intern(event.site),
            _share(url), _share(event.referrer), source, event.value, intern(event.currency),
        )
        row = EventRow(
            event.project_id, event.event_id, event.client_id, event.ts, event.received_at,
            event.type, event.name, event.site, url, path_of(url) if url else "", event.referrer,
            event.title, json.dumps(event.props, ensure_ascii=False) if event.props else "",
            source.type, params.get("utm_source", ""), params.get("utm_medium", ""),
            params.get("utm_campaign", ""), params.get("utm_content", ""), params.get("utm_term", ""),
            source.click_id, event.phone_hash, event.email_hash, event.phone, event.email,
            event.contact_name, event.value, event.currency,
        )
        return hit, row

    def process(self, events: list[Event]) -> Output:
        out = Output()
        state = self.state
        by_client: dict[str, list[Event]] = {}
        for event in events:
            if event.project_id not in self.rules:
                out.rejected.append((event, "unknown_project"))
                continue
            by_client.setdefault(f"{event.project_id}:{event.client_id}", []).append(event)

        changed: list[tuple[str, str, Change, int]] = []  # (project, client, change, new events)
        contacts: list[tuple[str, str, str]] = []  # (project, client, contact node)
        for key, group in by_client.items():
            project_id, client_id = group[0].project_id, group[0].client_id
            rules = self.rules[project_id]
            timeline = state.timelines.get(key)
            if timeline is None:
                timeline = Timeline()
            hits = []
            batch_ids: set[str] = set()
            for event in group:
                if event.event_id in batch_ids or timeline.has(event.ts, event.event_id):
                    continue
                batch_ids.add(event.event_id)
                hit, row = self._hit(event, rules)
                hits.append(hit)
                out.events.append(row)
                if event.phone_hash:
                    contacts.append((project_id, client_id, "p:" + event.phone_hash))
                if event.email_hash:
                    contacts.append((project_id, client_id, "e:" + event.email_hash))
            if not hits:
                continue
            change = timeline.add(hits, rules.visit_timeout_ms)
            state.timelines[key] = timeline  # reassign: a changelogged table needs the write
            if change is None:
                continue
            changed.append((project_id, client_id, change, len(hits)))
            version = timeline.version
            for v in change.upserts:
                out.visits.append(_visit_row(project_id, client_id, v, version, 0))
            for v in change.deletes:
                out.visits.append(_visit_row(project_id, client_id, v, version, 1))

        # -- 2. identity ------------------------------------------------------------------------
        dirty: dict[str, int] = {}  # "project:person" -> earliest ts whose credit may change
        moved: dict[str, set[str]] = {}  # "project:person" -> clients that joined it
        for project_id, client_id, node in contacts:
            graph = state.graphs.get(project_id)
            if graph is None:
                graph = state.graphs[project_id] = IdentityGraph()
            merged = graph.link(client_id, node)
            state.graphs[project_id] = graph
            if merged is None:
                continue
            person_id, absorbed = merged
            pkey = f"{project_id}:{person_id}"
            person = state.persons.get(pkey) or Person()
            for old in absorbed:
                okey = f"{project_id}:{old}"
                other = state.persons.pop(okey, None)
                if other is not None:
                    person.absorb(other)
                dirty.pop(okey, None)
            state.persons[pkey] = person
            dirty[pkey] = _EVER
            moved.setdefault(pkey, set()).update(c for c in graph.clients_of(person_id) if c != person_id)

        # -- 3. persons -------------------------------------------------------------------------
        for project_id, client_id, change, new_events in changed:
            graph = state.graphs.get(project_id)
            person_id = graph.person_of(client_id) if graph else client_id
            pkey = f"{project_id}:{person_id}"
            person = state.persons.get(pkey) or Person()
            person.events += new_events
            earliest = _apply(person, client_id, change, self.rules[project_id])
            state.persons[pkey] = person
            if earliest is not None:
                dirty[pkey] = min(dirty.get(pkey, earliest), earliest)

        for pkey, since in dirty.items():
            project_id, _, person_id = pkey.partition(":")
            person = state.persons[pkey]
            _credit(project_id, person_id, person, since, out)
            for client_id in moved.get(pkey, ()):
                out.identities.append(IdentityRow(project_id, client_id, person_id, person.events))
            state.persons[pkey] = person
        return out


def _visit_row(project_id: str, client_id: str, v: Visit, version: int, deleted: int) -> VisitRow:
    s = v.source
    return VisitRow(
        project_id, v.visit_id, client_id, v.start, v.end, v.site, v.landing_url,
        path_of(v.landing_url) if v.landing_url else "", v.referrer, s.type, s.source, s.medium,
        s.campaign, s.content, s.term, s.click_id, v.pageviews, v.events, version, deleted,
    )


def _apply(person: Person, client_id: str, change: Change, rules: ProjectRules) -> int | None:
    """Fold a timeline change into the person; the earliest ts whose credit may change."""
    earliest: int | None = None
    for v in change.deletes:
        person.touches.pop(v.visit_id, None)
        earliest = v.start if earliest is None else min(earliest, v.start)
    for v in change.upserts:
        person.touches[v.visit_id] = Touch(v.start, v.visit_id, v.end, client_id, v.source)
        earliest = v.start if earliest is None else min(earliest, v.start)
    for hit, visit_id in zip(change.region, change.region_visits):
        kind = conversion_kind(hit, rules)
        if kind is None:
            continue
        conversion = Conversion(hit.event_id, hit.ts, kind, hit.name, client_id, visit_id, hit.value, hit.currency or rules.currency)
        if person.conversions.get(hit.event_id) != conversion:
            person.conversions[hit.event_id] = conversion
            earliest = hit.ts if earliest is None else min(earliest, hit.ts)
    return earliest


def _credit(project_id: str, person_id: str, person: Person, since: int, out: Output) -> None:
    """Re-credit the person's conversions at or after ``since``; write what changed."""
    todo = [c for c in person.conversions.values() if c.ts >= since]
    if not todo:
        return
    history = History(person.touches.values())
    version = person.events
    for conv in todo:
        written = person.written_conversions.get(conv.conversion_id)
        if written != (person_id, conv.visit_id):
            person.written_conversions[conv.conversion_id] = (person_id, conv.visit_id)
            out.conversions.append(
                ConversionRow(project_id, conv.conversion_id, conv.kind, conv.name, conv.client_id, person_id, conv.ts, conv.visit_id, conv.value, conv.currency, version, 0)
            )
        for model, credits in history.credit(conv).items():
            now = tuple((t.visit_id, t.start, w) for t, w in credits)
            key = (conv.conversion_id, model)
            before = person.written_credits.get(key)
            if before == (person_id, now):
                continue
            person.written_credits[key] = (person_id, now)
            kept = {vid for vid, _, _ in now}
            if before is not None:
                for vid, start, w in before[1]:
                    if vid not in kept:
                        out.attributions.append(_credit_row(project_id, model, conv, person_id, vid, start, None, 0.0, version, 1))
            for t, w in credits:
                out.attributions.append(_credit_row(project_id, model, conv, person_id, t.visit_id, t.start, t.source, w, version, 0))


def _credit_row(project_id, model, conv: Conversion, person_id, visit_id, start, source, weight, version, deleted) -> AttributionRow:
    s = source or _NO_SOURCE
    return AttributionRow(
        project_id, model, conv.conversion_id, conv.ts, conv.kind, conv.name, person_id,
        visit_id, start, s.type, s.source, s.medium, s.campaign, s.content, s.term,
        weight, weight * conv.value, conv.currency, version, deleted,
    )

