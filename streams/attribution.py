"""Attribution models: which visits of a person's history get credit for a conversion.

A model is one function ``(path, converting) -> [(index, weight), ...]``: ``path`` is the
person's visits (all devices) from the start of the current history up to the conversion,
oldest first; ``converting`` is the index in ``path`` of the visit the conversion happened in.
Weights of one conversion sum to 1. Register a new model by adding it to ``MODELS``.

History (Yandex Metrica): the visits back to the last gap of more than 90 days without visits.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable, NamedTuple, Sequence

from .model import Source
from .sources import is_significant

HISTORY_GAP_MS = 90 * 24 * 3600 * 1000


class Touch(NamedTuple):
    """A visit as attribution sees it."""

    start: int
    visit_id: str
    end: int
    client_id: str
    source: Source


class Conversion(NamedTuple):
    conversion_id: str
    ts: int
    kind: str
    name: str
    client_id: str
    visit_id: str
    value: float
    currency: str


Credit = list[tuple[int, float]]
Model = Callable[[Sequence[Touch], int], Credit]


def last_click(path: Sequence[Touch], converting: int) -> Credit:
    return [(converting, 1.0)]


def first_click(path: Sequence[Touch], converting: int) -> Credit:
    return [(0, 1.0)]


def last_significant_click(path: Sequence[Touch], converting: int) -> Credit:
    for i in range(len(path) - 1, -1, -1):
        if is_significant(path[i].source):
            return [(i, 1.0)]
    return [(converting, 1.0)]


def linear(path: Sequence[Touch], converting: int) -> Credit:
    share = 1.0 / len(path)
    return [(i, share) for i in range(len(path))]


MODELS: dict[str, Model] = {
    "first_click": first_click,
    "last_click": last_click,
    "last_significant_click": last_significant_click,
    "linear": linear,
}


class History:
    """A person's visits prepared for many look-ups: sorted, with history boundaries."""

    __slots__ = ("touches", "keys", "segment", "index")

    def __init__(self, touches: Sequence[Touch]) -> None:
        self.touches = sorted(touches)
        self.keys = [t.start for t in self.touches]
        self.index = {t.visit_id: i for i, t in enumerate(self.touches)}
        # segment[i]: index of the first visit of the history visit i belongs to
        self.segment: list[int] = []
        seg, reach = 0, None
        for i, t in enumerate(self.touches):
            if reach is not None and t.start - reach > HISTORY_GAP_MS:
                seg = i
            reach = t.end if reach is None else max(reach, t.end)
            self.segment.append(seg)

    def path(self, conversion: Conversion) -> tuple[list[Touch], int] | None:
        """The conversion's path and the index of its converting visit in it."""
        c = self.index.get(conversion.visit_id)
        if c is None:
            return None
        last = bisect_right(self.keys, conversion.ts) - 1
        last = max(last, c)  # the converting visit always belongs to its own path
        first = self.segment[last]
        return self.touches[first : last + 1], c - first

    def credit(self, conversion: Conversion) -> dict[str, list[tuple[Touch, float]]]:
        """Credited visits of every model."""
        found = self.path(conversion)
        if found is None:
            return {}
        path, converting = found
        return {name: [(path[i], w) for i, w in model(path, converting)] for name, model in MODELS.items()}
