"""Visits (sessions) of one client id, by Yandex Metrica's rules.

* A visit ends after ``timeout`` of inactivity; there is no midnight split.
* A landing from an ad click starts a new visit even inside the timeout; a reload of the same
  ad landing (same click id, or same tagged URL) does not.
* Events may arrive late and out of order: the timeline keeps every event sorted by
  ``(ts, event_id)`` and re-derives visits from the first one a new event can affect, so the
  result equals in-order processing. A visit's id is the id of its first event; when a late
  event changes which event comes first, the old id is reported deleted.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import NamedTuple

from .model import Source


class Hit(NamedTuple):
    """What a timeline keeps of an event. Sorts by (ts, event_id)."""

    ts: int
    event_id: str
    type: str
    name: str
    site: str
    url: str
    referrer: str
    source: Source
    value: float
    currency: str


class Visit(NamedTuple):
    visit_id: str
    start: int
    end: int
    site: str
    landing_url: str
    referrer: str
    source: Source
    pageviews: int
    events: int


def _ad_key(hit: Hit) -> str | None:
    """Identity of an ad landing; None for non-ad hits."""
    src = hit.source
    if src.type != "ad":
        return None
    return src.click_id or hit.url.partition("#")[0]


def sessionize(hits: list[Hit], timeout_ms: int) -> tuple[list[Visit], list[str]]:
    """Visits of time-sorted hits, and for each hit the id of its visit."""
    visits: list[Visit] = []
    assigned: list[str] = []
    first: Hit | None = None
    end = 0
    key: str | None = None
    pageviews = events = 0
    for hit in hits:
        ad = _ad_key(hit)
        if first is None or hit.ts - end > timeout_ms or (ad is not None and ad != key):
            if first is not None:
                visits.append(Visit(first.event_id, first.ts, end, first.site, first.url, first.referrer, first.source, pageviews, events))
            first, key, pageviews, events = hit, ad, 0, 0
        end = hit.ts
        events += 1
        if hit.type == "pageview":
            pageviews += 1
        assigned.append(first.event_id)
    if first is not None:
        visits.append(Visit(first.event_id, first.ts, end, first.site, first.url, first.referrer, first.source, pageviews, events))
    return visits, assigned


class Change(NamedTuple):
    """What one ``Timeline.add`` changed."""

    upserts: list[Visit]  # new or changed visits
    deletes: list[Visit]  # visits that no longer exist (their first event joined another visit)
    region: list[Hit]  # the re-derived hits (every hit whose visit may have changed) ...
    region_visits: list[str]  # ... and the visit id of each


class Timeline:
    """All events of one client id, and the visits derived from them."""

    __slots__ = ("hits", "visits")

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.visits: list[Visit] = []

    @property
    def version(self) -> int:
        """Row version of this client's visits: the number of events, so it depends only on
        the set of events seen, not on how they were batched (replays after a crash may batch
        differently and must not write older versions)."""
        return len(self.hits)

    def __getstate__(self):
        return (self.hits, self.visits)

    def __setstate__(self, state) -> None:
        self.hits, self.visits = state

    def has(self, ts: int, event_id: str) -> bool:
        """Seen before? A replay carries the same id and timestamp; a sorted search is as
        good as a set here and costs no memory."""
        hits = self.hits
        if not hits or (ts, event_id) > (hits[-1].ts, hits[-1].event_id):
            return False
        i = bisect_left(hits, (ts, event_id))
        return i < len(hits) and hits[i].ts == ts and hits[i].event_id == event_id

    def add(self, new: list[Hit], timeout_ms: int) -> Change | None:
        """Add hits the timeline does not have; None when it had all of them."""
        hits = self.hits
        earliest: Hit | None = None
        for hit in new:
            if not hits or hit > hits[-1]:
                hits.append(hit)
            elif self.has(hit.ts, hit.event_id):
                continue
            else:
                insort(hits, hit)
            if earliest is None or hit < earliest:
                earliest = hit
        if earliest is None:
            return None

        # Visits that start after `earliest` or contain it are re-derived; earlier ones
        # closed before it and cannot change.
        visits = self.visits
        k = len(visits)
        key = (earliest.ts, earliest.event_id)
        while k > 0 and (visits[k - 1].start, visits[k - 1].visit_id) > key:
            k -= 1
        k = max(k - 1, 0)
        begin = bisect_left(hits, key)
        if visits and (visits[k].start, visits[k].visit_id) < key:
            begin = bisect_left(hits, (visits[k].start, visits[k].visit_id))
        region = hits[begin:]
        derived, assigned = sessionize(region, timeout_ms)
        old = {v.visit_id: v for v in visits[k:]}
        self.visits = visits[:k] + derived
        upserts = [v for v in derived if old.pop(v.visit_id, None) != v]
        return Change(upserts, list(old.values()), region, assigned)
