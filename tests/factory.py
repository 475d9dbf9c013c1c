"""Small builders for core tests."""

from __future__ import annotations

import itertools
import uuid

from streams.model import Event
from streams.rules import ProjectRules

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
DAY = 24 * 60 * MIN
SITE = "kursy.ru"
RULES = ProjectRules(project_id="p1", domains=("kursy.ru", "kursy.kz"), conversion_goals=frozenset({"signup"}))

_ids = itertools.count()


def eid() -> str:
    return str(uuid.UUID(int=next(_ids) + 1))


def ev(client: str, ts: int, type: str = "pageview", url: str = "https://kursy.ru/", referrer: str = "", name: str = "", **kw) -> Event:
    return Event(
        project_id=kw.pop("project_id", "p1"), site=kw.pop("site", SITE), event_id=kw.pop("event_id", None) or eid(),
        client_id=client, type=type, ts=ts, received_at=kw.pop("received_at", ts), url=url, referrer=referrer, name=name, **kw,
    )


def internal(client: str, ts: int, path: str = "/page", **kw) -> Event:
    return ev(client, ts, url=f"https://kursy.ru{path}", referrer="https://kursy.ru/", **kw)


def ad(client: str, ts: int, click: str = "1", **kw) -> Event:
    return ev(client, ts, url=f"https://kursy.ru/?yclid={click}&utm_campaign=c{click}", referrer="https://yandex.ru/", **kw)
