"""The pure pipeline: events in, rows out. No I/O.

Three stages, each a function over its own piece of state, so the same code runs inline here
(``Pipeline.process``) and inside Faust agents with the state in tables (``streams.faust_app``):

1. ``client_step`` — per client id: the timeline re-derives the visits new events touch; out
   come event and visit rows and a ``ClientView``: the client's whole current set of visits and
   conversions, tagged with the client's version (its event count).
2. ``identity_step`` — per project: contacts on the events join clients into persons
   (``IdentityGraph``); out come the client's person id, the persons a merge folded in, and
   identity rows.
3. ``person_step`` / ``Person.absorb`` — per person: keep, for every client, the view with the
   highest version, and re-credit the conversions the change can affect with every model.

Because a person keeps whole client views and not deltas, a view applied twice, late or out of
order changes nothing, and two persons merge by keeping the newer view of each client. Every
row's version depends only on the set of events seen (a client's event count; the sum of them
for a person; the number of unions in the identity graph), so however events are ordered,
batched or replayed, the newest version of every row key is the same.
"""

from __future__ import annotations

import json
from sys import intern
from typing import NamedTuple

from .attribution import MODELS, Conversion, History, Touch
from .identity import IdentityGraph
from .model import AttributionRow, ConversionRow, Event, EventRow, IdentityRow, Output, Source, VisitRow
from .rules import ProjectRules
from .sessions import Hit, Timeline, Visit
from .sources import classify, path_of, query_params

EVER = -(2**62)
_NO_SOURCE = Source("")
_SHARE_MAX = 512


def _share(text: str) -> str:
    # URLs without query strings repeat across visitors (the site's pages); long or tagged
    # ones rarely do, and interning them would only grow the intern table.
    return intern(text) if len(text) <= _SHARE_MAX and "?" not in text else text


def conversion_kind(hit: Hit, rules: ProjectRules) -> str | None:
    if hit.type == "goal":
        return "goal" if hit.name in rules.conversion_goals else None
    if hit.type in ("form", "call", "deal"):
        return hit.type
    return None


class ClientView(NamedTuple):
    """What the person stage needs of one client, complete as of ``version``."""

    project_id: str
    client_id: str
    version: int  # the client's event count: grows with every change
    touches: tuple[Touch, ...]
    conversions: tuple[Conversion, ...]
    contacts: tuple[str, ...]  # contact nodes ("p:<hash>", "e:<hash>") on the new events


# -- 1. client stage ----------------------------------------------------------------------------


class ClientState:
    """A client's timeline plus its conversions (kept so a view is cheap to build)."""

    __slots__ = ("timeline", "conversions")

    def __init__(self) -> None:
        self.timeline = Timeline()
        self.conversions: list[Conversion] = []  # sorted by (ts, id)

    def __getstate__(self):
        return (self.timeline, self.conversions)

    def __setstate__(self, state) -> None:
        self.timeline, self.conversions = state


def _hit(event: Event, rules: ProjectRules, click_ids) -> tuple[Hit, EventRow]:
    url = event.url
    params = query_params(url) if "?" in url else {}
    source = classify(url, event.referrer, rules.domains, click_ids, params)
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


def client_step(state: ClientState, events: list[Event], rules: ProjectRules, click_ids=None) -> tuple[Output, ClientView | None]:
    """Add one client's events (of one project); rows, and its new view if anything changed."""
    out = Output()
    timeline = state.timeline
    hits: list[Hit] = []
    contacts: list[str] = []
    batch_ids: set[str] = set()
    for event in events:
        if event.event_id in batch_ids or timeline.has(event.ts, event.event_id):
            continue
        batch_ids.add(event.event_id)
        hit, row = _hit(event, rules, click_ids)
        hits.append(hit)
        out.events.append(row)
        if event.phone_hash:
            contacts.append("p:" + event.phone_hash)
        if event.email_hash:
            contacts.append("e:" + event.email_hash)
    change = timeline.add(hits, rules.visit_timeout_ms) if hits else None
    if change is None:
        return out, None
    project_id, client_id = events[0].project_id, events[0].client_id
    version = timeline.version
    for v in change.upserts:
        out.visits.append(_visit_row(project_id, client_id, v, version, 0))
    for v in change.deletes:
        out.visits.append(_visit_row(project_id, client_id, v, version, 1))

    # conversions before the re-derived region keep their visits; the region's are re-read
    first = change.region[0]
    kept = [c for c in state.conversions if (c.ts, c.conversion_id) < (first.ts, first.event_id)]
    for hit, visit_id in zip(change.region, change.region_visits):
        kind = conversion_kind(hit, rules)
        if kind is not None:
            kept.append(Conversion(hit.event_id, hit.ts, kind, hit.name, client_id, visit_id, hit.value, hit.currency or rules.currency))
    state.conversions = kept
    touches = tuple(Touch(v.start, v.visit_id, v.end, client_id, v.source) for v in timeline.visits)
    return out, ClientView(project_id, client_id, version, touches, tuple(kept), tuple(contacts))


def _visit_row(project_id: str, client_id: str, v: Visit, version: int, deleted: int) -> VisitRow:
    s = v.source
    return VisitRow(
        project_id, v.visit_id, client_id, v.start, v.end, v.site, v.landing_url,
        path_of(v.landing_url) if v.landing_url else "", v.referrer, s.type, s.source, s.medium,
        s.campaign, s.content, s.term, s.click_id, v.pageviews, v.events, version, deleted,
    )


# -- 2. identity stage --------------------------------------------------------------------------


class Identified(NamedTuple):
    person_id: str
    merges: list[tuple[str, list[str]]]  # (surviving person, persons folded into it)
    rows: list[IdentityRow]


def identity_step(graph: IdentityGraph, view: ClientView) -> Identified:
    graph.add_client(view.client_id)
    merges: list[tuple[str, list[str]]] = []
    rows: list[IdentityRow] = []
    for node in view.contacts:
        merged = graph.link(view.client_id, node)
        if merged is None:
            continue
        person_id, absorbed = merged
        merges.append(merged)
        # every client of the merged person, so no row still names a folded-in person
        for client_id in sorted(graph.clients_of(person_id)):
            if client_id != person_id:
                rows.append(IdentityRow(view.project_id, client_id, person_id, graph.unions))
    return Identified(graph.person_of(view.client_id), merges, rows)


# -- 3. person stage ----------------------------------------------------------------------------


class Person:
    """A person's clients (their latest views) and what was last written for them."""

    __slots__ = ("clients", "written_conversions", "written_credits")

    def __init__(self) -> None:
        self.clients: dict[str, ClientView] = {}
        # conversion_id -> (person_id, visit_id) last written
        self.written_conversions: dict[str, tuple[str, str]] = {}
        # (conversion_id, model) -> (person_id, ((visit_id, start, weight), ...)) last written
        self.written_credits: dict[tuple[str, str], tuple] = {}

    def __getstate__(self):
        return (self.clients, self.written_conversions, self.written_credits)

    def __setstate__(self, state) -> None:
        self.clients, self.written_conversions, self.written_credits = state

    @property
    def version(self) -> int:
        """Row version: the events of all the person's clients. It grows with every view and
        with every merge, and depends only on which events were seen."""
        return sum(v.version for v in self.clients.values())

    def take(self, view: ClientView) -> int | None:
        """Keep a client's view if it is newer; the earliest ts whose credit may change."""
        old = self.clients.get(view.client_id)
        if old is not None and old.version >= view.version:
            return None
        self.clients[view.client_id] = view._replace(contacts=())
        if old is None:
            changed = [t.start for t in view.touches] + [c.ts for c in view.conversions]
        else:
            changed = [t.start for t in set(old.touches).symmetric_difference(view.touches)]
            changed += [c.ts for c in set(old.conversions).symmetric_difference(view.conversions)]
        return min(changed, default=None)

    def absorb(self, other: "Person") -> None:
        """Fold another person in (a merge): per client the newer view wins."""
        for client_id, view in other.clients.items():
            mine = self.clients.get(client_id)
            if mine is None or mine.version < view.version:
                self.clients[client_id] = view
        self.written_conversions.update(other.written_conversions)
        self.written_credits.update(other.written_credits)


def person_credit(project_id: str, person_id: str, person: Person, since: int) -> Output:
    """Re-credit the person's conversions at or after ``since``; rows for what changed."""
    out = Output()
    todo = [c for view in person.clients.values() for c in view.conversions if c.ts >= since]
    if not todo:
        return out
    history = History([t for view in person.clients.values() for t in view.touches])
    version = person.version
    for conv in todo:
        if person.written_conversions.get(conv.conversion_id) != (person_id, conv.visit_id):
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
            if before is not None:
                kept = {vid for vid, _, _ in now}
                for vid, start, _ in before[1]:
                    if vid not in kept:
                        out.attributions.append(_credit_row(project_id, model, conv, person_id, vid, start, _NO_SOURCE, 0.0, version, 1))
            for t, w in credits:
                out.attributions.append(_credit_row(project_id, model, conv, person_id, t.visit_id, t.start, t.source, w, version, 0))
    return out


def _credit_row(project_id, model, conv: Conversion, person_id, visit_id, start, s: Source, weight, version, deleted) -> AttributionRow:
    return AttributionRow(
        project_id, model, conv.conversion_id, conv.ts, conv.kind, conv.name, person_id,
        visit_id, start, s.type, s.source, s.medium, s.campaign, s.content, s.term,
        weight, weight * conv.value, conv.currency, version, deleted,
    )


# -- all three inline ---------------------------------------------------------------------------


class State:
    """Everything the inline pipeline remembers. Keys are strings, as in any key-value store."""

    def __init__(self) -> None:
        self.clients: dict[str, ClientState] = {}  # "project:client"
        self.persons: dict[str, Person] = {}  # "project:person"
        self.graphs: dict[str, IdentityGraph] = {}  # project


class Pipeline:
    def __init__(self, rules: dict[str, ProjectRules], state: State | None = None) -> None:
        self.rules = rules
        self.state = state or State()
        self._click_ids = {pid: {p: (s, m) for p, s, m in r.click_ids} or None for pid, r in rules.items()}

    def process(self, events: list[Event]) -> Output:
        out = Output()
        state = self.state
        by_client: dict[str, list[Event]] = {}
        for event in events:
            if event.project_id not in self.rules:
                out.rejected.append((event, "unknown_project"))
                continue
            by_client.setdefault(f"{event.project_id}:{event.client_id}", []).append(event)

        views: list[ClientView] = []
        for key, group in by_client.items():
            project_id = group[0].project_id
            client = state.clients.get(key) or ClientState()
            rows, view = client_step(client, group, self.rules[project_id], self._click_ids[project_id])
            state.clients[key] = client
            out.extend(rows)
            if view is not None:
                views.append(view)

        dirty: dict[str, int] = {}  # "project:person" -> earliest ts whose credit may change
        for view in views:
            graph = state.graphs.get(view.project_id) or IdentityGraph()
            found = identity_step(graph, view)
            state.graphs[view.project_id] = graph
            out.identities.extend(found.rows)
            for person_id, absorbed in found.merges:
                pkey = f"{view.project_id}:{person_id}"
                person = state.persons.get(pkey) or Person()
                for old in absorbed:
                    other = state.persons.pop(f"{view.project_id}:{old}", None)
                    dirty.pop(f"{view.project_id}:{old}", None)
                    if other is not None:
                        person.absorb(other)
                state.persons[pkey] = person
                dirty[pkey] = EVER
            pkey = f"{view.project_id}:{found.person_id}"
            person = state.persons.get(pkey) or Person()
            since = person.take(view)
            state.persons[pkey] = person
            if since is not None:
                dirty[pkey] = min(dirty.get(pkey, since), since)

        for pkey, since in dirty.items():
            project_id, _, person_id = pkey.partition(":")
            out.extend(person_credit(project_id, person_id, state.persons[pkey], since))
        return out
